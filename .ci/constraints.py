"""Print constraints.txt: the installed versions of pyproject.toml's dependencies (all extras) and
everything they pull in, as `name==version` pins.

Run in an environment where `pip install -e ".[dev,s3]"` passed the tests:
    python .ci/constraints.py > constraints.txt
Distributions installed from a local path, a VCS or a local wheel (a `+local` version, a
direct_url.json) are left out with a note on stderr: a fresh machine could not get them from PyPI.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[tuple[Requirement, frozenset[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    reqs += [r for extra in project["optional-dependencies"].values() for r in extra]
    return [(Requirement(r), frozenset()) for r in reqs]


def main() -> int:
    pins: dict[str, str] = {}
    todo = _requirements()
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, parent_extras = todo.pop()
        env_extras = parent_extras or {""}
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in env_extras):
            continue
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            print(f"# not installed, not pinned: {req.name}", file=sys.stderr)
            continue
        direct = dist.read_text("direct_url.json")
        if "+" in dist.version or direct:
            print(f"# not from PyPI, not pinned: {name}=={dist.version}", file=sys.stderr)
            continue
        pins[name] = dist.version
        todo.extend((Requirement(r), frozenset(req.extras)) for r in dist.requires or [])
    print("# Versions the tests passed with; refresh: python .ci/constraints.py > constraints.txt (README).")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
