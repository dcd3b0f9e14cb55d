"""The config keys described for `--help`: section, key, type, default and the field's docstring.

Generated from the dataclass tree, never kept by hand. Python keeps no field docstrings at
runtime (the string literal under a field is an expression statement the compiler drops), so
they are read from each class's source with `ast`: an annotated assignment followed by a string
expression is a field and its docstring. Sources are parsed once per class and process.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from usvs_dist.config.schema import RootConfig


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring, whitespace folded} of dataclass `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a frozen app): keys are still listed
            continue
        (node,) = ast.parse(source).body
        body = node.body if isinstance(node, ast.ClassDef) else []
        for stmt, after in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(hint: Any) -> str:
    """A field's type as a reader wants it: `int`, `one of a|b`, `list[float]`, `{term: str, ...}`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        name = " | ".join(type_name(a) for a in kept)
        return f"{name} or null" if len(kept) < len(args) else name
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if dataclasses.is_dataclass(hint):
        hints = get_type_hints(hint)
        items = (f"{f.name}: {type_name(hints[f.name])}" for f in dataclasses.fields(hint))
        return "{" + ", ".join(items) + "}"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value: Any) -> str:
    """A default as it is written in YAML or on the command line."""
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


def _section_type(hint: Any) -> type | None:
    """The dataclass a field typed `Section` or `Section | None` holds (a sub-section), else None."""
    if get_origin(hint) in (Union, types.UnionType):
        kept = [a for a in get_args(hint) if a is not type(None)]
        hint = kept[0] if len(kept) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _sections(cls: type, key: str, optional: bool = False) -> list[tuple[str, type, bool]]:
    """(dotted key, class, whether it defaults to null) of `cls` and every sub-section under it,
    depth first."""
    found = [(key, cls, optional)]
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _section_type(hints[f.name])
        if sub is not None:
            found += _sections(sub, f"{key}.{f.name}" if key else f.name, _default(f) is None)
    return found


def describe(
    root: type = RootConfig, key: str = "", keep: tuple[str, ...] | None = None, width: int = 100
) -> str:
    """Every section and key under `root` (whose own dotted key is `key`) with its type, default
    and docstring, as help text. `keep`: only keys starting with one of these prefixes."""
    lines: list[str] = []
    for section, cls, optional in _sections(root, key):
        hints, docs = get_type_hints(cls), field_docs(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if _section_type(hints[f.name]) is not None:
                continue  # listed as a section of its own, with its keys
            full = f"{section}.{f.name}" if section else f.name
            if keep is not None and not full.startswith(keep):
                continue
            head = f"  {full} ({type_name(hints[f.name])}, default {_show(_default(f))})"
            doc = docs.get(f.name, "")
            rows.append(head)
            if doc:
                rows += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        if rows:
            title = (inspect.getdoc(cls) or "").split("\n\n")[0]
            title = " ".join([*title.split(), *(["(default null: off)"] if optional else [])])
            lines += ["", f"{section or '(top level)'}: {title}".rstrip(), *rows]
    return "\n".join(lines).lstrip("\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog kept as written (the key listing); `(default: X)` after an option's
    help when it has a default worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default is not None
            and action.default is not False  # a store_true flag
            and action.default != argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text
