"""Names -> component classes, one plain dict per kind, filled by plugins' ``register``."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from dataclasses import dataclass

from .errors import RegistryError
from .interfaces import KINDS, Component

KIND_TITLES = {"label_source": "label source", "refiner": "refiner", "combiner": "combiner",
               "embedder": "embedder"}


@dataclass(frozen=True)
class Entry:
    cls: type
    plugin: str  # plugin (entry point) name
    package: str  # distribution that provides the plugin, with its version

    def describe(self) -> str:
        return f"plugin {self.plugin!r} ({self.package})"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: object
    required: bool


def did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry:
    def __init__(self):
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def registrar(self, kind: str, plugin: str, package: str):
        """The ``register(cls, name=None)`` callable handed to one plugin's hook."""
        base = KINDS[kind]

        def register(cls, name: str | None = None):
            name = name or getattr(cls, "name", "") or cls.__name__.lower()
            if not (isinstance(cls, type) and issubclass(cls, base) and dataclasses.is_dataclass(cls)):
                raise RegistryError(f"plugin {plugin!r} ({package}) registered {cls!r} as a "
                                    f"{KIND_TITLES[kind]}, but it is not a dataclass subclass of "
                                    f"plabel_kit.{base.__name__}")
            existing = self.entries[kind].get(name)
            if existing is not None:
                raise RegistryError(
                    f"{KIND_TITLES[kind]} {name!r} is registered twice: by {existing.describe()} "
                    f"and by plugin {plugin!r} ({package}); disable one with PLABEL_DISABLE_PLUGINS")
            cls.name = name
            self.entries[kind][name] = Entry(cls, plugin, package)
            return cls

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = self.names(kind)
            raise RegistryError(f"unknown {KIND_TITLES[kind]} {name!r}{did_you_mean(name, known)} "
                                f"(known: {', '.join(known) or 'none'})") from None

    def get(self, kind: str, name: str) -> type:
        return self.entry(kind, name).cls

    def build(self, kind: str, config: dict) -> Component:
        """Build from ``dict(type=NAME, **params)``; string values are parsed to the
        parameter's declared type (as given by ``--set k=v``)."""
        config = dict(config)
        if "type" not in config:
            raise RegistryError(f"a {KIND_TITLES[kind]} config needs a 'type' key: {config}")
        cls = self.get(kind, config.pop("type"))
        params = {p.name: p for p in parameters(cls)}
        values = {}
        for key, value in config.items():
            if key not in params:
                raise RegistryError(f"{KIND_TITLES[kind]} {cls.name!r} has no parameter {key!r}"
                                    f"{did_you_mean(key, params)} (parameters: {', '.join(params) or 'none'})")
            values[key] = coerce(value, _field_type(cls, key), f"{cls.name}.{key}")
        missing = [p.name for p in params.values() if p.required and p.name not in values]
        if missing:
            raise RegistryError(f"{KIND_TITLES[kind]} {cls.name!r} needs parameter(s) {', '.join(missing)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{KIND_TITLES[kind]} {cls.name!r}: {exc}") from None


def load_config(path) -> dict:
    """Component parameters from a config file: an mmengine-style Python file (top-level
    names; ``type`` and ``_base_`` are not parameters) or a JSON object."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".json":
        try:
            params = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path}: not valid JSON ({exc})") from None
    else:
        try:
            from mmengine.config import Config
        except ImportError:  # the config language is mmengine's; plain Python files still work
            import runpy

            params = {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("__")}
        else:
            params = Config.fromfile(str(path)).to_dict()
    if not isinstance(params, dict):
        raise RegistryError(f"{path}: expected parameters as top-level names or a JSON object")
    return {k: v for k, v in params.items() if k not in ("type", "_base_")}


def _field_type(cls, name):
    hints = typing.get_type_hints(cls)
    return hints.get(name, str)


def parameters(cls) -> list[Parameter]:
    """The dataclass fields of a component as (name, type, default, required)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default, required = f.default, False
        elif f.default_factory is not dataclasses.MISSING:
            default, required = f.default_factory(), False
        else:
            default, required = None, True
        out.append(Parameter(f.name, _type_name(hints.get(f.name, str)), default, required))
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value, tp, where: str = "value"):
    """Parse a string from the command line to type ``tp``; other values pass through."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value.lower() in ("none", "null", ""):
            return None
        return coerce(value, args[0], where) if len(args) == 1 else _literal(value)
    if tp is bool:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise RegistryError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            raise RegistryError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str or tp is typing.Any:
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        parsed = _literal(value)
        if isinstance(parsed, (int, float)):
            parsed = (parsed,)
        if not isinstance(parsed, (tuple, list)):
            parsed = tuple(v.strip() for v in value.split(","))
        item = args[0] if args else None
        if item is not None and item is not Ellipsis:
            parsed = [coerce(v, item, where) if isinstance(v, str) else v for v in parsed]
        return tuple(parsed) if (origin or tp) is tuple else list(parsed)
    return _literal(value)


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
