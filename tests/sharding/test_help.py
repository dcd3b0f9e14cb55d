"""`python -m sharding [build] --help`: defaults shown, answered without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "webdataset", "ray", "mlflow", "cv2")


def _help(module: str, *args: str) -> tuple[str, list[str]]:
    """(help text, heavy modules imported) of `module`'s main([*args, '--help']) in a fresh interpreter."""
    code = (
        "import contextlib, io, json, sys\n"
        f"from {module} import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main([*{list(args)!r}, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "print(out.getvalue())\n"
        f"print('LOADED', json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text, _, loaded = proc.stdout.rpartition("LOADED ")
    return text, json.loads(loaded)


@pytest.mark.parametrize("args", [(), ("build",), ("synth",), ("inspect",), ("bench",)])
def test_help_answers_without_torch_or_webdataset(args):
    text, loaded = _help("sharding.__main__", *args)
    assert text.startswith(f"usage: python -m sharding {' '.join(args)}".rstrip())
    assert loaded == []


def test_build_help_shows_the_defaults():
    text, _ = _help("sharding.__main__", "build")
    flat = " ".join(text.split())
    for shown in ("clip length (default: 2.0)", "(default: 0.8,0.1,0.1)", "clips per shard (default: 200)"):
        assert shown in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat
