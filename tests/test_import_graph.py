"""The import graph, read from the source with `ast` (nothing is imported), points one way.

- `usvs_format` (the shard-format contract and the tools' version) is a leaf: standard library
  only, neither `sharding` nor `usvs_dist`.
- `sharding` imports nothing of `usvs_dist`, only `usvs_format`, and no torch in its own code.
- Inside `usvs_dist`, layers point down (docs/architecture.md "Layers and imports"): `config` is
  the leaf; `data`, `models`, `losses`, `dist`, `tracking` use `config` (`losses` also
  `dist.collectives`); `eval` uses `config`, `data`, `models`; `train` uses them all; `tune` uses
  `train`. The entry layer (`__main__` of train and tune, `evaluate`, `compare`, `bench`,
  `phantom`) may use anything, and is the only one that may import `sharding`.
- Ray, DeepSpeed and MLflow are imported only in `dist`, `tracking`, `train`, `tune` and the entries.

Every import counts, also those inside functions: a lazy import still ties the packages together.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("usvs_format", "sharding", "usvs_dist")
HEAVY = ("ray", "deepspeed", "mlflow")
TORCH = ("torch", "torchvision", "torchaudio")

ENTRY = "entry"
ENTRY_MODULES = {
    "usvs_dist.phantom",
    "usvs_dist.evaluate",
    "usvs_dist.compare",
    "usvs_dist.trained",  # a run's encoders from MLflow or a checkpoint: evaluate's and export's
    "usvs_dist.train.__main__",
    "usvs_dist.tune.__main__",
}
ENTRY_PACKAGES = (
    "usvs_dist.bench",  # `python -m usvs_dist.bench`: measurement tools over every layer
    "usvs_dist.export",  # `python -m usvs_dist.export` and load_encoder (MLflow runs included)
)
ROOT_LAZY = {"usvs_dist.export.load"}
"""What the package root may import inside a function: `usvs_dist.load_encoder` on first use."""

LOWER = ("config", "data", "models", "losses", "dist", "tracking")
ALLOWED = {
    "config": {"config"},
    "data": {"config", "data"},
    "models": {"config", "models"},
    "losses": {"config", "losses", "dist.collectives"},
    "dist": {"config", "dist"},
    "tracking": {"config", "tracking"},
    "eval": {"config", "data", "models", "eval"},
    "train": {*LOWER, "eval", "train"},
    "tune": {*LOWER, "eval", "train", "tune"},
}
"""Layer -> what of usvs_dist it may import (a subpackage, or one module of one)."""
HEAVY_LAYERS = {"dist", "tracking", "train", "tune", ENTRY}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_ours(name: str) -> bool:
    return name.split(".")[0] in OURS


SOURCES = {_module(p): p for pkg in OURS for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of `module`, relative ones resolved.

    `from a.b import c` is `a.b.c` when that is one of our modules, else `a.b`.
    """
    path = SOURCES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in SOURCES else target, node.lineno))
    return found


def _imported_in_a_function(module: str, target: str) -> bool:
    """Whether every import of `target` in `module` sits inside a function (runs on call only)."""
    tree = ast.parse(SOURCES[module].read_text())
    inside = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    hits = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and (target == node.module or target.startswith(node.module + "."))
    ]
    return bool(hits) and all(id(node) in inside for node in hits)


def _layer(module: str) -> str:
    """The usvs_dist layer of a module: its subpackage, `entry`, or `root` (usvs_dist/__init__)."""
    if module in ENTRY_MODULES or any(module == p or module.startswith(f"{p}.") for p in ENTRY_PACKAGES):
        return ENTRY
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def _violations(package: str, ok) -> list[str]:
    """`module:line imports target` for each import of `package`'s modules that `ok` refuses."""
    return [
        f"{module}:{line} imports {target}"
        for module in SOURCES
        if module.split(".")[0] == package
        for target, line in _imports(module)
        if not ok(module, target)
    ]


def test_the_parser_sees_the_imports_it_judges():
    """Guards against a vacuous pass: known edges, lazy and `from pkg import module` forms."""

    def targets(module: str) -> set[str]:
        return {t for t, _ in _imports(module)}

    assert "usvs_dist.dist.collectives" in targets("usvs_dist.losses.infonce")  # from usvs_dist.dist import
    assert "usvs_dist.phantom" in targets("usvs_dist.train.__main__")  # inside main()
    assert "sharding.build" in targets("usvs_dist.phantom")
    assert "usvs_format.schema" in targets("sharding.build")


def test_usvs_format_is_a_stdlib_leaf():
    def ok(_module: str, target: str) -> bool:
        top = target.split(".")[0]
        return top == "usvs_format" or top == "__future__" or top in sys.stdlib_module_names

    assert _violations("usvs_format", ok) == []


def test_sharding_imports_only_the_contract_of_ours_and_no_torch():
    def ok(_module: str, target: str) -> bool:
        top = target.split(".")[0]
        return top in ("sharding", "usvs_format") or (not _is_ours(target) and top not in TORCH)

    assert _violations("sharding", ok) == []


def test_every_usvs_dist_module_has_a_layer():
    layers = {_layer(m) for m in SOURCES if m.split(".")[0] == "usvs_dist"}
    assert layers <= {*ALLOWED, ENTRY, "root"}, "a new subpackage: give it a layer in ALLOWED"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_usvs_dist_layers_point_down(layer):
    def ok(module: str, target: str) -> bool:
        if _layer(module) != layer or not _is_ours(target) or target.split(".")[0] == "usvs_format":
            return True
        if target.split(".")[0] == "sharding":
            return False  # only the entry layer builds shards
        rel = target.partition(".")[2]
        return rel == "" or any(rel == a or rel.startswith(f"{a}.") for a in ALLOWED[layer])

    assert _violations("usvs_dist", ok) == []


def test_the_package_root_imports_only_the_contract():
    def ok(module: str, target: str) -> bool:
        return (
            _layer(module) != "root"
            or target.split(".")[0] in ("usvs_format", "__future__")
            or (target in ROOT_LAZY and _imported_in_a_function(module, target))
        )

    assert _violations("usvs_dist", ok) == []


def test_ray_deepspeed_and_mlflow_stay_in_their_layers():
    def ok(module: str, target: str) -> bool:
        return target.split(".")[0] not in HEAVY or _layer(module) in HEAVY_LAYERS

    assert _violations("usvs_dist", ok) == []
