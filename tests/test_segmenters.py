"""Segmenters through MMSegmentation (plugin ``mmseg``): dataset, U-Net parts, metric,
``plabel segment train|test|predict``, resume, CPU DDP, configs.

Tiny configs on 64x64 synthetic scenes keep the file fast on 2 CPU cores; one trained
U-Net is shared by the tests that need one.
"""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO, write_index

CONFIGS = REPO / "configs" / "segmenters"
UNET = CONFIGS / "unet-vgg16_tiny-cpu-64x64.py"
DEEPLAB = CONFIGS / "deeplabv3plus_r50-d8_tiny-cpu-64x64.py"
ALL_CONFIGS = sorted(p for p in CONFIGS.glob("*.py") if not p.name.startswith("_"))


def plabel(*args):
    """``plabel ARGS`` in-process as the cli_run fixture runs it (usable in module-scoped
    fixtures); returns (exit code, output)."""
    from plabel_kit.cli import _load_plugin_commands, cli

    _load_plugin_commands()
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def losses(work: Path) -> dict[int, float]:
    """iteration -> training loss, from the latest run's mmengine scalars.json."""
    runs = sorted(p for p in work.iterdir() if (p / "vis_data" / "scalars.json").is_file())
    rows = [json.loads(line) for line in (runs[-1] / "vis_data" / "scalars.json").read_text().splitlines()]
    return {row["iter"]: row["loss"] for row in rows if "loss" in row}


