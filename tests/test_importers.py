"""Readers for IRN, Puzzle-CAM/PNOC/CSRM and PSA score files (formats in ANCHORS.md)."""
import json

import numpy as np
import pytest
import torch

from plabel_kit import LabelSet, open_dataset


def _planes(mask, ids, on=0.9, off=0.05):
    return np.stack([np.where(mask == c, on, off) for c in ids]).astype(np.float32)


def _write(folder, dataset, make):
    folder.mkdir()
    for s in dataset:
        np.save(folder / f"{s.id}.npy", make(s))


def _evaluate(cli_run, data, ls, tmp_path):
    result = cli_run("evaluate", "--data", data, "--labels", ls, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("fmt,make", [
    # IRN: 0-based foreground keys, full-resolution high_res, a torch tensor for the strided cam
    ("irn", lambda s: {"keys": np.array(s.classes) - 1, "cam": torch.zeros(len(s.classes), 2, 2),
                       "high_res": _planes(s.mask, s.classes)}),
    # Puzzle-CAM: 0-based foreground keys, hr_cam
    ("puzzle", lambda s: {"keys": np.array(s.classes) - 1, "cam": torch.zeros(1),
                          "hr_cam": torch.from_numpy(_planes(s.mask, s.classes))}),
    # PNOC/CSRM random walk: background plane first, keys [0, ids...]
    ("puzzle", lambda s: {"keys": np.array((0, *s.classes)),
                          "rw": _planes(s.mask, (0, *s.classes), on=0.8, off=0.1)}),
    # PSA: {0-based class index: map}
    ("psa", lambda s: {c - 1: _planes(s.mask, [c])[0] for c in s.classes}),
])
def test_import_formats_round_trip_on_voc_samples(fmt, make, voc_csv, tmp_path, cli_run):
    dataset = open_dataset(voc_csv)
    _write(tmp_path / "src", dataset, make)
    result = cli_run("import", fmt, tmp_path / "src", "--data", voc_csv, "--out", tmp_path / "ls")
    assert result.exit_code == 0, result.output
    assert "imported 7 of 7" in result.output
    report = _evaluate(cli_run, voc_csv, tmp_path / "ls", tmp_path)
    assert report["miou"] == 1.0
    ls = LabelSet(tmp_path / "ls")
    assert ls.producer["type"] == fmt and ls.manifest["counts"]["scores"] == 7
    sample = dataset[0]
    keys = ls.read(sample.id).keys.tolist()
    assert [k for k in keys if k] == list(sample.classes)


def test_background_first_cam_keys_resolved_by_image_tags(voc_csv, tmp_path, cli_run):
    """A PNOC-style cam file whose keys put background 0 first, planes including it."""
    dataset = open_dataset(voc_csv)
    _write(tmp_path / "src", dataset, lambda s: {
        "keys": np.array((0, *s.classes)), "hr_cam": _planes(s.mask, (0, *s.classes), on=0.8, off=0.1)})
    assert cli_run("import", "puzzle", tmp_path / "src", "--data", voc_csv, "--out",
                   tmp_path / "ls").exit_code == 0
    assert _evaluate(cli_run, voc_csv, tmp_path / "ls", tmp_path)["miou"] == 1.0


def test_strided_irn_cam_only(voc_csv, tmp_path, cli_run):
    """Only the stride-4 ``cam`` field: scores keep stride 4, labels are upsampled."""
    dataset = open_dataset(voc_csv)

    def make(s):
        small = _planes(s.mask, s.classes)[:, ::4, ::4]
        return {"keys": np.array(s.classes) - 1, "cam": torch.from_numpy(np.ascontiguousarray(small))}

    _write(tmp_path / "src", dataset, make)
    assert cli_run("import", "irn", tmp_path / "src", "--data", voc_csv, "--out", tmp_path / "ls").exit_code == 0
    assert LabelSet(tmp_path / "ls").read(dataset[0].id).stride == 4
    assert _evaluate(cli_run, voc_csv, tmp_path / "ls", tmp_path)["miou"] > 0.85


def test_bad_file_named_by_path_and_id(voc_csv, tmp_path, cli_run):
    dataset = open_dataset(voc_csv)
    _write(tmp_path / "src", dataset, lambda s: {"keys": np.array(s.classes) - 1,
                                                  "high_res": _planes(s.mask, s.classes)})
    victim = dataset[2].id
    np.save(tmp_path / "src" / f"{victim}.npy", {"keys": np.array([0]), "nothing": 1})
    result = cli_run("import", "irn", tmp_path / "src", "--data", voc_csv, "--out", tmp_path / "ls")
    assert result.exit_code == 1
    assert f"{victim}.npy" in result.output and f"'{victim}'" in result.output
    assert len(result.output.strip().splitlines()) == 1
