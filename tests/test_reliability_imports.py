"""Hardening of ``plabel import`` (issue 14): no code runs from a score file, scores are
checked like any other input, and odd files end in one line naming file and id."""
import io
import json
import os

import numpy as np
import pytest
import torch

from plabel_kit import LabelSet, open_dataset
from tests.conftest import run_plabel

TAGS = {"t0": (1,), "t1": (2,), "t2": (1, 2)}  # the tiny fixture's image tags (1 cat, 2 dog)


def _planes(mask, ids, on=0.9, off=0.05):
    return np.stack([np.where(mask == c, on, off) for c in ids]).astype(np.float32)


def _irn(sample):
    return {"keys": np.array(sample.classes) - 1, "high_res": _planes(sample.mask, sample.classes)}


VALID = {  # a good file of each format
    "irn": _irn,
    "puzzle": lambda s: {"keys": np.array(s.classes) - 1, "hr_cam": _planes(s.mask, s.classes)},
    "psa": lambda s: {c - 1: _planes(s.mask, [c])[0] for c in s.classes},
}


def _write(folder, index, make, **override):
    """One ``<id>.npy`` per image of ``index``; ``override`` maps ids to other contents."""
    folder.mkdir(exist_ok=True)
    for s in open_dataset(index):
        np.save(folder / f"{s.id}.npy", override[s.id] if s.id in override else make(s),
                allow_pickle=True)
    return folder


def _import(fmt, src, index, out, *extra):
    return run_plabel("import", fmt, src, "--data", index, "--out", out, *extra)


def _one_line_error(result, image_id):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"{image_id}.npy" in lines[0] and f"id '{image_id}'" in lines[0], lines[0]
    return lines[0]


# ---- no code runs from a data file -----------------------------------------------------

