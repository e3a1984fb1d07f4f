import json

import numpy as np
import pytest
from PIL import Image

from plabel_kit.metrics import confusion_matrix, scores_from_confusion
from tests.conftest import VOC_IDS, VOC_SAMPLES


def test_hand_computed_small_case():
    gt = np.array([[0, 0, 0, 1, 255], [0, 0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 255, 0]], np.uint8)
    # gt 0: five right, one called 1; gt 1: one right, one unlabelled, one called 0; one ignored
    cm = confusion_matrix(gt, pred, 2)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[5, 1, 0], [1, 1, 1]]
    s = scores_from_confusion(cm)
    # IoU_i = n_ii / (t_i + sum_j n_ji - n_ii): t0 = 6, t1 = 3, predicted 0: 6, predicted 1: 2
    assert s["iou"][0] == pytest.approx(5 / (6 + 6 - 5))
    assert s["iou"][1] == pytest.approx(1 / (3 + 2 - 1))
    assert s["miou"] == pytest.approx((5 / 7 + 1 / 4) / 2)
    # seed 000: fwIoU = (sum_k t_k)^-1 sum_i t_i IoU_i
    assert s["fwiou"] == pytest.approx((6 * 5 / 7 + 3 * 1 / 4) / 9)
    assert s["precision"].tolist() == pytest.approx([5 / 6, 1 / 2])
    assert s["recall"].tolist() == pytest.approx([5 / 6, 1 / 3])
    assert s["pixel_accuracy"] == pytest.approx(6 / 9)


def test_absent_classes_do_not_count():
    gt = np.zeros((4, 4), np.uint8)
    s = scores_from_confusion(confusion_matrix(gt, gt, 5))
    assert s["miou"] == 1.0 and np.isnan(s["iou"][1:]).all()


def test_out_of_range_prediction_rejected():
    with pytest.raises(ValueError, match="class id 7"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8), 3)


def _voc_masks():
    return {i: np.asarray(Image.open(VOC_SAMPLES / f"{i}_5labels.png")) for i in VOC_IDS}


def test_voc_samples_perfect_and_known_confusion():
    masks = _voc_masks()
    total = np.zeros((21, 22), np.int64)
    for m in masks.values():
        total += confusion_matrix(m, m, 21)
    s = scores_from_confusion(total)
    present = sorted({int(c) for m in masks.values() for c in np.unique(m)})
    assert s["miou"] == 1.0 and s["fwiou"] == 1.0
    assert [i for i in range(21) if not np.isnan(s["iou"][i])] == present

    # call every person (15) pixel of one image background: known IoUs from pixel counts
    victim = "2007_000129"
    total = np.zeros((21, 22), np.int64)
    for i, m in masks.items():
        pred = m.copy()
        if i == victim:
            pred[m == 15] = 0
        total += confusion_matrix(m, pred, 21)
    s = scores_from_confusion(total)
    person = sum(int((m == 15).sum()) for m in masks.values())
    lost = int((masks[victim] == 15).sum())
    background = sum(int((m == 0).sum()) for m in masks.values())
    assert s["iou"][15] == pytest.approx((person - lost) / person)
    assert s["iou"][0] == pytest.approx(background / (background + lost))
    assert s["iou"][2] == 1.0


def test_evaluate_cli_on_voc_samples(voc_csv, tmp_path, cli_run):
    out = tmp_path / "gt"
    assert cli_run("source", "ground_truth", "--data", voc_csv, "--out", out).exit_code == 0
    result = cli_run("evaluate", "--data", voc_csv, "--labels", out, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "100.00" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["miou"] == 1.0 and report["images"] == 7
    person = next(c for c in report["classes"] if c["name"] == "person")
    assert person["iou"] == 1.0 and person["gt_pixels"] > 0


def test_sweep_finds_the_threshold(tiny, tmp_path, cli_run):
    """Scores equal to 0.5 on the class pixels and 0.25 elsewhere (exact in float16):
    thresholds below 0.25 label everything foreground, 0.25..0.45 are perfect, from 0.50
    all is background."""
    from plabel_kit import LabelSetWriter, PseudoLabel, open_dataset

    dataset = open_dataset(tiny)
    writer = LabelSetWriter(tmp_path / "ls", {"type": "test"}, dataset.classes, dataset.palette)
    for s in dataset:
        keys = np.array(s.classes)
        scores = np.stack([np.where(s.mask == k, 0.5, 0.25) for k in keys]).astype(np.float32)
        writer.write(s.id, PseudoLabel(np.zeros(s.mask.shape, np.uint8), scores, keys))
    writer.finish()
    result = cli_run("evaluate", "--data", tiny, "--labels", tmp_path / "ls", "--sweep",
                     "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "r.json").read_text())["sweep"]
    assert sweep["best_threshold"] == 0.25 and sweep["best_miou"] == 1.0
    assert sweep["miou"][-1] < 1.0 and sweep["miou"][0] < 1.0
    assert "best background threshold 0.25" in result.output


def test_evaluate_warns_when_scored_on_the_selection_subset(tiny, tmp_path, cli_run):
    from plabel_kit import LabelSetWriter, PseudoLabel, open_dataset

    dataset = open_dataset(tiny)
    writer = LabelSetWriter(tmp_path / "ls", {"type": "test"}, dataset.classes, dataset.palette)
    for s in dataset:
        writer.write(s.id, PseudoLabel(s.mask))
    writer.finish({"summary": {"labelled": {"ids": ["t0", "t2", "elsewhere"]}}})
    result = cli_run("evaluate", "--data", tiny, "--labels", tmp_path / "ls", "--json", tmp_path / "r.json")
    assert "warning: 2 evaluated image(s) were also used to fit" in " ".join(result.output.split())
    assert json.loads((tmp_path / "r.json").read_text())["scored_on_selection_images"] == 2
