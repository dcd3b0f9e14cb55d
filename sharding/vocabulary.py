"""`--labels-vocabulary FILE`: a data set's own label classes, written to index.json.

Two forms. A text file lists one class per line (blank lines and `#` comments are skipped). A
YAML file (`.yaml`/`.yml`) gives `classes`, and optionally `coarse` (coarse class -> its fine
classes; every class in exactly one group, as awcl2022 groups planes into anatomies) and
`background` (the class that is no anatomy, e.g. the search between planes):

    classes: [covid, pneumonia, regular, viral]
    coarse: {infection: [covid, pneumonia, viral], healthy: [regular]}

Errors name the file option and the line or key at fault, never a class name: a vocabulary
lives beside the scans and may be mistaken for one of their files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from usvs_format import Vocabulary

OPTION = "--labels-vocabulary"


class VocabularyError(ValueError):
    """The vocabulary file cannot be used; says where and why."""


def read_vocabulary(path: Path) -> Vocabulary:
    """The vocabulary in `path` (text or YAML); raises VocabularyError naming the line or key."""
    if not path.is_file():
        raise VocabularyError(f"{OPTION}: the file does not exist or is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(
            f"{OPTION}: cannot read the file as UTF-8 text ({type(exc).__name__})"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_yaml(text)
    return _from_lines(text)


def _from_lines(text: str) -> Vocabulary:
    classes: list[str] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        if name in first_line:
            raise VocabularyError(
                f"{OPTION}: the class on line {n} repeats the class on line {first_line[name]}"
            )
        first_line[name] = n
        classes.append(name)
    if not classes:
        raise VocabularyError(f"{OPTION}: no class in the file (expected one class per line)")
    return Vocabulary(tuple(classes))


def _from_yaml(text: str) -> Vocabulary:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise VocabularyError(f"{OPTION}: not valid YAML{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise VocabularyError(f"{OPTION}: expected a mapping with a non-empty list `classes`")
    unknown = sorted(set(doc) - {"classes", "coarse", "background"})
    if unknown:
        raise VocabularyError(
            f"{OPTION}: unknown key(s) {', '.join(map(str, unknown))} (expected classes, coarse, background)"
        )
    classes = [str(c).strip() for c in doc["classes"]]
    for k, name in enumerate(classes):
        if not name:
            raise VocabularyError(f"{OPTION}: classes[{k}] is empty")
        if name in classes[:k]:
            raise VocabularyError(f"{OPTION}: classes[{k}] repeats classes[{classes.index(name)}]")
    coarse, coarse_of = _coarse(doc.get("coarse"), classes)
    background = doc.get("background")
    if background is not None and str(background) not in classes:
        raise VocabularyError(f"{OPTION}: `background` is not one of `classes`")
    return Vocabulary(tuple(classes), coarse, coarse_of, None if background is None else str(background))


def _coarse(groups: object, classes: list[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if groups is None:
        return (), ()
    if not isinstance(groups, dict) or not groups:
        raise VocabularyError(f"{OPTION}: `coarse` must map each coarse class to a list of classes")
    group_of: dict[str, int] = {}
    for g, members in enumerate(groups.values()):
        if not isinstance(members, list) or not members:
            raise VocabularyError(f"{OPTION}: coarse group {g + 1} must list one or more classes")
        for member in map(str, members):
            if member not in classes:
                raise VocabularyError(
                    f"{OPTION}: coarse group {g + 1} lists a class that is not in `classes`"
                )
            if member in group_of:
                raise VocabularyError(
                    f"{OPTION}: classes[{classes.index(member)}] is in coarse groups "
                    f"{group_of[member] + 1} and {g + 1}"
                )
            group_of[member] = g
    missing = [k for k, name in enumerate(classes) if name not in group_of]
    if missing:
        raise VocabularyError(
            f"{OPTION}: classes[{missing[0]}] is in no coarse group (every class needs one)"
        )
    return tuple(str(g) for g in groups), tuple(group_of[name] for name in classes)
