"""Typed settings from YAML: a dataclass instance filled key by key, every key and type checked.

One language for every settings file of the project: feature extraction (preprocess/features.py),
training (s2t/config.py) and the demo (s2t/demo.py). An unknown key or a value of the wrong type is
a ConfigError that names the key and lists what is valid.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def read_yaml(path) -> dict:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError names the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:  # safe_load: a !!python/object tag is an error here, never code that runs
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}; fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def coerce(value, tp, key: str):
    """Check (and minimally convert) a parsed YAML value against a dataclass field type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[]") for v in value]
    if origin is dict or tp is dict:
        if value is None:  # a key with nothing under it
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:  # YAML reads a bare `none`/`null`/`~` as null: settings spell "none" for off
            value = "none"
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def merge(obj, updates: dict, prefix: str = "") -> None:
    """Apply a nested dict onto a dataclass instance in place, checking keys and types. A field
    whose value has a `merge(updates, key)` method (a mapping with its own key rules) merges itself."""
    hints = typing.get_type_hints(type(obj))
    for key, value in updates.items():
        full = prefix + key
        if key not in hints:
            valid = ", ".join(prefix + k for k in hints)
            raise ConfigError(f"unknown config key {full!r}; valid keys: {valid}")
        current = getattr(obj, key)
        if callable(getattr(current, "merge", None)):
            current.merge(value, full)
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {list(typing.get_type_hints(type(current)))}")
            merge(current, value, full + ".")
        else:
            setattr(obj, key, coerce(value, hints[key], full))


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}} with the value parsed as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    value = None if raw in ("", "None", "none") else yaml.safe_load(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def as_overrides(updates: dict, prefix: str = "") -> list[str]:
    """{'a': {'b': 1}} -> ['a.b=1']: a nested mapping of settings as command-line overrides."""
    out = []
    for key, value in updates.items():
        if isinstance(value, dict):
            out += as_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def load(cls, paths=(), overrides=(), base=None):
    """`cls()` (or `base`) <- each YAML file in order <- each override ('a.b=v' or a nested dict)."""
    obj = cls() if base is None else base
    for p in ([paths] if isinstance(paths, (str, Path)) else paths or []):
        data = read_yaml(p)
        try:
            merge(obj, data)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    for o in overrides:
        try:
            merge(obj, o if isinstance(o, dict) else parse_override(o))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: its value is not valid YAML: {' '.join(str(e).split())}") from None
    return obj
