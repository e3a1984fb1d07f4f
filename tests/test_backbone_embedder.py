"""The ``backbone`` embedder (a local pretrained ResNet checkpoint, last stage average pooled
at 224 x 224, as SChISM embeds with ImageNet ResNet-50) and PCA fitted per subject (SChISM)
or on all images (``--pca-fit all``)."""
import json

import numpy as np
import pytest
from PIL import Image

from plabel_kit import get_registry, open_dataset
from plabel_kit.synth import make_evolving
from plabel_seqmerge.seqfile import build_sequences, embed_dataset, read_sequences, sequence_params, subject_features
from plabel_seqmerge.sequencing import pca_project
from tests.conftest import write_index

PRESET, CHANNELS = "resnet18_small", 128  # a quarter of ResNet-18's width: fast on 2 cores


def _invoke(*args):
    from click.testing import CliRunner

    from plabel_kit.cli import _load_plugin_commands, cli

    _load_plugin_commands()
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _checkpoint(path, seed: int, wrap: bool = False, preset: str = PRESET):
    """A real ResNet state dict built through the toolkit (random weights from ``seed``):
    plain (torchvision key layout) or wrapped as mmseg/mmpretrain save it."""
    import torch

    from plabel_kit.toolkit.backbones import build_backbone

    torch.manual_seed(seed)
    state = build_backbone(preset, 16)[0].state_dict()
    if wrap:
        state = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def evolving(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone")
    index = make_evolving(root / "data", n=24, size=48, seed=3, progress=False)
    return {"root": root, "index": index, "a": _checkpoint(root / "a.pth", 0),
            "b": _checkpoint(root / "b.pth", 1), "a_wrapped": _checkpoint(root / "a_mmseg.pth", 0, wrap=True)}


def _embed(path, samples, **params):
    embedder = get_registry().build("embedder", {"type": "backbone", "pretrained": str(path), "backbone": PRESET,
                                                 "size": 64, **params})
    return embed_dataset(embedder, samples, progress=False)


def test_backbone_embeds_with_the_checkpoint_weights(evolving):
    samples = list(open_dataset(evolving["index"]).samples)[:6]
    a = _embed(evolving["a"], samples)
    assert a.shape == (6, CHANNELS) and a.dtype == np.float32
    assert np.isfinite(a).all() and (a >= 0).all() and a.std() > 0  # average of ReLU outputs
    # the loaded weights are what embeds: another checkpoint gives other vectors, the same
    # weights in mmseg's wrapped layout the same vectors, batching does not change them
    assert not np.allclose(a, _embed(evolving["b"], samples), atol=1e-3)
    np.testing.assert_allclose(_embed(evolving["a_wrapped"], samples), a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_embed(evolving["a"], samples, batch=4), a, rtol=1e-4, atol=1e-5)


def test_backbone_builds_sequences_and_records_its_config(evolving, tmp_path):
    out = tmp_path / "seq.json"
    result = _invoke("sequence", "build", "--data", evolving["index"], "--out", out, "--embedder", "backbone",
                     "--set", f"pretrained={evolving['a']}", "--set", f"backbone={PRESET}")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["embedder"] == {"type": "backbone", "config": {
        "pretrained": str(evolving["a"]), "backbone": PRESET, "size": 224, "device": "auto", "batch": 16}}
    assert document["params"]["pca_fit"] == "subject" and document["params"]["pca"] == 256
    assert sum(len(s["images"]) for s in document["sequences"]) + len(document["unsequenced"]) == 24
    # the default embedder without weights stays the training-free thumbnail
    assert _invoke("sequence", "build", "--data", evolving["index"], "--out", tmp_path / "t.json").exit_code == 0
    assert json.loads((tmp_path / "t.json").read_text())["embedder"]["type"] == "thumbnail"


def test_backbone_fails_in_one_line_naming_the_weights(evolving, tmp_path):
    def failure(*overrides):
        args = ["sequence", "build", "--data", evolving["index"], "--out", tmp_path / "seq.json",
                "--embedder", "backbone"]
        for override in overrides:
            args += ["--set", override]
        result = _invoke(*args)
        assert result.exit_code != 0 and not (tmp_path / "seq.json").exists()
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        return lines[0]

    missing = tmp_path / "nowhere" / "resnet50.pth"
    assert str(missing) in failure(f"pretrained={missing}") and "no such file" in failure(f"pretrained={missing}")
    assert "pretrained=PATH" in failure()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert failure(f"pretrained={garbage}").startswith(f"Error: {garbage}: not a torch checkpoint")
    # ResNet-18-small weights are not ResNet-18 weights
    assert str(evolving["a"]) in failure(f"pretrained={evolving['a']}", "backbone=resnet18")
    assert "unknown" in failure(f"pretrained={evolving['a']}", "backbone=vgg16")


def test_pca_per_subject_is_each_subject_alone(evolving):
    dataset = open_dataset(evolving["index"])
    samples = sorted(dataset.samples, key=lambda s: (s.meta["subject"], s.meta["time"]))
    features = _embed(evolving["a"], samples)
    subjects = [s.meta["subject"] for s in samples]
    row_sets = [np.flatnonzero(np.array(subjects) == name) for name in sorted(set(subjects))]
    assert len(row_sets) >= 2
    per_subject = subject_features(features, row_sets, 256, "subject")
    everyone = subject_features(features, row_sets, 256, "all")
    for rows, mine, shared in zip(row_sets, per_subject, everyone):
        # dims capped at min(images of the subject, D)
        assert mine.shape == (len(rows), min(len(rows), CHANNELS))
        np.testing.assert_array_equal(mine, pca_project(features[rows], 256))
        assert shared.shape[1] == min(len(features), CHANNELS)
        np.testing.assert_allclose(mine.mean(axis=0), 0, atol=1e-3)  # centred on the subject alone
        assert not np.allclose(shared.mean(axis=0), 0, atol=1e-3)  # centred on everyone
    np.testing.assert_array_equal(everyone[0], pca_project(features, 256)[row_sets[0]])


class Planted:
    """Embedder stub: one planted vector per image id."""

    name = "planted"

    def __init__(self, vectors):
        self.vectors = vectors

    def embed(self, samples):
        return np.stack([self.vectors[s.id] for s in samples])

    def config(self):
        return {}


def test_pca_fit_changes_the_sequences_and_old_files_keep_all(tmp_path):
    """Subject a varies a lot along x, subject b a little along y, each image of day 0 having
    a twin on day 1. PCA to 2 dims over all images keeps x and z: b's images all project
    alike and fall into one sequence. Per subject, b keeps its own axis y: two sequences."""
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    offsets = {"a": (np.array([10.0, 0, 0]), np.array([0, 0, 5.0])),  # (axis of variation, centre)
               "b": (np.array([0, 1.0, 0]), np.array([0, 0, -5.0]))}
    rows, vectors = [], {}
    for subject, (axis, centre) in offsets.items():
        for day in (1, 2):
            for sign, twin in ((1, "p"), (-1, "m")):
                image_id = f"{subject}{day}{twin}"
                rows.append({"id": image_id, "image": str(image), "labels": "", "mask": "", "subject": subject,
                             "time": f"2024-05-0{day}"})
                vectors[image_id] = (centre + sign * axis).astype(np.float32)
    dataset = open_dataset(write_index(tmp_path / "index.csv", rows, ["background", "thing"]))

    def groups(params):
        document = build_sequences(dataset, Planted(vectors), params, progress=False)
        return sorted(s["images"] for s in document["sequences"])

    per_subject = groups(sequence_params(2, 3, 0.99, True))
    everyone = groups(sequence_params(2, 3, 0.99, True, "all"))
    assert per_subject == [["a1m", "a2m"], ["a1p", "a2p"], ["b1m", "b2m"], ["b1p", "b2p"]]
    assert everyone == [["a1m", "a2m"], ["a1p", "a2p"], ["b1m", "b1p", "b2m", "b2p"]]
    # params written before pca_fit was recorded meant one PCA over all images
    legacy = {k: v for k, v in sequence_params(2, 3, 0.99, True).items() if k != "pca_fit"}
    assert groups(legacy) == everyone
    with pytest.raises(ValueError, match="pca_fit must be one of subject, all"):
        sequence_params(2, 3, 0.99, True, "donor")


def test_pca_fit_option_is_recorded_and_old_files_read(evolving, tmp_path):
    out = tmp_path / "seq.json"
    result = _invoke("sequence", "build", "--data", evolving["index"], "--out", out, "--pca-fit", "all")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["params"] == {"pca": 256, "pca_fit": "all", "window": 3, "ratio": 0.99, "running_mean": True}
    del document["params"]["pca_fit"]  # as written before the option existed
    out.write_text(json.dumps(document))
    assert read_sequences(out)["sequences"] == document["sequences"]
    assert _invoke("sequence", "show", out, "--data", evolving["index"]).exit_code == 0
    assert _invoke("sequence", "build", "--data", evolving["index"], "--out", tmp_path / "x.json",
                   "--pca-fit", "donor").exit_code == 2
