"""The ``cam`` label source: training, resume, pretrained weights, inference, torchrun."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plabel_kit import LabelSet, open_dataset
from plabel_kit.synth import make_scenes
from tests.conftest import REPO, child_cpu_seconds, interrupt_training, run_plabel, same_weights

CPU_CONFIG = REPO / "configs" / "sources" / "cam_resnet18_cpu.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small CPU config trained on 200 synthetic scenes, as a user runs it."""
    root = tmp_path_factory.mktemp("cam")
    index = make_scenes(root / "scenes", n=200, size=128, seed=0, progress=False)
    start, cpu_start = time.perf_counter(), child_cpu_seconds()
    run_plabel("source", "cam", "--data", index, "--out", root / "cam", "--config", CPU_CONFIG, check=True)
    return {"index": index, "labels": root / "cam", "seconds": time.perf_counter() - start,
            "cpu_seconds": child_cpu_seconds() - cpu_start,
            "checkpoint": root / "cam" / "work" / "cam_final.pth", "root": root}


def _miou(index, labels, *extra):
    result = run_plabel("evaluate", "--data", index, "--labels", labels, "--json", Path(labels) / "eval.json",
                        *extra, check=True)
    return json.loads((Path(labels) / "eval.json").read_text()), result.stdout


def test_small_cpu_config_beats_trivial_baselines(trained, capsys):
    index, root = trained["index"], trained["root"]
    baselines = {}
    for name, extra in (("background", []), ("whole_image", ["--set", "multi=first"])):
        run_plabel("source", name, "--data", index, "--out", root / name, *extra, check=True)
        baselines[name] = _miou(index, root / name)[0]["miou"]
    cam = _miou(index, trained["labels"])[0]["miou"]
    best_trivial = max(baselines.values())
    with capsys.disabled():
        print(f"\nCAM (resnet18_small, 20 epochs, 200 scenes): trained+labelled in {trained['seconds']:.0f} s "
              f"wall, {trained['cpu_seconds']:.0f} s CPU; "
              f"mIoU {100 * cam:.1f} at threshold 0.15 vs trivial: "
              + ", ".join(f"{k} {100 * v:.1f}" for k, v in baselines.items()))
    # "under 10 minutes on 2 cores", stated as CPU time so that a busy machine cannot fail it
    assert trained["cpu_seconds"] < 2 * 600, "the small CPU config must train and label in 10 min on 2 cores"
    assert cam > 1.8 * best_trivial  # measured: about 2x at the paper's threshold 0.15
    ls = LabelSet(trained["labels"])
    assert ls.manifest["counts"] == {"labels": 200, "scores": 200}
    sample = open_dataset(index)[5]
    pseudo = ls.read(sample.id)
    assert pseudo.scores.shape == (len(sample.classes), 128, 128)
    assert pseudo.keys.tolist() == list(sample.classes)
    assert np.allclose(pseudo.scores.reshape(len(sample.classes), -1).max(1), 1.0, atol=1e-3)


def test_sweep_reports_best_threshold(trained):
    report, stdout = _miou(trained["index"], trained["labels"], "--sweep")
    sweep = report["sweep"]
    assert "best background threshold" in stdout
    assert sweep["best_miou"] >= report["miou"] and sweep["best_threshold"] in sweep["thresholds"]


def test_checkpoint_skips_training_and_matches(trained, tmp_path):
    result = run_plabel("source", "cam", "--data", trained["index"], "--out", tmp_path / "again", "--config",
                        CPU_CONFIG, "--checkpoint", trained["checkpoint"], check=True)
    assert "CAM epoch" not in result.stderr
    ref, again = LabelSet(trained["labels"]), LabelSet(tmp_path / "again")
    for image_id in ref.ids()[:10]:
        assert np.array_equal(ref.read_label(image_id), again.read_label(image_id))