class _System:
    """Unpickles as ``os.system(command)``: the classic pickle attack."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _TorchStorageBytes:
    """Pickles as torch does a tensor storage, ``torch.storage._load_from_bytes(blob)``, with a
    blob whose own pickle calls ``os.system`` (``_load_from_bytes`` loads it with
    ``weights_only=False``)."""

    def __init__(self, command):
        buffer = io.BytesIO()
        torch.save(_System(command), buffer)
        self.blob = buffer.getvalue()

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.blob,)


@pytest.mark.parametrize("make_evil", [
    pytest.param(lambda s, cmd: _System(cmd), id="bare"),
    # a valid IRN dict that also holds the payload imports with exit 0 on plain np.load
    pytest.param(lambda s, cmd: {**_irn(s), "extra": _System(cmd)}, id="inside-valid-dict"),
    pytest.param(lambda s, cmd: {**_irn(s), "cam": _TorchStorageBytes(cmd)}, id="inside-torch-storage"),
])
def test_pickle_calling_os_system_is_refused_not_run(make_evil, tiny, tmp_path):
    marker = tmp_path / "MARKER"
    dataset = open_dataset(tiny)
    evil = make_evil(dataset[1], f"touch {marker}")
    src = _write(tmp_path / "src", tiny, _irn, t1=evil)
    result = _import("irn", src, tiny, tmp_path / "ls")
    line = _one_line_error(result, "t1")
    assert "system" in line
    assert not marker.exists(), "the pickle's command ran"
    manifest = json.loads((tmp_path / "ls" / "manifest.json").read_text())
    assert manifest["complete"] is False


def test_trust_pickle_reads_a_benign_file(tiny, tmp_path):
    src = _write(tmp_path / "src", tiny, lambda s: {**_irn(s), "cam": torch.zeros(len(s.classes), 2, 2)})
    result = _import("irn", src, tiny, tmp_path / "ls", "--trust-pickle")
    assert result.returncode == 0, result.stderr
    assert "imported 3 of 3" in result.stdout
    help_text = " ".join(run_plabel("import", "--help").stdout.split())
    assert "--trust-pickle" in help_text and "executes code" in help_text


@pytest.mark.parametrize("fmt,make", [
    # IRN as make_cam.py saves it: keys a LongTensor, cam a tensor, high_res numpy
    ("irn", lambda s: {"keys": torch.tensor(s.classes) - 1, "cam": torch.zeros(len(s.classes), 2, 2),
                       "high_res": _planes(s.mask, s.classes)}),
    ("puzzle", lambda s: {"keys": np.array(s.classes) - 1, "cam": torch.zeros(1),
                          "hr_cam": torch.from_numpy(_planes(s.mask, s.classes)).requires_grad_()}),
    ("puzzle", lambda s: {"keys": np.array((0, *s.classes)),
                          "rw": _planes(s.mask, (0, *s.classes), on=0.8, off=0.1)}),
    # PSA keys as numpy ints, maps as float64
    ("psa", lambda s: {np.int64(c - 1): _planes(s.mask, [c])[0].astype(np.float64) for c in s.classes}),
])
def test_valid_files_import_without_unrestricted_unpickling(fmt, make, tiny, tmp_path, cli_run,
                                                            monkeypatch):
    src = _write(tmp_path / "src", tiny, make)
    real_load = np.load

    def load(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "np.load(allow_pickle=True) without --trust-pickle"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    result = cli_run("import", fmt, src, "--data", tiny, "--out", tmp_path / "ls")
    assert result.exit_code == 0, result.output
    ls = LabelSet(tmp_path / "ls")
    for s in open_dataset(tiny):
        assert np.array_equal(ls.read(s.id).label, s.mask)


# ---- scores are checked ----------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, "all-nan"])
def test_non_finite_scores_refused(value, tiny, tmp_path):
    bad = _irn(open_dataset(tiny)[2])
    if value == "all-nan":
        bad["high_res"][:] = np.nan
    else:
        bad["high_res"][1, 2, 3] = value
    src = _write(tmp_path / "src", tiny, _irn, t2=bad)
    line = _one_line_error(_import("irn", src, tiny, tmp_path / "ls"), "t2")
    assert "NaN or infinite" in line


def _with_untagged_dog(s):
    """cat and dog planes for every image, the dog plane high everywhere."""
    return {"keys": np.array([0, 1]), "high_res": np.stack([_planes(s.mask, [1])[0],
                                                            np.full(s.mask.shape, 0.5, np.float32)])}


def test_untagged_planes_dropped_with_a_counted_warning(tiny, tmp_path):
    src = _write(tmp_path / "src", tiny, _irn, t0=_with_untagged_dog(open_dataset(tiny)[0]),
                 t1={"keys": np.array([0, 1]), "high_res": np.zeros((2, 6, 8), np.float32)})
    result = _import("irn", src, tiny, tmp_path / "ls")
    assert result.returncode == 0, result.stderr
    assert ("warning: dropped 2 score plane(s) of untagged classes in 2 image(s), e.g. id 't0'"
            in result.stderr), result.stderr
    ls = LabelSet(tmp_path / "ls")
    t0 = ls.read("t0")
    assert t0.keys.tolist() == [1]
    assert np.array_equal(t0.label, open_dataset(tiny)[0].mask)


def test_strict_refuses_untagged_planes(tiny, tmp_path):
    src = _write(tmp_path / "src", tiny, _irn, t0=_with_untagged_dog(open_dataset(tiny)[0]))
    line = _one_line_error(_import("irn", src, tiny, tmp_path / "ls", "--strict"), "t0")
    assert "class 2 (dog)" in line and "not tagged" in line


def test_background_plane_is_never_untagged(tiny, tmp_path):
    """A PNOC random-walk file: key 0 is background, kept under --strict."""
    src = _write(tmp_path / "src", tiny, lambda s: {
        "keys": np.array((0, *s.classes)), "rw": _planes(s.mask, (0, *s.classes), on=0.8, off=0.1)})
    result = _import("puzzle", src, tiny, tmp_path / "ls", "--strict")
    assert result.returncode == 0, result.stderr
    # (fails on the old code only through --strict not existing; the warning must not show)
    assert "warning" not in result.stderr


# ---- odd files: one line, no traceback -------------------------------------------------

@pytest.mark.parametrize("fmt,bad,says", [
    ("psa", {0: np.zeros(8, np.float32)}, "1-D"),
    ("psa", {"cat": np.zeros((6, 8), np.float32)}, "not an integer"),
    ("irn", {"high_res": np.zeros((1, 6, 8), np.float32)}, "'keys'"),
])
def test_odd_files_are_one_line_errors(fmt, bad, says, tiny, tmp_path):
    src = _write(tmp_path / "src", tiny, VALID[fmt], t1=bad)
    line = _one_line_error(_import(fmt, src, tiny, tmp_path / "ls"), "t1")
    assert says in line


@pytest.mark.parametrize("fmt,bad,says", [
    ("irn", {"keys": np.array([0.5]), "high_res": np.zeros((1, 6, 8))}, "integer"),
    ("irn", {"keys": np.array(["cat"]), "high_res": np.zeros((1, 6, 8))}, "integer"),
    ("irn", {"keys": np.array([0]), "high_res": np.zeros((1, 1, 6, 8))}, "4-D"),
    ("irn", {"keys": np.array([0]), "high_res": np.float32(0.5)}, "0-D"),
    ("irn", {"keys": np.array([0]), "high_res": "scores"}, "numbers"),
    ("irn", {"keys": np.array([0]), "high_res": {"a": 1}}, "numbers"),
    ("irn", {"keys": np.array([0]), "high_res": [[1, 2], [3]]}, "not an array"),
    ("irn", {"keys": np.array([0]), "high_res": np.zeros((1, 0, 0))}, "empty"),
    ("irn", {"keys": np.array([0]), "cam": torch.zeros(1, 6, 8, 1)}, "4-D"),
    ("puzzle", {"keys": np.array([0, 1]), "hr_cam": torch.zeros(2)}, "1-D"),
    ("psa", {0: np.zeros((6, 8)), 1: np.zeros((3, 4))}, "different sizes"),
    ("psa", {0: np.zeros((6, 8)), 1.5: np.zeros((6, 8))}, "not an integer"),
    ("psa", {0: "map"}, "numbers"),
])
def test_more_odd_files_are_data_errors(fmt, bad, says, tiny, tmp_path, cli_run):
    src = _write(tmp_path / "src", tiny, VALID[fmt], t1=bad)
    result = cli_run("import", fmt, src, "--data", tiny, "--out", tmp_path / "ls")
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "t1.npy" in line and "id 't1'" in line and says in line, line
