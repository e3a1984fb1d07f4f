"""Plugin loading: entry points of group ``plabel_kit`` through pluggy.

``PLABEL_LOAD_PLUGINS=a,b`` loads only those entry points (empty: none);
``PLABEL_DISABLE_PLUGINS=a,b`` skips those.

A plugin that fails (its module does not import, a hook raises, its name is taken) is
recorded with the reason instead of stopping every command: ``plabel plugins`` shows it,
and only what needs it fails.
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .errors import PlabelError
from .registry import Registry, registered_name


@dataclass
class PluginInfo:
    name: str
    package: str  # distribution name
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    problem: str = ""  # why it is not (fully) loaded, one line; "" when it is fine

    @property
    def package_label(self) -> str:
        return f"{self.package} {self.version}".strip()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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
        #: plugins that did not load: a failed import, invalid hooks, a name another package took
        self.failed: list[PluginInfo] = []
        self._registry: Registry | None = None
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self):
        only = _names("PLABEL_LOAD_PLUGINS")
        disabled = _names("PLABEL_DISABLE_PLUGINS") or set()
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if (only is not None and ep.name not in only) or ep.name in disabled:
                continue
            package, version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "")
            info = PluginInfo(ep.name, package, version, ep.value)
            if ep.name in self.info:
                info.problem = (f"not loaded: {self.info[ep.name].package_label} already provides a plugin "
                                f"named {ep.name!r}; uninstall one")
                self.failed.append(info)
                continue
            try:
                module = ep.load()
            except Exception as exc:  # any error of a third party's import: the plugin, not plabel, is broken
                info.problem = f"failed to load ({ep.value}): {_one_line(exc)}"
                self.failed.append(info)
                continue
            try:
                self.add(module, ep.name, package, version)
            except PlabelError as exc:
                info.problem = str(exc).strip().splitlines()[0]
                self.failed.append(info)

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

    def all(self) -> list[PluginInfo]:
        """Loaded plugins, then those that failed to load."""
        return [*self.info.values(), *self.failed]

    @property
    def registry(self) -> Registry:
        """Call every plugin's register hooks (once), attributing each name to its plugin.
        A plugin whose hook raises is marked broken and none of its names are registered."""
        if self._registry is None:
            registry = Registry()
            for info in self.info.values():
                info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(self.pm.get_plugin(info.name)) or [])
                info.components = {}
            broken: set[str] = set()
            for hook_name, kind in hookspecs.REGISTER_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    info = self.info[impl.plugin_name]
                    if info.name in broken:
                        continue
                    register = registry.registrar(kind, info.name, info.package_label)

                    def counting(cls, name=None, _register=register, _info=info, _kind=kind):
                        _info.components.setdefault(_kind, []).append(registered_name(cls, name))
                        return _register(cls, name)

                    try:
                        impl.function(register=counting)
                    except Exception as exc:  # a third party's bug: that plugin is out, the others work
                        problem = f"{hook_name} raised {_one_line(exc)}"
                        info.problem = "; ".join(filter(None, [info.problem, problem]))
                        info.components = {}
                        broken.add(info.name)
                        registry.discard(info.name)
            registry.broken = [(f"plugin {i.name!r} ({i.package_label})", i.problem)
                               for i in self.all() if i.problem and (i in self.failed or i.name in broken)]
            self._registry = registry
        return self._registry

    def add_commands(self, cli):
        """Each plugin's ``register_commands``; one that raises is marked broken, the others'
        commands are still added (so one bad plugin does not take the CLI down)."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                info = self.info[impl.plugin_name]
                problem = f"register_commands raised {_one_line(exc)}"
                info.problem = "; ".join(filter(None, [info.problem, problem]))

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
