"""Plugin system: entry points, environment switches, duplicates, every hook.

Each hookspec has a ``test_hook_<name>`` here; a meta-test enforces it."""
import inspect
import json
import re
import subprocess
import sys
from dataclasses import dataclass

import click
import numpy as np
import pytest

from plabel_kit import LabelSource, PlabelError, PseudoLabel, RegistryError, hookimpl, hookspecs
from plabel_kit.interfaces import Affinity, Combiner, Embedder, Refiner
from plabel_kit.plugins import Plugins
from tests.conftest import REPO, run_plabel

HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(f, "plabel_kit_spec")]


@dataclass
class Ones(LabelSource):
    """Reads image sizes; writes class 1 everywhere."""

    def predict(self, samples):
        return [PseudoLabel(np.ones(s.image.shape[:2], np.uint8)) for s in samples]


@dataclass
class Keep(Refiner):
    """Returns its input."""

    def refine(self, sample, pseudo):
        return pseudo


@dataclass
class First(Combiner):
    """Takes the first input."""

    def combine(self, sample, pseudos):
        return pseudos[0]


@dataclass
class Mean(Embedder):
    """Mean colour."""

    def embed(self, samples):
        return np.stack([s.image.reshape(-1, 3).mean(0) for s in samples]).astype(np.float32)


class FakePlugin:
    def __init__(self, **components):
        self.components = components

    @hookimpl
    def register_label_sources(self, register):
        for name, cls in self.components.items():
            if issubclass(cls, LabelSource):
                register(cls, name=name)

    @hookimpl
    def register_refiners(self, register):
        for name, cls in self.components.items():
            if issubclass(cls, Refiner):
                register(cls, name=name)

    @hookimpl
    def register_combiners(self, register):
        for name, cls in self.components.items():
            if issubclass(cls, Combiner):
                register(cls, name=name)

    @hookimpl
    def register_embedders(self, register):
        for name, cls in self.components.items():
            if issubclass(cls, Embedder):
                register(cls, name=name)


def _plugins(**plugins):
    loaded = Plugins(load_entry_points=False)
    for name, plugin in plugins.items():
        loaded.add(plugin, name, f"pkg-{name}", "1.0")
    return loaded


def test_every_hook_is_documented_and_tested():
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert HOOKS, "no hookspecs found"
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert re.search(rf"^### `{name}", docs, re.M), f"{name} is not documented in docs/plugins.md"
        assert f"test_hook_{name}" in globals(), f"{name} has no test_hook_{name}"


def test_hook_register_label_sources(tiny, tmp_path):
    from plabel_kit import open_dataset
    from plabel_kit.stages import run_source

    registry = _plugins(a=FakePlugin(ones=Ones)).registry
    source = registry.build("label_source", {"type": "ones"})
    run_source(source, open_dataset(tiny), tmp_path / "ls", progress=False)
    from plabel_kit import LabelSet

    assert (LabelSet(tmp_path / "ls").read_label("t0") == 1).all()


def test_hook_register_refiners():
    registry = _plugins(a=FakePlugin(keep=Keep)).registry
    assert registry.names("refiner") == ["keep"] and registry.get("refiner", "keep") is Keep


def test_hook_register_combiners():
    registry = _plugins(a=FakePlugin(first=First)).registry
    assert isinstance(registry.build("combiner", {"type": "first"}), First)


def test_hook_register_embedders():
    registry = _plugins(a=FakePlugin(mean=Mean)).registry
    assert registry.names("embedder") == ["mean"]


@dataclass
class Flat(Affinity):
    """Every pair linked."""

    def walk_inputs(self, sample, scores, stride, radius):
        return np.ones((34, *scores.shape[1:])), scores


class AffinityPlugin:
    @hookimpl
    def register_affinities(self, register):
        register(Flat, name="flat")


def test_hook_register_affinities():
    registry = _plugins(a=AffinityPlugin()).registry
    assert registry.names("affinity") == ["flat"] and isinstance(registry.build("affinity", {"type": "flat"}), Flat)


def test_hook_register_commands():
    class CommandPlugin:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="shout")
            def shout():
                click.echo("HI")

    group = click.Group("g")
    _plugins(c=CommandPlugin()).add_commands(group)
    from click.testing import CliRunner

    assert CliRunner().invoke(group, ["shout"]).output == "HI\n"