def subset_index(index: Path, ids, out: Path) -> Path:
    """A CSV index of some rows of ``index`` (absolute paths), with its classes."""
    classes = json.loads((index.parent / "classes.json").read_text())["classes"]
    with index.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["id"] in set(ids)]
    for row in rows:
        row["image"] = str(index.parent / row["image"])
        row["mask"] = str(index.parent / row["mask"])
    return write_index(out, rows, classes, fieldnames=list(rows[0]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and idle-spinning ones cost a busy
    2-core runner several times the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 synthetic scenes, a label set for them, and seed 000's split: 16 pseudo-labelled
    images (``pseudo``) and 8 manually labelled ones (``manual``, their masks)."""
    from plabel_kit import open_dataset
    from plabel_kit.plugins import get_registry
    from plabel_kit.stages import run_source
    from plabel_kit.synth import make_scenes

    root = tmp_path_factory.mktemp("segment")
    index = make_scenes(root / "scenes", n=24, size=64, seed=11, progress=False)
    dataset = open_dataset(index)
    labels = root / "ls_gt"
    run_source(get_registry().build("label_source", {"type": "ground_truth"}), dataset, labels,
               progress=False)
    return {"root": root, "index": index, "labels": labels, "ids": dataset.ids,
            "pseudo": subset_index(index, dataset.ids[:16], root / "pseudo" / "index.csv"),
            "manual": subset_index(index, dataset.ids[16:], root / "manual" / "index.csv")}


@pytest.fixture(scope="module")
def trained_unet(data):
    """The tiny VGG-16 U-Net trained 60 iterations on 16 pseudo + 8 manual labels."""
    work = data["root"] / "work_unet"
    code, output = plabel("segment", "train", "--config", UNET, "--data", data["pseudo"],
                          "--labels", data["labels"], "--manual", data["manual"], "--work", work)
    assert code == 0, output
    return work


def test_dataset_mixes_manual_and_pseudo_labels(data):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import plabel_mmseg.dataset  # noqa: F401  (registers PlabelSegDataset)

    init_default_scope("mmseg")
    mixed = DATASETS.build(dict(type="PlabelSegDataset", data=str(data["index"]),
                                labels=str(data["labels"]), manual=str(data["manual"])))
    infos = {mixed.get_data_info(i)["id"]: mixed.get_data_info(i) for i in range(len(mixed))}
    assert len(mixed) == len(infos) == 24  # manual ids replace, not duplicate, pseudo ones
    manual_ids = set(data["ids"][16:])
    for image_id, info in infos.items():
        if image_id in manual_ids:
            assert info["source"] == "manual" and "/masks/" in info["seg_map_path"]
        else:
            assert info["source"] == "pseudo"
            assert info["seg_map_path"] == str(data["labels"] / "labels" / f"{image_id}.png")
    assert mixed.metainfo["classes"][0] == "background" and len(mixed.metainfo["palette"]) == 7
    assert mixed.reduce_zero_label is False and mixed.ignore_index == 255


def test_dataset_errors_name_file_and_id(data, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from plabel_kit import DataError

    init_default_scope("mmseg")
    partial = tmp_path / "partial"
    shutil.copytree(data["labels"], partial)
    missing = data["ids"][3]
    (partial / "labels" / f"{missing}.png").unlink()
    with pytest.raises(DataError, match=f"id '{missing}'.*no label"):
        DATASETS.build(dict(type="PlabelSegDataset", data=str(data["index"]), labels=str(partial)))
    unlabelled = write_index(tmp_path / "nomask" / "index.csv",
                             [{"id": "a", "image": str(data["index"].parent / "images" / f"{missing}.png"),
                               "labels": ""}], ["background", "disc", "square", "triangle", "ring",
                                                "star", "cross"])
    with pytest.raises(DataError, match="id 'a'.*no ground-truth mask"):
        DATASETS.build(dict(type="PlabelSegDataset", data=str(unlabelled)))
    with pytest.raises(DataError, match="no dataset given"):
        DATASETS.build(dict(type="PlabelSegDataset"))


def test_metric_is_plabel_confusion_with_fwiou():
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from plabel_mmseg.metric import FwIoUMetric

    gt = np.array([[0, 0, 1, 1], [0, 0, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]], np.uint8)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(gt.astype(np.int64))[None])
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred.astype(np.int64))[None])
    metric = FwIoUMetric()
    metric.dataset_meta = {"classes": ("background", "a", "b")}
    metric.process({}, [sample.to_dict()])
    scores = metric.compute_metrics(metric.results)
    # by hand: t = (4, 2, 1) GT pixels (255 ignored); IoU = 3/5, 2/3, 0/1
    iou = np.array([3 / 5, 2 / 3, 0.0])
    assert scores["IoU.background"] == pytest.approx(100 * iou[0])
    assert scores["mIoU"] == pytest.approx(100 * iou.mean())
    assert scores["fwIoU"] == pytest.approx(100 * (4 * iou[0] + 2 * iou[1] + 1 * iou[2]) / 7)
    assert scores["aAcc"] == pytest.approx(100 * 5 / 7)


def test_unet_loss_falls_and_beats_untrained(data, trained_unet, tmp_path):
    from plabel_mmseg import api

    curve = losses(trained_unet)
    first, last = curve[min(curve)], curve[max(curve)]
    assert max(curve) == 60 and last < 0.8 * first, curve
    code, output = plabel("segment", "test", "--config", UNET, "--checkpoint", trained_unet / "iter_60.pth",
                          "--data", data["index"], "--json", tmp_path / "trained.json")
    assert code == 0, output
    assert "fwIoU" in output and "mIoU" in output
    trained = json.loads((tmp_path / "trained.json").read_text())
    untrained = api.test(UNET, None, data=data["index"], work=tmp_path / "untrained")
    assert trained["mIoU"] > untrained["mIoU"] + 5
    assert trained["fwIoU"] > untrained["fwIoU"] + 5
    assert sum(trained[f"IoU.{name}"] > 10 for name in ("disc", "square", "triangle", "ring",
                                                        "star", "cross")) >= 1, trained


def test_deeplabv3plus_loss_falls_and_beats_untrained(data, tmp_path):
    from plabel_mmseg import api

    work = tmp_path / "work"
    code, output = plabel("segment", "train", "--config", DEEPLAB, "--data", data["index"],
                          "--labels", data["labels"], "--work", work)
    assert code == 0, output
    curve = losses(work)
    assert curve[max(curve)] < 0.8 * curve[min(curve)], curve
    trained = api.test(DEEPLAB, work / "iter_60.pth", data=data["index"])
    untrained = api.test(DEEPLAB, None, data=data["index"], work=tmp_path / "untrained")
    assert trained["mIoU"] > untrained["mIoU"] and trained["fwIoU"] > untrained["fwIoU"]


def test_predict_writes_label_set_scored_like_test(data, trained_unet, tmp_path):
    from plabel_kit import LabelSet, open_dataset
    from plabel_kit.evaluation import evaluate
    from plabel_mmseg import api

    checkpoint = trained_unet / "iter_60.pth"
    out = tmp_path / "ls_unet"
    code, output = plabel("segment", "predict", "--config", UNET, "--checkpoint", checkpoint,
                          "--data", data["index"], "--out", out, "--scores")
    assert code == 0, output
    labels = LabelSet(out)
    dataset = open_dataset(data["index"])
    assert labels.ids() == sorted(dataset.ids) and labels.producer["type"] == "segmenter"
    scores, keys, stride = labels.read_scores(dataset.ids[0])
    assert stride == 4 and keys.tolist() == list(range(7)) and scores.shape == (7, 16, 16)
    np.testing.assert_allclose(scores.sum(axis=0), 1.0, atol=1e-2)
    # the label set scores as the test stage does: same pipeline, same confusion matrix
    tested = api.test(UNET, checkpoint, data=data["index"], work=tmp_path / "test")
    assert 100 * evaluate(dataset, labels, progress=False)["miou"] == pytest.approx(tested["mIoU"])
    code, output = plabel("segment", "predict", "--config", UNET, "--checkpoint", checkpoint,
                          "--data", data["index"], "--out", out, "--scores")
    assert code == 0 and "24 labels" in output  # resumed: nothing left to do


def test_training_errors_are_one_line(data, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(data["labels"], partial)
    missing = data["ids"][5]
    (partial / "labels" / f"{missing}.png").unlink()
    code, output = plabel("segment", "train", "--config", UNET, "--data", data["index"],
                          "--labels", partial, "--work", tmp_path / "w")
    error = output.strip().splitlines()[-1]
    assert code == 1 and error.startswith("Error:") and f"id '{missing}'" in error
    assert str(partial / "labels" / f"{missing}.png") in error


def test_resume_continues_from_last_checkpoint(data, tmp_path):
    """A 12-iteration run stopped after iteration 8 (last checkpoint: 6) resumes at 7."""
    work = tmp_path / "work"
    common = ["segment", "train", "--config", UNET, "--data", data["index"], "--labels", data["labels"],
              "--work", work, "--iters", 12, "--cfg-options", "default_hooks.checkpoint.interval=3",
              "default_hooks.logger.interval=1"]
    code, output = plabel(*common, "train_cfg.max_iters=8", "default_hooks.checkpoint.save_last=False")
    assert code == 0, output
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_3.pth", "iter_6.pth"]
    assert Path((work / "last_checkpoint").read_text().strip()).name == "iter_6.pth"
    # mmengine names a run's log folder by the second it starts: a fast first run and the
    # resume can share one, and its scalars.json would then hold both runs' iterations
    for run in [p for p in work.iterdir() if (p / "vis_data").is_dir()]:
        shutil.rmtree(run)
    code, output = plabel(*common, "--resume")
    assert code == 0, output
    assert sorted(losses(work)) == list(range(7, 13))  # continued at iteration 7, not 1
    assert (work / "iter_12.pth").is_file()
    assert Path((work / "last_checkpoint").read_text().strip()).name == "iter_12.pth"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_cpu_ddp(data, tmp_path):
    work = tmp_path / "ddp"
    env = dict(os.environ, PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", str(REPO / "tools" / "dist_train.sh"), str(UNET), "2",
                             "--data", str(data["index"]), "--labels", str(data["labels"]),
                             "--work-dir", str(work), "--iters", "4"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = next(work.glob("*/*.log")).read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert (work / "iter_4.pth").is_file()


def test_configs_build_with_local_weights_only():
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from plabel_mmseg import MMSEG_MODULES, mmseg_custom_imports

    init_default_scope("mmseg")
    assert {p.name for p in ALL_CONFIGS} >= {
        "deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py", "unet-vgg16_4xb4-20k_plabel-512x512.py",
        "unet-r50_4xb4-20k_plabel-512x512.py", UNET.name, DEEPLAB.name, "unet-r50_tiny-cpu-64x64.py"}
    assert mmseg_custom_imports() == MMSEG_MODULES
    for path in ALL_CONFIGS:
        cfg = Config.fromfile(str(path))
        assert cfg.custom_imports["imports"] == MMSEG_MODULES, path
        assert "open-mmlab://" not in cfg.pretty_text and "http" not in cfg.pretty_text, path
        assert cfg.model.get("pretrained") is None and cfg.train_dataloader.dataset.type == "PlabelSegDataset"
        model = MODELS.build(cfg.model).eval()
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, 64, 64), mode="tensor")
        assert logits.shape[:2] == (1, cfg.model.decode_head.num_classes), path


def test_encoders_take_torchvision_weights(tmp_path):
    """Parameter names and counts of the full encoders are torchvision's vgg16.features and
    resnet50 (without fc), so --pretrained loads their ImageNet files; the path is local."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from plabel_mmseg import config as C

    init_default_scope("mmseg")
    vgg = MODELS.build(Config.fromfile(str(CONFIGS / "unet-vgg16_4xb4-20k_plabel-512x512.py")).model.backbone)
    conv_indices = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert set(vgg.state_dict()) == {f"features.{i}.{w}" for i in conv_indices for w in ("weight", "bias")}
    assert sum(p.numel() for p in vgg.parameters()) == 14_714_688
    resnet = MODELS.build(Config.fromfile(str(CONFIGS / "unet-r50_4xb4-20k_plabel-512x512.py")).model.backbone)
    assert sum(p.numel() for p in resnet.parameters()) == 23_508_032
    assert {"conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight", "layer1.0.downsample.0.weight"} \
        <= set(resnet.state_dict())

    cfg = Config.fromfile(str(UNET))
    donor = MODELS.build(cfg.model.backbone)
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in donor.state_dict().items()}
    torch.save({"state_dict": {**weights, "classifier.0.weight": torch.zeros(2, 2)}}, tmp_path / "vgg.pth")
    C.set_pretrained(cfg, tmp_path / "vgg.pth")
    model = MODELS.build(cfg.model)
    model.init_weights()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_bench_measures_a_config_on_cpu():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_segmenter", REPO / "tools" / "bench_segmenter.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = type("Args", (), dict(batch=[2], crop=(64, 64), test_size=(64, 64), iters=1, warmup=1, amp=False))
    rows = bench.measure(str(UNET), args, torch.device("cpu"))
    assert rows[0]["batch"] == 2 and rows[0]["s_per_iter"] > 0 and rows[0]["fps"] > 0


def test_plugin_registers_in_mmseg_registries():
    code, output = plabel("plugins", "--json")
    mmseg_plugin = next(p for p in json.loads(output) if p["name"] == "mmseg")
    assert {"mmseg_custom_imports", "register_commands"} <= set(mmseg_plugin["hooks"])
    assert mmseg_plugin["components"] == {"label_source": ["segmenter"]}
    from mmseg.registry import DATASETS, METRICS, MODELS

    from plabel_mmseg.api import import_mmseg_modules

    import_mmseg_modules()
    assert DATASETS.get("PlabelSegDataset").__module__ == "plabel_mmseg.dataset"
    assert METRICS.get("FwIoUMetric").__module__ == "plabel_mmseg.metric"
    for name in ("VGGEncoder", "ResNetEncoder", "UNetHead"):
        assert MODELS.get(name) is not None


def test_predict_refuses_a_model_of_other_classes(trained_unet, voc_csv, tmp_path):
    code, output = plabel("segment", "predict", "--config", UNET, "--checkpoint", trained_unet / "iter_60.pth",
                          "--data", voc_csv, "--out", tmp_path / "ls")
    assert code == 1 and "trained for classes" in output and "iter_60.pth" in output
