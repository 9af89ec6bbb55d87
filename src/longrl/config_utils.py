"""Typed dataclass configs merged from YAML and dotted command-line overrides.

Every concern owns a dataclass (``DataConfig``, ``RolloutConfig``, ...). A run's config is one
tree of them; this module turns a YAML file plus ``key.sub=value`` overrides into that tree and
refuses anything it does not know, naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what is allowed."""


class FieldError(ConfigError):
    """A bad value found by a config dataclass's own checks (``__post_init__``). The dataclass does
    not know where it sits in the tree (``OptimConfig`` is both ``sft.optim`` and ``rl.optim``), so
    the message writes ``{p}`` before each key and :func:`merge` fills in the dotted prefix."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(template.replace("{p}", ""))

    def at(self, prefix: str) -> ConfigError:
        return ConfigError(self.template.replace("{p}", prefix))


def at_least(cfg: Any, bound: float, *names: str) -> None:
    """Raise :class:`FieldError` for the first field of ``names`` below ``bound``."""
    for name in names:
        value = getattr(cfg, name)
        if value < bound:
            raise FieldError(f"{{p}}{name}={value!r} must be >= {bound}")


def in_range(cfg: Any, name: str, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise :class:`FieldError` unless ``low <= value <= high`` (``low < value`` when ``low_open``)."""
    value = getattr(cfg, name)
    if value < low or value > high or (low_open and value == low):
        raise FieldError(f"{{p}}{name}={value!r} must be in {'(' if low_open else '['}{low}, {high}]")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where the conversion is lossless."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}={value!r} does not match {_type_name(tp)}")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) or value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list ({_type_name(tp)})")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields")
        return merge(tp(), value, prefix=key + ".")
    return value


def merge(cfg: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``cfg`` with nested ``updates`` applied and type-checked."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for name, value in updates.items():
        key = prefix + name
        if name not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}'; allowed keys here: {allowed}")
        tp = hints[name]
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = merge(current, value, prefix=key + ".")
        else:
            changes[name] = _coerce(key, value, tp)
    try:  # the dataclass's own range checks run here, in __post_init__
        return dataclasses.replace(cfg, **changes)
    except FieldError as err:
        raise err.at(prefix) from None
    except ConfigError:
        raise
    except ValueError as err:  # checks that name their full key already (algorithm.*, reward.*)
        raise ConfigError(str(err)) from None


def parse_override(text: str) -> dict[str, Any]:
    """``rollout.n=8`` -> ``{"rollout": {"n": 8}}``; the value is read as YAML (``8``, ``true``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({_first_line(err)}); quote it, e.g. key='a: b'"
        ) from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build ``cls`` from defaults, then a YAML file, then dotted overrides (later wins)."""
    updates: dict[str, Any] = {}
    if yaml_path:
        loaded = read_yaml(yaml_path)
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {yaml_path} must hold a mapping at the top level "
                "(`section:` lines with indented `key: value` pairs)"
            )
        _deep_update(updates, loaded)
    for text in overrides or []:
        _deep_update(updates, parse_override(text))
    return merge(cls(), updates)


def read_yaml(yaml_path: str | Path) -> Any:
    """The parsed file; a missing file or a syntax error is a one-line ConfigError with file and line."""
    path = Path(yaml_path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist"
            if not path.exists()
            else f"config file {path} is a directory; pass a .yaml file"
        )
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} line {line}: not UTF-8 text (byte {err.object[err.start]:#04x}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(
            f"config file {where}: invalid YAML ({_first_line(err)}); "
            "write `key: value` pairs, nested by indenting with spaces"
        ) from None


def _first_line(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None)
    return problem or str(err).strip().splitlines()[0]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config tree, ready for YAML/JSON."""
    return dataclasses.asdict(cfg)


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
