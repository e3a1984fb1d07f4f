"""The hooks a plugin may implement. Each docstring is the contract.

A plugin is a module (or object) listed under the entry-point group ``plabel_kit``::

    from plabel_kit import hookimpl

    @hookimpl
    def register_label_sources(register):
        register(MySource, name="mine")
"""
from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "plabel_kit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., type]


@hookspec
def register_label_sources(register: Register) -> None:
    """Register label sources: call ``register(cls, name=None)`` once per class.

    ``cls`` is a dataclass subclass of :class:`plabel_kit.LabelSource`; ``name`` defaults to
    ``cls.name`` or the lower-cased class name. A name another plugin registers too is a
    clash: ``plabel plugins`` flags it, and using the name fails with a message naming both
    plugins and their packages."""


@hookspec
def register_refiners(register: Register) -> None:
    """Register refiners (dataclass subclasses of :class:`plabel_kit.Refiner`), as above."""


@hookspec
def register_combiners(register: Register) -> None:
    """Register combiners (dataclass subclasses of :class:`plabel_kit.Combiner`), as above."""


@hookspec
def register_embedders(register: Register) -> None:
    """Register embedders (dataclass subclasses of :class:`plabel_kit.Embedder`), as above."""


@hookspec
def register_affinities(register: Register) -> None:
    """Register pixel affinities (dataclass subclasses of :class:`plabel_kit.Affinity`), as
    above: what the ``randomwalk`` refiner walks over (``--set affinity=NAME``)."""


@hookspec
def register_commands(cli) -> None:
    """Add click commands or groups to the ``plabel`` group ``cli`` (``cli.add_command``).

    Runs when the CLI starts; keep imports of heavy libraries inside the commands."""


@hookspec
def mmseg_custom_imports() -> list[str]:
    """Return module names to import before building MMSegmentation models or datasets,
    so that the modules' registrations in mmseg's registries run (mmengine's
    ``custom_imports``). Results of all plugins are concatenated."""


#: hook name -> component kind it fills
REGISTER_HOOKS = {
    "register_label_sources": "label_source",
    "register_refiners": "refiner",
    "register_combiners": "combiner",
    "register_embedders": "embedder",
    "register_affinities": "affinity",
}
