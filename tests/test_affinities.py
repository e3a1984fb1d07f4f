"""Affinities as components (kind ``affinity``): the built-ins come from their plugins, the
walk through the registry equals the toolkit computed directly (IRN's and PSA's op order),
a third party's affinity drives ``plabel refine randomwalk``, and a missing plugin is named."""
import ast
import json
from dataclasses import dataclass

import numpy as np
import pytest

import plabel_kit.plugins
from plabel_kit import Affinity, PseudoLabel, get_registry, hookimpl, open_dataset
from plabel_kit.arrays import resize_scores, scores_to_labels
from plabel_kit.plugins import Plugins
from plabel_kit.toolkit.affinity import boundary_affinity, image_affinity, neighbour_offsets
from plabel_kit.toolkit.walk import (grid_size, pool_to_grid, propagate, upsample_from_grid, walk_operator,
                                     walk_scores)
from tests.conftest import REPO
from tests.test_crf import cam_like_scores, write_cam_like


@pytest.fixture(scope="module")
def scene(scenes):
    """One 64 x 64 synthetic scene with two classes and its CAM-like stride-4 scores."""
    sample = next(s for s in open_dataset(scenes) if len(s.classes) == 2)
    return sample, cam_like_scores(sample.mask, sample.classes, 4)


def direct_walk(planes, keys, affinity, radius, beta, steps, stride, size, threshold):
    """The walk as the refiner and IRNet wrote it before ``walk_scores``, step by step."""
    walked = propagate(planes, walk_operator(affinity, radius, beta), steps, "cpu")
    up = upsample_from_grid(walked, stride, size)
    if (keys == 0).any():
        return keys.astype(np.uint8)[np.argmax(up, axis=0)], walked
    peak = float(up.max(initial=0.0))
    if peak > 0:
        walked, up = walked / peak, up / peak
    return scores_to_labels(up, keys, threshold), walked


def test_the_built_in_affinities_come_from_their_plugins():
    registry = get_registry()
    plugins = {name: registry.entry("affinity", name).plugin for name in registry.names("affinity")}
    assert plugins.items() >= {"image": "randomwalk", "boundary": "randomwalk", "affinitynet": "irnet"}.items()
    assert all(issubclass(registry.get("affinity", name), Affinity) for name in ("image", "boundary", "affinitynet"))


@pytest.mark.parametrize("plugin, other", [("plabel_randomwalk", "plabel_irnet"), ("plabel_irnet", "plabel_randomwalk")])
def test_plugins_do_not_import_each_other(plugin, other):
    for path in (REPO / "plugins" / plugin).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == other for n in names), f"{path} imports {other}"


@pytest.mark.parametrize("recipe", ["irn", "psa"])
@pytest.mark.parametrize("affinity", ["image", "boundary"])
def test_walk_through_the_registry_equals_the_toolkit(scene, tmp_path, recipe, affinity):
    from plabel_randomwalk.refiner import RandomWalk

    sample, cams = scene
    stride = 4 if recipe == "irn" else 8
    size, grid = sample.image.shape[:2], grid_size(sample.image.shape[:2], stride)
    boundary = np.clip(np.random.default_rng(0).random(grid) ** 4, 0, 1)
    np.save(tmp_path / f"{sample.id}.npy", boundary)
    options = {"boundaries": str(tmp_path)} if affinity == "boundary" else {}
    walker = RandomWalk(recipe=recipe, affinity=affinity, device="cpu", **options)
    pseudo = PseudoLabel(np.zeros(size, np.uint8), cams, np.asarray(sample.classes), stride=4)
    out = walker.refine(sample, pseudo)

    planes, keys = walker.grid_scores(sample, pseudo, grid, stride)
    if affinity == "boundary":
        pairs, planes = boundary_affinity(boundary, 5), planes * (1.0 - boundary)
    else:
        colours = pool_to_grid(np.moveaxis(sample.image, -1, 0) / 255.0, stride)
        pairs = image_affinity(np.moveaxis(colours, 0, -1), 5, 0.05)
    label, walked = direct_walk(planes, keys, pairs, 5, walker.setting("beta"), 256, stride, size, 0.25)
    np.testing.assert_array_equal(out.label, label)
    np.testing.assert_array_equal(out.scores, walked.astype(np.float32))
    assert list(out.keys) == list(keys) and out.stride == stride


