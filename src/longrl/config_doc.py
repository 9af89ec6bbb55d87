"""The config as documented YAML: every key, its value, and the one-line comment of its field.

``longrl config [--config YAML] [key=value ...]`` prints a resolved config this way; with no
arguments it prints the defaults, which is how ``configs/reference.yaml`` is generated::

    longrl config > configs/reference.yaml

A field's comment is the trailing ``# ...`` comment on its line in the dataclass source (read with
``ast`` + ``tokenize``), so the reference cannot drift from the code that defines the keys.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import tokenize
import typing
from typing import Any

import yaml

REFERENCE_PATH = "configs/reference.yaml"
REGENERATE = f"longrl config > {REFERENCE_PATH}"


@functools.cache
def _module_comments(source_file: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the first comment on the field's lines, for every class of a file."""
    with open(source_file, encoding="utf-8") as fh:
        source = fh.read()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                for line in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1):
                    if line in comments:
                        out[(node.name, stmt.target.id)] = comments[line]
                        break
    return out


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment ("" when the field has none)."""
    found = _module_comments(inspect.getsourcefile(cls))
    return {f.name: found.get((cls.__name__, f.name), "") for f in dataclasses.fields(cls)}


def missing_comments(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of ``cls``'s tree whose field carries no trailing comment."""
    missing = []
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if not comments[f.name]:
            missing.append(prefix + f.name)
        tp = typing.get_type_hints(cls)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            missing += missing_comments(tp, prefix + f.name + ".")
    return missing


def _scalar(value: Any) -> str:
    """``value`` as one line of YAML flow style (``8``, ``'runs/x'``, ``[0.9, 0.95]``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text[: -len("\n...")] if text.endswith("\n...") else text


def render(cfg: Any, defaults: Any) -> str:
    """``cfg`` as YAML that loads back to it, each key commented; a value that differs from
    ``defaults`` says its default."""
    lines = [
        "# longrl configuration: every key, its value and what it does.",
        "# A value that differs from the default says so: [default: X]. Regenerate the reference with",
        f"#   {REGENERATE}",
    ]
    _render(cfg, defaults, 0, lines)
    return "\n".join(lines) + "\n"


def _render(cfg: Any, defaults: Any, depth: int, lines: list[str]) -> None:
    comments = field_comments(type(cfg))
    indent = "  " * depth
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        comment = comments[f.name]
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:  # {comment}")
            _render(value, default, depth + 1, lines)
            continue
        if value != default:
            comment = f"{comment} [default: {_scalar(default)}]"
        lines.append(f"{indent}{f.name}: {_scalar(value)}  # {comment}")
