"""Every third-party module the packages import comes from a distribution pyproject.toml declares."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("usvs_dist", "sharding", "usvs_format")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("ray[train]>=2,<3" -> "ray")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


def _declared() -> dict[str, str]:
    """Normalised name -> requirement, of the dependencies and every optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return {_name(r): r for r in reqs}


def _imported() -> dict[str, set[str]]:
    """Top-level module -> files importing it, over the packages' sources."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_module_is_declared():
    declared = _declared()
    dists = packages_distributions()
    missing = []
    for module, files in sorted(_imported().items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        owners = {_name(d) for d in dists.get(module, [])}
        assert owners, f"{module} (imported in {sorted(files)[0]}) is not installed"
        if not owners & set(declared):
            missing.append(f"{module} ({'/'.join(sorted(owners))}, imported in {sorted(files)[0]})")
    assert not missing, "not declared in pyproject.toml: " + ", ".join(missing)


def _pins() -> dict[str, str]:
    """constraints.txt as normalised name -> version; every line a PyPI `name==version` pin."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line), f"constraints.txt: {line!r}"
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def test_every_dependency_has_a_ceiling_at_the_next_major_of_the_tested_version():
    pins = _pins()
    for name, requirement in _declared().items():
        floor = re.search(r">=\s*([0-9]+)", requirement)
        ceiling = re.search(r"<\s*([0-9]+)(?:[,;\s]|$)", requirement)
        assert floor and ceiling, f"{requirement}: expected >=X.Y,<N"
        if name in pins:  # tested: the next major after the pinned version (calendar versions: next year)
            expected = int(pins[name].split(".")[0]) + 1
            assert int(ceiling.group(1)) == expected, f"{requirement}: ceiling {expected} expected"
        else:  # an extra CI does not install (gpu, tune)
            assert int(ceiling.group(1)) > int(floor.group(1)), requirement


def test_constraints_pin_every_dependency_ci_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    ci = (ROOT / ".ci" / "run").read_text()
    installed = re.search(r'pip install -e "\.\[([a-z0-9,]+)\]" -c constraints\.txt', ci)
    assert installed, ".ci/run installs the project with its extras and constraints.txt"
    tested = [*project["dependencies"], *(r for e in installed.group(1).split(",") for r in extras[e])]
    unpinned = sorted({_name(r) for r in tested} - set(_pins()))
    assert not unpinned, f"constraints.txt pins none of {unpinned}"


def test_ci_installs_both_decoders_and_requires_their_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torchcodec" in re.search(r'pip install -e "\.\[([a-z0-9,]+)\]"', ci).group(1)
    assert "apt-get install" in ci and " ffmpeg" in ci  # the system FFmpeg TorchCodec loads
    assert re.search(r"USVS_TEST_REQUIRE_DECODERS=\S*torchcodec", ci)
