"""De-identification: keyed hashes of identifiers, and the salts that are refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from sharding.__main__ import main as shard_main
from sharding.deid import EXAMPLE_SALTS, SALT_ENV, SaltError, hash_id, read_salt

GOOD = b"0123456789abcdef-long-enough"


def test_ids_are_hmac_sha256_keyed_by_the_salt_and_separated_by_kind():
    expected = hmac.new(GOOD, b"patient\0P-0001", hashlib.sha256).hexdigest()[:16]
    assert hash_id(GOOD, "patient", "P-0001") == expected
    assert hash_id(GOOD, "scan", "P-0001") != expected  # a scan id equal to a patient id
    assert hash_id(GOOD + b"x", "patient", "P-0001") != expected
    assert len(expected) == 16


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty or unset"),
        (b"  \n", "empty or unset"),
        (b"short-salt\n", "is 10 bytes; at least 16 are needed"),
        (next(iter(EXAMPLE_SALTS)) + b"\n", "placeholder from the documentation"),
    ],
)
def test_weak_salt_files_are_refused_without_echoing_them(tmp_path, content, needle):
    path = tmp_path / "salt"
    path.write_bytes(content)
    with pytest.raises(SaltError, match=needle) as err:
        read_salt(path)
    if content.strip():
        assert content.strip().decode() not in str(err.value)


def test_weak_env_salts_are_refused_and_a_good_salt_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "tooshort")
    with pytest.raises(SaltError, match=r"\$USVS_SHARD_SALT is 8 bytes") as err:
        read_salt(None)
    assert "tooshort" not in str(err.value)
    monkeypatch.setenv(SALT_ENV, next(iter(EXAMPLE_SALTS)).decode())
    with pytest.raises(SaltError, match="placeholder"):
        read_salt(None)
    monkeypatch.setenv(SALT_ENV, GOOD.decode())
    assert read_salt(None) == GOOD
    path = tmp_path / "salt"
    path.write_bytes(GOOD + b"\n")  # `openssl rand -hex 32 > salt` ends with a newline
    assert read_salt(path) == GOOD


def test_a_weak_salt_stops_the_build_with_exit_2(phantom_raw, tmp_path, capsys):
    salt = tmp_path / "salt"
    salt.write_bytes(b"abc")
    args = ["build", str(phantom_raw), "--out", str(tmp_path / "o"), "--salt-file", str(salt)]
    assert shard_main(args) == 2
    assert "at least 16 are needed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
