"""Writers of small multi-frame DICOM cine loops for sharding tests, with marker identities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

ULTRASOUND_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
# Every identifying attribute gets a value that must never appear in a shard, index.json or a log.
IDENTITY = {
    "PatientName": "MARKERPATIENT^NAME",
    "PatientID": "MARKERPID0042",
    "PatientBirthDate": "19230405",
    "PatientAddress": "MARKERSTREET 1",
    "OtherPatientIDs": "MARKEROTHERID",
    "InstitutionName": "MARKERHOSPITAL",
    "InstitutionAddress": "MARKERTOWN",
    "InstitutionalDepartmentName": "MARKERDEPT",
    "DeviceSerialNumber": "MARKERSERIAL77",
    "StationName": "MARKERSTATION",
    "ReferringPhysicianName": "MARKERREFERRER^DOC",
    "PerformingPhysicianName": "MARKERPERFORMER^DOC",
    "OperatorsName": "MARKEROPERATOR^SONO",
    "AccessionNumber": "MARKERACC9",
    "StudyID": "MARKERSTUDY",
    "StudyDate": "19870613",
    "StudyTime": "235958.123",
    "StudyDescription": "MARKERDESCRIPTION",
    "StudyInstanceUID": "1.2.826.0.1.3680043.99.777.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.99.777.2",
    "SOPInstanceUID": "1.2.826.0.1.3680043.99.777.3",
    "Manufacturer": "MARKERVENDOR",
    "ManufacturerModelName": "MARKERMODEL",
}
MARKERS = [v.encode() for v in IDENTITY.values()] + [b"MARKER"]


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    syntax: str = ExplicitVRLittleEndian,
    photometric: str | None = None,
    bits_stored: int | None = None,
    **attributes,
) -> Path:
    """A DICOM file of `pixels` ([T, H, W] grey or [T, H, W, 3] RGB, uint8 or uint16); returns `path`.

    `syntax`: explicit or implicit VR little endian, RLE Lossless or JPEG 2000 Lossless (pydicom's
    encoders), or JPEG Baseline (Pillow per frame; colour stored as YBR_FULL_422). `attributes`
    are set as given (FrameTime=..., NumberOfFrames=None removes it); IDENTITY is always set.
    """
    colour = pixels.ndim == 4
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ULTRASOUND_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = IDENTITY["SOPInstanceUID"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ULTRASOUND_MULTIFRAME
    ds.Modality = "US"
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.NumberOfFrames = len(pixels)
    ds.Rows, ds.Columns = pixels.shape[1:3]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([_jpeg(frame) for frame in pixels])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"  # what Pillow's JFIF holds
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
        if syntax in (RLELossless, JPEG2000Lossless):
            ds.compress(syntax, np.asarray(pixels))
        elif syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def level(k: int) -> int:
    """Brightness of source frame k: neighbours differ by 6 grey levels, so a frame is told apart."""
    return 20 + 6 * (k % 38)


def ramp(n: int, height: int, width: int) -> np.ndarray:
    """n grey frames [n, H, W]; frame k is level(k) everywhere but a bright bar (a real picture)."""
    frames = np.stack([np.full((height, width), level(k), np.uint8) for k in range(n)])
    frames[:, : height // 8] = 250
    return frames