def _first_images(index, folder: Path, n: int) -> Path:
    """An index of the first ``n`` images of ``index`` (same files, via links)."""
    lines = Path(index).read_text().splitlines()
    (folder / "sub.csv").write_text("\n".join(lines[:n + 1]) + "\n")
    shutil.copy(Path(index).parent / "classes.json", folder / "classes.json")
    for name in ("images", "masks"):
        (folder / name).symlink_to(Path(index).parent / name)
    return folder / "sub.csv"


def test_ir_labels_mode_has_the_uncertain_band(trained, tmp_path):
    sub = _first_images(trained["index"], tmp_path, 12)
    run_plabel("source", "cam", "--data", sub, "--config", CPU_CONFIG, "--checkpoint", trained["checkpoint"],
               "--set", "mode=ir_labels", "--out", tmp_path / "ir", check=True)
    ls, dataset = LabelSet(tmp_path / "ir"), open_dataset(sub)
    band = 0
    for sample in dataset:
        label = ls.read_label(sample.id)
        present = set(np.unique(label).tolist()) - {0, 255}
        assert present <= set(sample.classes)  # only tagged classes
        band += int((label == 255).sum())
    assert band > 0
    # the same CAMs as the threshold mode: only the labels differ
    for sample in list(dataset)[:3]:
        assert ls.scores_path(sample.id).read_bytes() == \
            LabelSet(trained["labels"]).scores_path(sample.id).read_bytes()


def test_torchrun_two_processes_equal_one(trained, tmp_path):
    sub = _first_images(trained["index"], tmp_path, 30)  # 30 images keep it quick
    common = ["source", "cam", "--data", sub, "--config", CPU_CONFIG, "--checkpoint", trained["checkpoint"]]
    # same threads per process in both runs: oneDNN's sums depend on the thread count
    run_plabel(*common, "--out", tmp_path / "one", env={"OMP_NUM_THREADS": "1"}, check=True)
    plabel = Path(sys.executable).parent / "plabel"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    "29517", str(plabel), *map(str, common), "--out", str(tmp_path / "two")],
                   check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    for folder in ("labels", "scores"):
        one = sorted(p.name for p in (tmp_path / "one" / folder).iterdir())
        assert one == sorted(p.name for p in (tmp_path / "two" / folder).iterdir()) and len(one) == 30
        for name in one:
            assert (tmp_path / "one" / folder / name).read_bytes() == (tmp_path / "two" / folder / name).read_bytes()
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["counts"]["labels"] == 30


TINY = ["--set", "backbone=resnet18_small", "--set", "crop_size=64", "--set", "resize_long=(48,80)",
        "--set", "train_batch_size=8", "--set", "scales=(1.0,)", "--set", "flip=false"]


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("tiny") / "s", n=32, size=64, seed=1, progress=False)


def test_interrupted_training_resumes_to_identical_weights(tiny_scenes, tmp_path):
    args = ["source", "cam", "--data", tiny_scenes, *TINY, "--set", "epochs=4"]
    run_plabel(*args, "--out", tmp_path / "whole", check=True)

    epoch = interrupt_training(args, tmp_path / "broken")
    assert not (tmp_path / "broken" / "work" / "cam_final.pth").exists()
    result = run_plabel(*args, "--out", tmp_path / "broken", env={"PLABEL_QUIET": "0"}, check=True)
    assert f"resuming classifier training after epoch {epoch}" in result.stderr
    assert same_weights(tmp_path / "whole" / "work" / "cam_final.pth", tmp_path / "broken" / "work" / "cam_final.pth")


def test_ddp_training_two_processes(tiny_scenes, tmp_path):
    plabel = Path(sys.executable).parent / "plabel"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", "29518", str(plabel), "source", "cam", "--data", str(tiny_scenes),
                             *TINY, "--set", "epochs=2", "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PLABEL_QUIET="0"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("CAM epoch 2/2: loss") == 1  # only rank 0 logs
    assert (tmp_path / "ddp" / "work" / "cam_final.pth").exists()
    assert json.loads((tmp_path / "ddp" / "manifest.json").read_text())["counts"]["labels"] == 32


