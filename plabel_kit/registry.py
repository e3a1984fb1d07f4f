"""Names -> component classes, one plain dict per kind, filled by plugins' ``register``."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import numbers
import types
import typing
from dataclasses import dataclass

from .errors import RegistryError
from .interfaces import KINDS, Component

KIND_TITLES = {"label_source": "label source", "refiner": "refiner", "combiner": "combiner",
               "embedder": "embedder", "affinity": "affinity"}
#: plural of each title, for listings ("affinities", not "affinitys")
KIND_PLURALS = {kind: "affinities" if kind == "affinity" else f"{title}s" for kind, title in KIND_TITLES.items()}


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


def registered_name(cls, name: str | None = None) -> str:
    """The name ``register(cls, name)`` files ``cls`` under."""
    return name or getattr(cls, "name", "") or cls.__name__.lower()


def did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry:
    """Names -> classes per kind. A name two plugins register is kept as a clash rather than
    an error, so that one bad install does not stop every command: only using that name fails."""

    def __init__(self):
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: kind -> name -> every entry that registered it (two or more)
        self.clashes: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        #: plugins that failed to load or to register: (description, the one-line reason)
        self.broken: list[tuple[str, str]] = []

    def registrar(self, kind: str, plugin: str, package: str):
        """The ``register(cls, name=None)`` callable handed to one plugin's hook."""
        base = KINDS[kind]

        def register(cls, name: str | None = None):
            name = registered_name(cls, name)
            if not (isinstance(cls, type) and issubclass(cls, base) and dataclasses.is_dataclass(cls)):
                raise RegistryError(f"plugin {plugin!r} ({package}) registered {cls!r} as a "
                                    f"{KIND_TITLES[kind]}, but it is not a dataclass subclass of "
                                    f"plabel_kit.{base.__name__}")
            entry = Entry(cls, plugin, package)
            existing = self.entries[kind].get(name)
            if existing is not None:
                self.clashes[kind].setdefault(name, [existing]).append(entry)
                return cls
            cls.name = name
            self.entries[kind][name] = entry
            return cls

        return register

    def discard(self, plugin: str):
        """Forget every name ``plugin`` registered (its hook failed half-way: a broken plugin
        is not half loaded); a clash it was part of may resolve to the other plugin."""
        for kind in KINDS:
            for name, entry in list(self.entries[kind].items()):
                kept = [e for e in self.registrants(kind, name) if e.plugin != plugin]
                self.clashes[kind].pop(name, None)
                if not kept:
                    del self.entries[kind][name]
                    continue
                self.entries[kind][name] = kept[0]
                if len(kept) > 1:
                    self.clashes[kind][name] = kept
                else:
                    kept[0].cls.name = name

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def clash_messages(self) -> list[str]:
        """One line per name that several plugins registered, with the fix."""
        lines = []
        for kind in KINDS:
            for name, entries in sorted(self.clashes[kind].items()):
                plugins = " and ".join(e.describe() for e in entries)
                lines.append(f"{KIND_TITLES[kind]} {name!r} is registered by {plugins}: using it fails until "
                             f"one is disabled with PLABEL_DISABLE_PLUGINS="
                             + " or =".join(e.plugin for e in entries))
        return lines

    def registrants(self, kind: str, name: str) -> list[Entry]:
        """Every entry registered under ``name`` (two or more for a clash); [] if none."""
        if name in self.clashes[kind]:
            return list(self.clashes[kind][name])
        return [self.entries[kind][name]] if name in self.entries[kind] else []

    def entry(self, kind: str, name: str) -> Entry:
        clash = self.clashes[kind].get(name)
        if clash:
            plugins = " and by ".join(e.describe() for e in clash)
            raise RegistryError(f"{KIND_TITLES[kind]} {name!r} is registered twice: by {plugins}; "
                                f"disable one with PLABEL_DISABLE_PLUGINS")
        try:
            return self.entries[kind][name]
        except KeyError:
            known = self.names(kind)
            broken = "".join(f"; {what} is broken ({why})" for what, why in self.broken)
            raise RegistryError(f"unknown {KIND_TITLES[kind]} {name!r}{did_you_mean(name, known)} "
                                f"(known: {', '.join(known) or 'none'}){broken}") from None

    def get(self, kind: str, name: str) -> type:
        return self.entry(kind, name).cls

    def validate(self, kind: str, config: dict, *, complete: bool = True) -> tuple[type, dict]:
        """Every check of ``build`` without constructing: the name, each parameter's name and
        type, and (``complete``: ``config`` holds all the parameters that will be given) the
        required ones. Returns the class and the parsed parameters."""
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
        if complete and missing:
            raise RegistryError(f"{KIND_TITLES[kind]} {cls.name!r} needs parameter(s) {', '.join(missing)}")
        return cls, values

    def build(self, kind: str, config: dict) -> Component:
        """Build from ``dict(type=NAME, **params)``; string values are parsed to the
        parameter's declared type (as given by ``--set k=v``), other values must have it."""
        cls, values = self.validate(kind, config)
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
    if typing.get_args(tp):  # tuple[int, int], not the bare "tuple" its __name__ gives
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(value, tp, where: str = "value"):
    """``value`` as a parameter of declared type ``tp``. A string (``--set k=v``) is parsed;
    any other value (a config file's, a pipeline's) must already be one: an int parameter
    refuses 2.7 instead of truncating it (bool is not an int; a float parameter takes ints)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any or tp is object or isinstance(tp, (str, typing.TypeVar)):
        return value  # undeclared or unresolvable: nothing to check against

    def refuse(expected=None):
        shown = f"{value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        return RegistryError(f"{where}: expected {expected or _type_name(tp)}, got {shown}")

    if origin in _UNIONS:
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        for option in options:
            try:
                return coerce(value, option, where)
            except RegistryError:
                if len(options) == 1:
                    raise
        raise refuse()
    if origin is typing.Literal:
        parsed = _literal(value) if isinstance(value, str) and value not in args else value
        if parsed in args and type(parsed) in {type(a) for a in args}:
            return parsed
        raise refuse(" or ".join(map(repr, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise refuse("true/false" if isinstance(value, str) else "bool")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise refuse()
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise refuse()
    if tp is str:
        if isinstance(value, str):
            return value
        raise refuse()
    if origin in (tuple, list) or tp in (tuple, list):
        items = value
        if isinstance(value, str):
            items = _literal(value)
            if isinstance(items, (int, float)):
                items = (items,)
            if not isinstance(items, (tuple, list)):
                items = tuple(v.strip() for v in value.split(","))
        if not isinstance(items, (tuple, list)):
            raise refuse()
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, int]: a fixed length
            if len(items) != len(args):
                raise refuse(f"{len(args)} values ({_type_name(tp)})")
            items = [coerce(v, a, where) for v, a in zip(items, args)]
        elif args:
            items = [coerce(v, args[0], where) for v in items]
        return tuple(items) if (origin or tp) is tuple else list(items)
    if isinstance(value, str):
        return _literal(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise refuse()
    return value


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