def test_hook_mmseg_custom_imports():
    class A:
        @hookimpl
        def mmseg_custom_imports(self):
            return ["pkg.datasets", "pkg.models"]

    class B:
        @hookimpl
        def mmseg_custom_imports(self):
            return ["pkg.models", "other.metrics"]

    modules = _plugins(a=A(), b=B()).mmseg_custom_imports()
    assert sorted(modules) == ["other.metrics", "pkg.datasets", "pkg.models"]


def test_duplicate_names_fail_naming_both_packages():
    loaded = _plugins(first=FakePlugin(ones=Ones), second=FakePlugin(ones=Ones))
    registry = loaded.registry  # a clash fails where the name is used, not every command
    with pytest.raises(RegistryError) as info:
        registry.build("label_source", {"type": "ones"})
    message = str(info.value)
    assert "'ones' is registered twice" in message
    assert "pkg-first 1.0" in message and "pkg-second 1.0" in message


def test_registering_a_non_component_fails():
    class NotAComponent:
        pass

    loaded = _plugins(a=FakePlugin(bad=type("Bad", (LabelSource,), {})))
    registry = loaded.registry  # the plugin is broken, not plabel
    assert "not a dataclass subclass" in loaded.info["a"].problem
    with pytest.raises(RegistryError, match="unknown label source 'bad'.*not a dataclass subclass"):
        registry.build("label_source", {"type": "bad"})


def test_misspelt_hook_is_caught_by_check_pending():
    class Typo:
        @hookimpl
        def register_sauces(self, register):
            pass

    with pytest.raises(PlabelError, match="register_sauces"):
        _plugins(typo=Typo())


def test_registry_build_errors_and_coercion():
    @dataclass
    class Params(LabelSource):
        scales: tuple[float, ...] = (1.0, 0.5)
        threshold: float = 0.15
        flip: bool = True
        name_: str = "x"

    registry = _plugins(a=FakePlugin(params=Params)).registry
    built = registry.build("label_source", {"type": "params", "scales": "1.0,2.0", "threshold": "0.3",
                                            "flip": "false"})
    assert built.scales == (1.0, 2.0) and built.threshold == 0.3 and built.flip is False
    assert built.config() == {"scales": [1.0, 2.0], "threshold": 0.3, "flip": False, "name_": "x"}
    with pytest.raises(RegistryError, match="did you mean 'params'"):
        registry.build("label_source", {"type": "parms"})
    with pytest.raises(RegistryError, match="expected float"):
        registry.build("label_source", {"type": "params", "threshold": "high"})


def test_environment_switches():
    def names(**env):
        rows = json.loads(run_plabel("components", "--json", env=env, check=True).stdout)
        return {r["name"] for r in rows}

    assert "whole_image" in names()
    assert names(PLABEL_LOAD_PLUGINS="") == set()
    assert "whole_image" in names(PLABEL_LOAD_PLUGINS="baseline")
    assert "whole_image" not in names(PLABEL_DISABLE_PLUGINS="baseline")


def test_example_third_party_plugin_installs_and_runs(tmp_path, scenes):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-cache-dir", "--target", str(site), str(REPO / "examples" / "plabel-example-plugin")],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(site)}
    plugins = json.loads(run_plabel("plugins", "--json", env=env, check=True).stdout)
    example = next(p for p in plugins if p["name"] == "example")
    assert example["package"] == "plabel-example" and example["version"] == "0.1.0"
    assert example["components"] == {"label_source": ["center_box", "lse_cam"], "refiner": ["mode_filter"]}
    assert run_plabel("example-hello", env=env, check=True).stdout.strip() == "hello from plabel-example"
    run_plabel("source", "center_box", "--data", scenes, "--out", tmp_path / "box", "--set",
               "fraction=0.6", env=env, check=True)
    run_plabel("refine", "mode_filter", "--data", scenes, "--in", tmp_path / "box", "--out",
               tmp_path / "mode", env=env, check=True)
    result = run_plabel("evaluate", "--data", scenes, "--labels", tmp_path / "mode", env=env, check=True)
    assert "mIoU" in result.stdout
    from plabel_kit import LabelSet

    manifest = LabelSet(tmp_path / "mode").manifest
    assert manifest["producer"]["type"] == "mode_filter"
    assert manifest["producer"]["inputs"]["labels"]["producer"]["config"] == {"fraction": 0.6}