@pytest.mark.parametrize("style", ["torchvision", "mmpretrain"])
def test_pretrained_state_dict_loads_with_zero_missing_keys(style, tmp_path):
    from plabel_kit.toolkit.cam import CamNet
    from plabel_kit.toolkit.backbones import load_pretrained

    source = CamNet("resnet50", 20)
    weights = {k: v for k, v in source.backbone.state_dict().items()}
    if style == "torchvision":
        weights["fc.weight"], weights["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    else:
        weights = {"state_dict": {**{f"backbone.{k}": v for k, v in weights.items()},
                                  "head.fc.weight": torch.zeros(1000, 2048)}}
    torch.save(weights, tmp_path / "r50.pth")
    target = CamNet("resnet50", 20)
    missing, unexpected = load_pretrained(target.backbone, str(tmp_path / "r50.pth"))
    assert missing == [] and unexpected == []
    assert torch.equal(target.backbone.layer4[2].conv3.weight, source.backbone.layer4[2].conv3.weight)
    with pytest.raises(ValueError, match="backbone=resnet50"):
        load_pretrained(CamNet("resnet50_v1c", 20).backbone, str(tmp_path / "r50.pth"))


def test_pretrained_through_the_cli_reports_keys(tiny_scenes, tmp_path):
    from plabel_kit.toolkit.cam import CamNet

    torch.save(CamNet("resnet18_small", 5).backbone.state_dict(), tmp_path / "small.pth")
    result = run_plabel("source", "cam", "--data", tiny_scenes, *TINY, "--set", "epochs=1",
                        "--pretrained", tmp_path / "small.pth", "--out", tmp_path / "ls",
                        env={"PLABEL_QUIET": "0"}, check=True)
    assert "0 missing keys, 0 unexpected" in result.stderr


def _train_once(dataset, workdir, monkeypatch, **params):
    """One epoch of the tiny CAM in process: (weights before training, after) of the model."""
    import plabel_cam.train as cam_train
    from plabel_cam.source import Cam

    before = {}
    real_train = cam_train.train

    def spy(model, *args, **kwargs):
        before.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(cam_train, "train", spy)
    cam = Cam(backbone="resnet18_small", crop_size=64, resize_long=(48, 80), train_batch_size=8, epochs=1,
              scales=(1.0,), flip=False, device="cpu", **params)
    cam._train(dataset, workdir, torch.device("cpu"))
    after = torch.load(workdir / "cam_final.pth", weights_only=False)["model"]
    return before, after


def _changed(before, after, prefix):
    """Names under ``prefix`` (parameters and batch-norm statistics) whose values changed."""
    return [k for k in before if k.startswith(prefix) and not k.endswith("num_batches_tracked")
            and not torch.equal(before[k], after[k])]


def test_pretrained_training_freezes_through_layer2_as_irn(tiny_scenes, tmp_path, monkeypatch):
    """IRN's resnet50_cam freezes conv1/bn1 and detaches layer2's output: with ImageNet weights
    only layer3, layer4 and the classifier learn. From scratch every stage trains."""
    from plabel_kit.toolkit.cam import CamNet

    dataset = open_dataset(tiny_scenes)
    torch.save(CamNet("resnet18_small", 5).backbone.state_dict(), tmp_path / "small.pth")
    before, after = _train_once(dataset, tmp_path / "pre", monkeypatch, pretrained=str(tmp_path / "small.pth"))
    for frozen in ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2."):
        assert _changed(before, after, frozen) == [], frozen
    assert any("running_mean" in k for k in before if k.startswith("backbone.layer2."))  # statistics compared too
    for learning in ("backbone.layer3.", "backbone.layer4.", "classifier."):
        assert _changed(before, after, learning), learning

    before, after = _train_once(dataset, tmp_path / "scratch", monkeypatch)
    for learning in ("backbone.conv1.", "backbone.layer1.", "backbone.layer2.", "backbone.layer3."):
        assert _changed(before, after, learning), learning
    with pytest.raises(ValueError, match="frozen_stages"):
        from plabel_cam.source import Cam

        Cam(frozen_stages=5)