def test_irnet_walk_equals_its_former_inline_walk(scene, tmp_path):
    """``Irnet.walk`` with a stand-in boundary model and CAM set, against the steps it used to
    spell out: CAM x (1 - boundary) on the stride-4 grid, walk, global max, threshold."""
    from plabel_irnet.source import Irnet

    sample, cams = scene
    size, grid = sample.image.shape[:2], grid_size(sample.image.shape[:2], 4)
    boundary = np.clip(np.random.default_rng(1).random(grid) ** 3, 0, 1)
    keys = np.concatenate([[0], sample.classes]).astype(np.int64)
    scores = np.concatenate([1 - cams.max(axis=0, keepdims=True), cams]).astype(np.float32)

    class Boundaries:
        def boundary(self, image):
            return boundary

    class CamSet:
        def read(self, image_id, size):
            return PseudoLabel(np.zeros(size, np.uint8), scores, keys, stride=4)

    irnet = object.__new__(Irnet)  # no CAM set on disk, no training: only walk() runs
    irnet.__dict__.update(_model=Boundaries(), _cam=CamSet(), _device="cpu", _workdir=tmp_path, radius=5,
                          beta=10.0, log_steps=8, threshold=0.25)
    out = irnet.walk(sample)

    fg = keys != 0
    planes = pool_to_grid(resize_scores(scores[fg], size), 4) * (1.0 - boundary)
    label, walked = direct_walk(planes, keys[fg], boundary_affinity(boundary, 5), 5, 10.0, 256, 4, size, 0.25)
    np.testing.assert_array_equal(out.label, label)
    np.testing.assert_array_equal(out.scores, walked.astype(np.float32))
    assert (tmp_path / "boundaries" / f"{sample.id}.npy").is_file()


def test_walk_scores_checks_the_grids_agree():
    with pytest.raises(ValueError, match=r"affinity is on a \[4, 4\] grid but the scores on \[4, 5\]"):
        walk_scores(np.zeros((1, 4, 5)), np.array([1]), np.zeros((34, 4, 4)), radius=5, beta=10.0, steps=2,
                    stride=4, size=(16, 20), threshold=0.25)


@dataclass
class Uniform(Affinity):
    """A third party's affinity: every pair linked by ``strength``; counts its calls."""

    strength: float = 1.0
    sigma: float = 0.0  # declared, so the refiner's sigma is handed over

    calls = []

    def walk_inputs(self, sample, scores, stride, radius):
        Uniform.calls.append((sample.id, self.strength, self.sigma))
        return np.full((len(neighbour_offsets(radius)), *scores.shape[1:]), self.strength), scores


class UniformPlugin:
    @hookimpl
    def register_affinities(self, register):
        register(Uniform, name="uniform")


@pytest.fixture
def plugins_with_uniform(monkeypatch):
    """The installed plugins plus ``UniformPlugin``, as the process-wide plugins."""
    loaded = Plugins()
    loaded.add(UniformPlugin(), "uniform_plugin", "pkg-uniform", "1.0")
    monkeypatch.setattr(plabel_kit.plugins, "_plugins", loaded)
    Uniform.calls.clear()
    return loaded


def test_a_third_party_affinity_drives_the_refiner(plugins_with_uniform, cli_run, scenes, tmp_path):
    cam = write_cam_like(scenes, tmp_path / "cam")
    out = tmp_path / "rw"
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", cam.path, "--out", out,
                     "--set", "affinity=uniform", "--set", "sigma=0.2", "--set", "device=cpu")
    assert result.exit_code == 0, result.output
    dataset = open_dataset(scenes)
    assert sorted(call[0] for call in Uniform.calls) == sorted(s.id for s in dataset.samples)
    assert {call[1:] for call in Uniform.calls} == {(1.0, 0.2)}
    from plabel_kit import LabelSet
    from plabel_randomwalk.refiner import RandomWalk

    labels, sample = LabelSet(out), dataset.samples[0]
    pseudo, size = cam.read(sample.id), sample.image.shape[:2]
    planes, keys = RandomWalk(device="cpu").grid_scores(sample, pseudo, grid_size(size, 4), 4)
    label, _ = direct_walk(planes, keys, np.ones((34, *planes.shape[1:])), 5, 10.0, 256, 4, size, 0.25)
    np.testing.assert_array_equal(labels.read_label(sample.id), label)
    listed = cli_run("components", "--kind", "affinities", "--json")
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["uniform"]["plugin"] == "uniform_plugin" and rows["uniform"]["kind"] == "affinity"
    assert {"image", "boundary", "affinitynet"} <= set(rows)


def test_a_missing_affinity_plugin_is_named(monkeypatch, cli_run, scenes, tmp_path):
    monkeypatch.setenv("PLABEL_DISABLE_PLUGINS", "irnet")
    monkeypatch.setattr(plabel_kit.plugins, "_plugins", None)
    cam = write_cam_like(scenes, tmp_path / "cam")
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", cam.path, "--out", tmp_path / "rw",
                     "--set", "affinity=affinitynet", "--set", "recipe=psa")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "affinity 'affinitynet' is registered by no installed plugin (plabel_irnet)" in result.output
    assert "plugin 'irnet' is not installed or is disabled" in result.output
    assert "affinitynet" not in get_registry().names("affinity")
