"""De-identification: the salt, salted hashes of identifiers, and the split of a patient."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from usvs_format import schema

SALT_ENV = "USVS_SHARD_SALT"
MIN_SALT_BYTES = 16
"""A salt must be hard to guess: anyone holding it can hash a known patient id and find its clips."""
EXAMPLE_SALTS = frozenset({b"<from your secret store>"})
"""The placeholder the runbook once showed where a salt goes: a salt copied from docs is no secret."""


class SaltError(ValueError):
    """No usable salt was given."""


def read_salt(salt_file: Path | None) -> bytes:
    """The de-identification salt from a file or $USVS_SHARD_SALT; never written anywhere.

    A blank salt, one shorter than MIN_SALT_BYTES or a documented placeholder is refused; the
    error says which rule failed and never echoes the salt.
    """
    if salt_file is not None:
        if not salt_file.is_file():
            raise SaltError(f"salt file {salt_file} does not exist")
        salt, source = salt_file.read_bytes().strip(), f"salt file {salt_file}"
    else:
        salt, source = os.environ.get(SALT_ENV, "").strip().encode(), f"${SALT_ENV}"
    if not salt:
        raise SaltError(
            f"no de-identification salt: {source} is empty or unset; pass --salt-file FILE "
            f"holding at least {MIN_SALT_BYTES} random bytes (e.g. from `openssl rand -hex 32`)"
        )
    if len(salt) < MIN_SALT_BYTES:
        raise SaltError(
            f"the salt in {source} is {len(salt)} bytes; at least {MIN_SALT_BYTES} are needed "
            "(e.g. from `openssl rand -hex 32`)"
        )
    if salt in EXAMPLE_SALTS:
        raise SaltError(f"the salt in {source} is a placeholder from the documentation, not a secret")
    return salt


def hash_id(salt: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of an identifier keyed by the salt, kind-separated, shortened to 16 hex digits.

    The salt is a secret key, and HMAC is the construction made for keyed hashing (a key-prefixed
    sha256 is open to length extension wherever a full digest is kept).
    The kind prefix keeps a scan id from hashing like an equal patient id.
    """
    message = kind.encode() + b"\0" + value.encode()
    return hmac.new(salt, message, hashlib.sha256).hexdigest()[:16]


def assign_split(patient_hash: str, fractions: tuple[float, float, float]) -> str:
    """Split of a patient from its hash alone, so adding scans never moves earlier patients."""
    u = int(hashlib.sha256(b"split\0" + patient_hash.encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for split, frac in zip(schema.SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return split
    return schema.SPLITS[-1]
