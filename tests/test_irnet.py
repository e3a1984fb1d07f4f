"""The ``irnet`` label source and AffinityNet (``randomwalk --set affinity=affinitynet``):
pair labels, the DDP-correct loss, training + labelling through the CLI on synthetic scenes."""
import json

import numpy as np
import pytest
import torch

from plabel_kit import LabelSet
from plabel_kit.synth import make_scenes
from tests.conftest import REPO, run_plabel

CAM_CONFIG = REPO / "configs" / "sources" / "cam_resnet18_cpu.py"
IRN_CONFIG = REPO / "configs" / "sources" / "irnet_cpu.py"


@pytest.fixture(scope="module")
def cam_set(tmp_path_factory):
    """A small CAM on 96 scenes of 96 px, in IR-labels mode with thresholds fitted to its
    broad maps (its best background threshold is about 0.7, VOC's 0.15)."""
    root = tmp_path_factory.mktemp("irnet")
    index = make_scenes(root / "scenes", n=96, size=96, seed=0, progress=False)
    run_plabel("source", "cam", "--data", index, "--out", root / "cam", "--config", CAM_CONFIG,
               "--set", "epochs=15", "--set", "crop_size=96", "--set", "resize_long=(72,120)",
               "--set", "mode=ir_labels", "--set", "fg_threshold=0.7", "--set", "bg_threshold=0.4",
               "--set", "scales=(1.0,0.5,1.5)", check=True)
    return {"root": root, "index": index, "cam": root / "cam"}


def _miou(index, labels):
    out = labels / "eval.json"
    run_plabel("evaluate", "--data", index, "--labels", labels, "--json", out, "--sweep", check=True)
    return json.loads(out.read_text())


def test_pair_labels_follow_irn():
    from plabel_irnet.pairs import pair_labels

    label = np.array([[0, 0, 1], [255, 1, 2]], np.uint8)
    bg, fg, neg = pair_labels(label, 2)  # offsets (0,1), (1,-1), (1,0), (1,1)
    assert bg[0, 0, 0] == 1 and fg[0, 1, 1] == 0 and neg[0, 0, 1] == 1
    assert fg[1, 0, 2] == 1 and neg[3, 0, 1] == 1  # (0,2)-(1,1): 1-1; (0,1)-(1,2): 0-2
    assert bg[:, 1].sum() + fg[:, 1].sum() + neg[:, 1].sum() == neg[0, 1, 1]  # 255 row: only 1-2
    assert not (bg | fg | neg)[[0, 3], :, -1].any()  # partners off the grid


def test_path_affinity_matches_the_walk_refiners():
    from plabel_irnet.pairs import path_affinity
    from plabel_randomwalk.affinity import boundary_affinity

    boundary = np.random.default_rng(0).random((9, 11))
    ours = path_affinity(torch.from_numpy(boundary)[None], 4)[0].numpy()
    assert np.allclose(ours, boundary_affinity(boundary, 4))



