"""Pixel de-identification: everything outside the imaging sector is blanked before encoding.

Ultrasound frames carry the patient's name, date of birth, the clinic and the date as text burned
into the image around the imaging sector. `--mask` decides what of each frame is kept:

- `auto` (default) finds the sector of each scan from the video itself. The sector is where the
  image changes over time (speckle, probe and tissue motion); burned-in text, logos, scales and
  the letterbox do not. Per pixel, the standard deviation over (up to 120 evenly spaced) frames;
  pixels above 1 grey level are live (static text stays below it: 0.4 on a real frozen scanner
  export, while dark, deep parts of a sector reach 1-3); a 3 x 3 opening drops isolated live
  pixels and thin strokes (codec flicker on text edges); the largest connected live region is
  the sector, filled to
  its convex hull (fans and rectangles are convex, and a dark, still cyst inside the sector must
  be kept) and shrunk by one pixel (a pixel on the edge mixes sector and margin when frames are
  scaled). Everything else is set to black. A scan with no live region covering 5 % of the frame
  (a still image, a frozen loop) is a failed scan: `auto` never keeps a frame unmasked.
- `box:x0,y0,x1,y1` keeps one rectangle, in pixels of the source frame (x1, y1 exclusive), for
  a scanner whose layout is known; the rest is black.
- `none` keeps the whole frame (data already de-identified, or masked upstream).

Known failure modes of `auto`, also in docs/deidentification.md: text that changes over time
(a clock, a frame counter, a moving caliper label) is live; it is blanked only when it is apart
from the sector, since a separate live region is not the largest, but text drawn inside the
sector or touching it stays. A scan whose sector barely moves (a phantom on a still probe) fails.
Colour overlays and annotations inside the sector are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from sharding.media import fitted_size

AUTO, NONE, BOX = "auto", "none", "box"
SAMPLE_FRAMES = 120
LIVE_GREY_LEVELS = 1.0
"""A pixel whose standard deviation over time exceeds this (of 255) is part of a changing image."""
MIN_SECTOR_SHARE = 0.05
"""A live region smaller than this share of the frame is not taken for a sector: on a frozen loop
the only changing thing may be a clock or a frame counter, which must not be kept as the image."""


class MaskError(ValueError):
    """No sector could be found; the scan fails rather than keeping burned-in text."""


@dataclass(frozen=True)
class MaskSpec:
    """What `--mask` asked for: a method and, for `box`, the rectangle in source pixels."""

    method: str = AUTO
    box: tuple[int, int, int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> MaskSpec:
        """`auto`, `none` or `box:x0,y0,x1,y1`; ValueError saying what was expected otherwise."""
        if text in (AUTO, NONE):
            return cls(text)
        if text.startswith(f"{BOX}:"):
            try:
                x0, y0, x1, y1 = (int(v) for v in text[len(BOX) + 1 :].split(","))
            except ValueError:
                pass
            else:
                if 0 <= x0 < x1 and 0 <= y0 < y1:
                    return cls(BOX, (x0, y0, x1, y1))
        raise ValueError(
            f"--mask {text!r} is invalid: expected auto, none or box:x0,y0,x1,y1 "
            "(pixels of the source frame, 0 <= x0 < x1, 0 <= y0 < y1)"
        )

    def __str__(self) -> str:
        return f"{BOX}:{','.join(map(str, self.box))}" if self.box else self.method


def sector_mask(frames_THW: np.ndarray) -> np.ndarray:
    """[H, W] bool: the imaging sector of a scan's frames by the `auto` method (module docstring)."""
    T, H, W = frames_THW.shape
    picked = frames_THW[np.linspace(0, T - 1, min(T, SAMPLE_FRAMES)).round().astype(int)]
    spread_HW = picked.astype(np.float32).std(axis=0)
    live = ndimage.binary_opening(spread_HW > LIVE_GREY_LEVELS, structure=np.ones((3, 3), bool))
    regions, count = ndimage.label(live)
    if count == 0:
        raise MaskError("no imaging sector found: the image does not change over time (a still image?)")
    sizes = np.bincount(regions.ravel())[1:]
    largest = int(sizes.argmax()) + 1
    if sizes[largest - 1] < MIN_SECTOR_SHARE * H * W:
        raise MaskError(
            f"no imaging sector found: the largest changing region is {sizes[largest - 1] / (H * W):.1%} "
            f"of the frame, less than {MIN_SECTOR_SHARE:.0%}"
        )
    ys, xs = np.nonzero(regions == largest)
    try:
        hull = ConvexHull(np.column_stack([ys, xs]).astype(np.float64))
    except QhullError as exc:  # a region of collinear pixels has no area
        raise MaskError("no imaging sector found: the changing region is a line") from exc
    # Inside (or on) every facet's half-plane (unit normals: the tolerance is in pixels). A point
    # location in a Delaunay triangulation of all the region's pixels gives the same set but costs
    # seconds a scan, and misses a few inside pixels where the pixel grid makes it degenerate.
    grid_y, grid_x = np.mgrid[0:H, 0:W]
    grid_P2 = np.column_stack([grid_y.ravel(), grid_x.ravel()]).astype(np.float64)
    inside = (grid_P2 @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-6).all(axis=1)
    return ndimage.binary_erosion(inside.reshape(H, W), structure=np.ones((3, 3), bool))


def box_mask(box: tuple[int, int, int, int], source_wh: tuple[int, int], size: int) -> np.ndarray:
    """[size, size] bool: a source-pixel rectangle where it lands in the letterboxed frame."""
    w, h = source_wh
    x0, y0, x1, y1 = box
    if x1 > w or y1 > h:
        raise MaskError(f"the --mask box reaches {x1}x{y1}, outside the {w}x{h} source frame")
    sw, sh = fitted_size(w, h, size)  # where media.grey_square puts the frame, centred
    left, top = (size - sw) // 2, (size - sh) // 2
    fx, fy = sw / w, sh / h
    out = np.zeros((size, size), bool)
    out[
        top + int(np.ceil(y0 * fy)) : top + int(y1 * fy), left + int(np.ceil(x0 * fx)) : left + int(x1 * fx)
    ] = True
    return out


def apply_mask(
    frames_THW: np.ndarray, spec: MaskSpec, source_wh: tuple[int, int] | None
) -> tuple[np.ndarray, float]:
    """(frames with everything outside the kept region black, share of each frame kept)."""
    if spec.method == NONE:
        return frames_THW, 1.0
    if spec.method == BOX:
        if source_wh is None:
            raise MaskError("--mask box needs the source frame size, which this reader does not give")
        keep_HW = box_mask(spec.box, source_wh, frames_THW.shape[-1])
    else:
        keep_HW = sector_mask(frames_THW)
    return np.where(keep_HW, frames_THW, 0).astype(np.uint8, copy=False), float(keep_HW.mean())
