import shutil

import numpy as np
import pytest
from PIL import Image

from plabel_kit import DataError, open_dataset
from plabel_kit.datasets import VOC_CLASSES, read_voc
from tests.conftest import VOC_IDS, VOC_SAMPLES, write_index


def test_csv_index_reads_tags_and_metadata(tiny):
    d = open_dataset(tiny)
    assert d.classes == ["background", "cat", "dog"]
    assert [s.classes for s in d] == [(1,), (2,), (1, 2)]
    assert d["t2"].image.shape == (6, 8, 3) and d["t2"].mask.shape == (6, 8)


def test_voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for image_id in VOC_IDS[:4]:
        Image.open(VOC_SAMPLES / f"{image_id}_0img.png").save(root / "JPEGImages" / f"{image_id}.jpg")
        shutil.copy(VOC_SAMPLES / f"{image_id}_5labels.png", root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_IDS[:4]) + "\n")
    d = open_dataset(root, "train")
    assert d.classes == list(VOC_CLASSES) and len(d) == 4
    assert d["2007_000129"].classes == (2, 15)  # bicycle, person from the mask
    with pytest.raises(DataError, match="split 'val' not found"):
        read_voc(root, "val")


def _bad_index(tmp_path, **override):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "img/a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "img/a_m.png")
    row = {"id": "a", "image": "img/a.png", "labels": "cat", "mask": "img/a_m.png"}
    row.update(override)
    return write_index(tmp_path / "index.csv", [row], ["background", "cat"])


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_image(tmp_path, cli_run):
    index = _bad_index(tmp_path, image="img/nope.png")
    _one_line_error(cli_run("check", "--data", index), "nope.png", "'a'", "index.csv:2")


def test_corrupt_png(tmp_path, cli_run):
    index = _bad_index(tmp_path)
    (tmp_path / "img/a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _one_line_error(cli_run("check", "--data", index), "a.png", "'a'", "cannot decode")
    _one_line_error(cli_run("source", "background", "--data", index, "--out", tmp_path / "ls"),
                    "a.png", "'a'")
    assert not list((tmp_path / "ls" / "labels").iterdir())


def test_unknown_class_name(tmp_path, cli_run):
    index = _bad_index(tmp_path, labels="cat;dgo")
    _one_line_error(cli_run("check", "--data", index), "'dgo'", "classes.json", "'a'")


def test_mask_of_wrong_size(tmp_path, cli_run):
    index = _bad_index(tmp_path)
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "img/a_m.png")
    _one_line_error(cli_run("check", "--data", index), "a_m.png", "'a'", "5x7")
    (tmp_path / "ls").mkdir()
    _one_line_error(cli_run("source", "ground_truth", "--data", index, "--out", tmp_path / "ls"),
                    "a_m.png", "'a'")


def test_duplicate_id(tmp_path, cli_run):
    index = _bad_index(tmp_path)
    with index.open("a") as handle:
        handle.write("a,img/a.png,cat,img/a_m.png,,\n")
    _one_line_error(cli_run("evaluate", "--data", index, "--labels", tmp_path), "duplicate id",
                    "'a'", "index.csv:3", "line 2")


def test_mask_with_unknown_class_id(tmp_path, cli_run):
    index = _bad_index(tmp_path)
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(tmp_path / "img/a_m.png")
    _one_line_error(cli_run("check", "--data", index), "class id 9", "'a'")


def test_label_of_wrong_size_in_evaluate(tiny, tmp_path, cli_run):
    out = tmp_path / "ls"
    assert cli_run("source", "ground_truth", "--data", tiny, "--out", out).exit_code == 0
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(out / "labels" / "t1.png")
    _one_line_error(cli_run("evaluate", "--data", tiny, "--labels", out), "t1.png", "'t1'")


def test_voc_split_ids_cannot_lead_outside_the_root(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("../../secret\n")
    with pytest.raises(DataError, match=r"train.txt: id '../../secret': id must start"):
        open_dataset(root)
    (root / "ImageSets/Segmentation/train.txt").write_bytes("2007_000129\ncaf\u00e9\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"train.txt: not UTF-8 text \(byte 0xe9 at line 2\)"):
        open_dataset(root)


def test_validate_reports_nothing_for_plain_data(tiny):
    report = open_dataset(tiny).validate()
    assert report.lines() == [] and report.converted == {} and report.outside == []