def test_feature_affinity_values_and_finite_gradients_at_the_border():
    from plabel_irnet.pairs import feature_affinity
    from plabel_randomwalk.affinity import neighbour_offsets

    features = torch.randn(2, 8, 6, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    affinity = feature_affinity(features, 3)
    k = neighbour_offsets(3).index((1, 1))
    expected = torch.exp(-(features[0, :, 2, 3] - features[0, :, 3, 4]).abs().mean())
    assert torch.allclose(affinity[0, k, 2, 3], expected)
    assert (affinity[:, k, -1, :] == 0).all() and (affinity[:, k, :, -1] == 0).all()  # partners off the grid
    # off-grid partners used to be NaN-padded and zeroed afterwards: the forward looked fine
    # but every gradient became NaN, so AffinityNet's first step destroyed its weights
    affinity.sum().backward()
    assert torch.isfinite(features.grad).all()

def test_loss_averages_over_ranks_like_one_process():
    """IRN divides by each GPU's own pair counts; here two ranks give one process's gradient."""
    from plabel_irnet.pairs import affinity_loss

    rng = np.random.default_rng(1)
    affinity = torch.tensor(rng.uniform(0.05, 0.95, (4, 3, 5, 5)), requires_grad=True)
    labels = torch.from_numpy((rng.random((4, 3, 3, 5, 5)) < np.array([0.6, 0.05, 0.3])[:, None, None, None])
                              .astype(np.uint8))
    affinity_loss(affinity, labels)[0].backward()
    whole = affinity.grad.clone()
    halves = [affinity.detach()[part].clone().requires_grad_(True) for part in (slice(0, 2), slice(2, 4))]
    # emulate world=2 by hand: global counts, local sums, gradients averaged
    counts = labels.sum(dim=(0, 2, 3, 4)).double()
    grads = []
    for part, piece in zip((slice(0, 2), slice(2, 4)), halves):
        lab = labels[part].double()
        terms = 2 * torch.stack([(lab[:, 0] * -torch.log(piece + 1e-5)).sum(), (lab[:, 1] * -torch.log(piece + 1e-5)).sum(),
                                 (lab[:, 2] * -torch.log(1 + 1e-5 - piece)).sum()]) / (counts + 1e-5)
        (((terms[0] + terms[1]) / 2 + terms[2]) / 2).backward()
        grads.append(piece.grad / 2)
    assert torch.allclose(torch.cat(grads), whole)
    local = affinity.detach()[:2].clone().requires_grad_(True)
    affinity_loss(local, labels[:2])[0].backward()  # IRN's per-rank normalisation differs
    assert not torch.allclose(local.grad / 2, whole[:2])


def test_irnet_improves_on_its_cam_and_resumes(cam_set, tmp_path, capsys):
    index, cam = cam_set["index"], cam_set["cam"]
    out = tmp_path / "irn"
    result = run_plabel("source", "irnet", "--data", index, "--cam", cam, "--out", out, "--config", IRN_CONFIG,
                        "--set", "epochs=4", "--set", "threshold=0.6", check=True)
    assert torch.load(out / "work" / "latest.pth", weights_only=False)["epoch"] == 4 and result.returncode == 0
    cam_miou, irn_miou = _miou(index, cam)["sweep"]["best_miou"], _miou(index, out)["sweep"]["best_miou"]
    with capsys.disabled():
        print(f"\nCAM {100 * cam_miou:.1f} -> IRNet {100 * irn_miou:.1f} mIoU (best thresholds; paper VOC 48.3 -> 66.5)")
    assert irn_miou > cam_miou
    labels = LabelSet(out)
    pseudo = labels.read(labels.ids()[0])
    assert pseudo.stride == 4 and pseudo.scores.shape[1:] == (24, 24) and abs(pseudo.scores.max() - 1) < 1e-3
    boundary = np.load(out / "work" / "boundaries" / f"{labels.ids()[0]}.npy")
    assert boundary.shape == (24, 24) and 0 <= boundary.min() and boundary.max() <= 1
    run_plabel("source", "irnet", "--data", index, "--cam", cam, "--out", tmp_path / "again", "--config",
               IRN_CONFIG, "--set", "epochs=4", "--set", "threshold=0.6", "--checkpoint", out / "work" / "irn_final.pth", check=True)
    assert not (tmp_path / "again" / "work" / "latest.pth").exists()  # no training
    assert np.array_equal(LabelSet(tmp_path / "again").read_label(labels.ids()[3]), labels.read_label(labels.ids()[3]))


def test_affinitynet_refiner_trains_and_walks(cam_set, tmp_path):
    out = tmp_path / "aff"
    result = run_plabel("refine", "randomwalk", "--data", cam_set["index"], "--in", cam_set["cam"], "--out", out,
                        "--set", "affinity=affinitynet", "--set", "recipe=psa", "--set", "affinity_epochs=2",
                        "--set", "affinity_crop=96", check=True)
    assert torch.load(out / "work" / "latest.pth", weights_only=False)["epoch"] == 2 and result.returncode == 0
    assert (out / "work" / "affinitynet_final.pth").is_file()
    labels = LabelSet(out)
    assert labels.manifest["counts"]["labels"] == 96
    assert labels.read(labels.ids()[0]).stride == 8
