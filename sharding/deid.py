"""De-identification: the salt, salted hashes of identifiers, and the split of a patient."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from usvs_dist.data import schema

SALT_ENV = "USVS_SHARD_SALT"


class SaltError(ValueError):
    """No usable salt was given."""


def read_salt(salt_file: Path | None) -> bytes:
    """The de-identification salt from a file or $USVS_SHARD_SALT; never written anywhere."""
    if salt_file is not None:
        if not salt_file.is_file():
            raise SaltError(f"salt file {salt_file} does not exist")
        salt = salt_file.read_bytes().strip()
    else:
        salt = os.environ.get(SALT_ENV, "").encode()
    if len(salt) < 8:
        raise SaltError(f"a salt of at least 8 bytes is needed: pass --salt-file FILE or set {SALT_ENV}")
    return salt


def hash_id(salt: bytes, kind: str, value: str) -> str:
    """Salted, kind-separated sha256 of an identifier, shortened to 16 hex digits."""
    return hashlib.sha256(salt + b"\0" + kind.encode() + b"\0" + value.encode()).hexdigest()[:16]


def assign_split(patient_hash: str, fractions: tuple[float, float, float]) -> str:
    """Split of a patient from its hash alone, so adding scans never moves earlier patients."""
    u = int(hashlib.sha256(b"split\0" + patient_hash.encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for split, frac in zip(schema.SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return split
    return schema.SPLITS[-1]
