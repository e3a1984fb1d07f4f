"""Plugin loading: entry points of group ``plabel_kit`` through pluggy.

``PLABEL_LOAD_PLUGINS=a,b`` loads only those entry points (empty: none);
``PLABEL_DISABLE_PLUGINS=a,b`` skips those.
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .errors import PlabelError
from .registry import Registry


@dataclass
class PluginInfo:
    name: str
    package: str  # distribution name
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)

    @property
    def package_label(self) -> str:
        return f"{self.package} {self.version}".strip()


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


class Plugins:
    """A pluggy manager plus the registry its plugins filled, and what each registered."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self):
        only = _names("PLABEL_LOAD_PLUGINS")
        disabled = _names("PLABEL_DISABLE_PLUGINS") or set()
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if (only is not None and ep.name not in only) or ep.name in disabled:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                other = self.info[ep.name].package_label
                package = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
                raise PlabelError(f"two packages provide a plabel_kit plugin named {ep.name!r}: "
                                  f"{other} and {package}")
            try:
                module = ep.load()
            except Exception as exc:
                raise PlabelError(f"plugin {ep.name!r} ({ep.value}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self.add(module, ep.name, ep.dist.name if ep.dist else "?",
                     ep.dist.version if ep.dist else "")

    def add(self, plugin, name: str, package: str = "", version: str = ""):
        """Register a plugin module or object (entry points do this; tests and notebooks may too)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()  # a misspelt hook name fails here, not silently later
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PlabelError(f"plugin {name!r} is invalid: {exc}") from None
        self.info[name] = PluginInfo(name, package or getattr(plugin, "__name__", name), version,
                                     getattr(plugin, "__name__", type(plugin).__name__))
        self._registry = None

    @property
    def registry(self) -> Registry:
        """Call every plugin's register hooks (once), attributing each name to its plugin."""
        if self._registry is None:
            registry = Registry()
            for info in self.info.values():
                info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(self.pm.get_plugin(info.name)) or [])
                info.components = {}
            for hook_name, kind in hookspecs.REGISTER_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    info = self.info[impl.plugin_name]
                    register = registry.registrar(kind, info.name, info.package_label)

                    def counting(cls, name=None, _register=register, _info=info, _kind=kind):
                        cls = _register(cls, name)
                        _info.components.setdefault(_kind, []).append(cls.name)
                        return cls

                    impl.function(register=counting)
            self._registry = registry
        return self._registry

    def add_commands(self, cli):
        self.pm.hook.register_commands(cli=cli)

    def mmseg_custom_imports(self) -> list[str]:
        modules: list[str] = []
        for result in self.pm.hook.mmseg_custom_imports():
            modules.extend(m for m in result if m not in modules)
        return modules


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded from entry points on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def get_registry() -> Registry:
    return get_plugins().registry


def reset_plugins():
    """Forget loaded plugins (after changing PLABEL_* variables or installing a package)."""
    global _plugins
    _plugins = None
