"""Sequence merge on video: the synthetic video generator, one sequence per clip
(``--by subject``), the flow chain (equal to the plain flow chain, labels kept where the
trust test fails), ``align=auto``, and the same checks on camvid_small when it is there."""
import json

import cv2
import numpy as np
import pytest

from plabel_kit import LabelSet, open_dataset
from plabel_kit.evaluation import evaluate
from plabel_kit.synth import VIDEO_CLASSES, make_evolving, make_video
from plabel_seqmerge.alignment import FlowTracker
from plabel_seqmerge.flow import carry_step, step_back
from plabel_seqmerge.sequencing import split_at_gaps
from tests.conftest import SHARED
from tests.test_synth import all_files, read_index

CAMVID = SHARED / "data" / "camvid_small" / "index.csv"


def _invoke(*args):
    from click.testing import CliRunner

    from plabel_kit.cli import _load_plugin_commands, cli

    _load_plugin_commands()
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _ok(*args):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


# ---- the generator -----------------------------------------------------------------------

def test_synth_video_deterministic_prefix_and_format(tmp_path):
    first = make_video(tmp_path / "a", clips=2, frames=6, size=96, seed=4, progress=False).parent
    again = make_video(tmp_path / "b", clips=2, frames=6, size=96, seed=4, progress=False).parent
    longer = make_video(tmp_path / "c", clips=3, frames=9, size=96, seed=4, progress=False).parent
    other = make_video(tmp_path / "d", clips=2, frames=6, size=96, seed=5, progress=False).parent
    files = all_files(first)
    assert files == all_files(again)
    longer_files = all_files(longer)
    assert all(longer_files[rel] == data for rel, data in files.items() if rel != "index.csv")
    assert files["images/clip000_f0000.png"] != all_files(other)["images/clip000_f0000.png"]
    rows = read_index(first / "index.csv")
    assert (first / "index.csv").read_text().splitlines()[0] == "id,image,labels,mask,subject,time,frame"
    assert [r["id"] for r in rows[:2]] == ["clip000_f0000", "clip000_f0001"] and len(rows) == 12
    assert {r["subject"] for r in rows} == {"clip000", "clip001"}
    assert rows[1]["time"] == "2024-05-01T00:00:00.040" and rows[1]["frame"] == "1"
    dataset = open_dataset(first / "index.csv")
    assert dataset.classes == list(VIDEO_CLASSES)
    for sample in dataset:
        assert sample.image.shape == (54, 96, 3) and sample.mask.shape == (54, 96)
        assert sample.mask.max() < len(VIDEO_CLASSES)
        assert sample.classes == tuple(int(c) for c in np.unique(sample.mask) if c)


def test_synth_video_moves_objects_and_camera(tmp_path):
    dataset = open_dataset(make_video(tmp_path, clips=4, frames=12, size=128, seed=0, progress=False))
    object_moves, camera_moves = [], []
    for clip in range(4):
        first, last = dataset[f"clip{clip:03d}_f0000"], dataset[f"clip{clip:03d}_f0011"]
        assert first.classes  # every clip has an object
        object_moves.append(((first.mask != 0) != (last.mask != 0)).mean())
        # background far from any object in both frames: the camera pans, so it changes
        quiet = cv2.erode(((first.mask == 0) & (last.mask == 0)).astype(np.uint8), np.ones((9, 9))) > 0
        camera_moves.append(np.abs(first.image.astype(float) - last.image.astype(float))[quiet].mean())
    assert min(object_moves) > 0.01  # objects move, turn, bend
    assert min(camera_moves) > 3  # grey levels: more than sensor noise


# ---- sequences by subject ----------------------------------------------------------------

def test_by_subject_gives_one_sequence_per_clip(tmp_path):
    index = make_video(tmp_path / "v", clips=3, frames=7, size=96, seed=1, progress=False)
    result = _ok("sequence", "build", "--data", index, "--by", "subject", "--out", tmp_path / "seq.json")
    assert "3 sequences over 21 of 21 images" in result.output
    document = json.loads((tmp_path / "seq.json").read_text())
    assert [s["id"] for s in document["sequences"]] == ["clip000-0001", "clip001-0001", "clip002-0001"]
    for clip, sequence in enumerate(document["sequences"]):
        assert sequence["images"] == [f"clip{clip:03d}_f{t:04d}" for t in range(7)]  # time order
        assert sequence["representative"] == f"clip{clip:03d}_f0003"  # the middle frame
    assert document["unsequenced"] == [] and document["params"] == {"by": "subject", "split_gap": 0.0}
    _ok("sequence", "tasks", tmp_path / "seq.json", "--data", index, "--out", tmp_path / "tasks")
    tasks = (tmp_path / "tasks" / "tasks.csv").read_text().splitlines()[1:]
    assert [t.split(",")[1] for t in tasks] == [f"clip{c:03d}_f0003" for c in range(3)]


def test_split_at_gaps():
    times = np.array([0, 30, 60, 90, 2040, 2070, 2072, 2074])
    assert [r.tolist() for r in split_at_gaps(times, 10)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r.tolist() for r in split_at_gaps(times, 0)] == [list(range(8))]
    assert [r.tolist() for r in split_at_gaps(np.array([5.0, 5.0, 5.0]), 10)] == [[0, 1, 2]]


# ---- the flow chain ----------------------------------------------------------------------

def _texture(size=160, seed=0):
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (np.stack([noise, noise[::-1], noise[:, ::-1]], axis=-1) * 255).astype(np.uint8)


def _shift(image, dx, dy, nearest=False):
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=flags, borderMode=cv2.BORDER_REFLECT)


def test_the_carried_label_survives_an_untrusted_pixel():
    """A patch of fresh noise flashes up in frame 2 over the labelled square: the flow
    cannot be trusted there. The chain still gives those pixels a carried label, never 255
    (which the source used to fill with the homography's or the copy's label)."""
    base = _texture()
    mask = np.zeros((160, 160), np.uint8)
    mask[40:120, 40:120] = 2
    frames = [_shift(base, 2 * k, k) for k in range(4)]
    patch = (np.random.default_rng(7).random((30, 30, 3)) * 255).astype(np.uint8)
    frames[2] = frames[2].copy()
    frames[2][65:95, 65:95] = patch  # well inside the square
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    _, consistent = step_back(grey[1], grey[2])
    untrusted = ~consistent[65:95, 65:95]
    assert untrusted.sum() > 100  # the test's premise: the trust test fails on part of the patch
    for check in (False, True):
        tracker = FlowTracker(lambda _, position: frames[position], flow_size=640, check=check)
        one, two = tracker.carry("s", 0, 1, mask), tracker.carry("s", 0, 2, mask)
        assert (two[65:95, 65:95] == 2).all()  # the square's label survives on the patch
        if check:  # kept from frame 1 at the same position
            assert (two[65:95, 65:95][untrusted] == one[65:95, 65:95][untrusted]).all()
        three = tracker.carry("s", 0, 3, mask)
        truth = _shift(mask, 6, 3, nearest=True)
        assert (three != 255).all() and (three == truth).mean() > 0.97
        assert tracker.breaks() == {}


def test_carry_step_reads_the_flow_and_makes_entering_content_background():
    label = np.zeros((4, 6), np.uint8)
    label[1:3, 2:4] = 3
    ys, xs = np.mgrid[0:4, 0:6].astype(np.float32)
    coords = np.stack([xs - 1, ys], axis=-1)  # everything moved one pixel right
    moved = carry_step(label, coords)
    assert (moved[1:3, 3:5] == 3).all() and moved.sum() == 3 * 4
    assert (moved[:, 0] == 0).all()  # column 0 came from outside the frame
    keep = np.zeros((4, 6), bool)
    keep[1, 2] = True
    assert carry_step(label, coords, keep)[1, 2] == label[1, 2] == 3


def _plain_chain(dataset, sequence) -> dict:
    """The issue's reference: DIS (medium) from each frame to the previous one, the previous
    frame's mask remapped with it (nearest, outside = background), both ways from the annotated frame."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    images = sequence["images"]
    anchor = images.index(sequence["representative"])
    out = {images[anchor]: dataset[images[anchor]].mask}
    for direction in (1, -1):
        label = out[images[anchor]]
        for k in range(anchor + direction, len(images) if direction == 1 else -1, direction):
            previous = cv2.cvtColor(dataset[images[k - direction]].image, cv2.COLOR_RGB2GRAY)
            current = cv2.cvtColor(dataset[images[k]].image, cv2.COLOR_RGB2GRAY)
            flow = dis.calc(current, previous, None)
            ys, xs = np.mgrid[0:current.shape[0], 0:current.shape[1]].astype(np.float32)
            label = cv2.remap(label, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[images[k]] = label
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """4 synthetic clips of 16 frames, one sequence per clip, the middle frames annotated, a
    CAM stand-in (all background: the merge cannot change the carried mask)."""
    root = tmp_path_factory.mktemp("video")
    index = make_video(root / "data", clips=4, frames=16, size=128, seed=2, progress=False)
    return {"root": root, **_annotated(index, root, "--by", "subject")}


def _annotated(index, root, *build_options) -> dict:
    """Sequences of ``index`` (``plabel sequence build`` with ``build_options``), their tasks'
    ground truth as annotations and an all-background CAM stand-in, under ``root``: the
    paths ``_seqmerge`` takes."""
    _ok("sequence", "build", "--data", index, *build_options, "--out", root / "seq.json")
    _ok("sequence", "tasks", root / "seq.json", "--data", index, "--out", root / "tasks")
    _ok("sequence", "simulate-annotations", root / "tasks", "--data", index, "--out", root / "ann")
    _ok("source", "background", "--data", index, "--out", root / "cam")
    return {"index": index, "seq": root / "seq.json", "ann": root / "ann", "cam": root / "cam"}


def _seqmerge(p, out, *overrides):
    args = ["source", "seqmerge", "--data", p["index"], "--sequences", p["seq"], "--annotations", p["ann"],
            "--cam", p["cam"], "--out", out]
    for override in overrides:
        args += ["--set", override]
    return _ok(*args)


def test_flow_equals_the_plain_chain_and_auto_chooses_flow_on_video(video, tmp_path):
    dataset = open_dataset(video["index"])
    document = json.loads(video["seq"].read_text())
    _seqmerge(video, tmp_path / "flow", "align=flow", "merge=none")
    _seqmerge(video, tmp_path / "auto", "merge=none")  # align=auto is the default
    flow, auto = LabelSet(tmp_path / "flow"), LabelSet(tmp_path / "auto")
    for sequence in document["sequences"]:
        for image_id, label in _plain_chain(dataset, sequence).items():
            np.testing.assert_array_equal(flow.read_label(image_id), label, err_msg=image_id)
            np.testing.assert_array_equal(auto.read_label(image_id), label, err_msg=image_id)
    summary = auto.manifest["summary"]
    assert summary["auto"]["flow"] == len(document["sequences"]) == 4 and summary["auto"]["homography"] == 0
    assert all(c["motion"] <= 0.05 and c["consistent_share"] >= 0.2 and c["time_step_s"] == 0.04
               for c in summary["auto"]["sequences"].values())
    assert summary["alignment"] == {"flow": 60} and summary["fallbacks"] == {} and summary["flow_breaks"] == {}
    # as if killed half way: the resumed run's summary still covers every image and sequence
    (tmp_path / "auto" / "manifest.json").unlink()
    for path in sorted((tmp_path / "auto" / "labels").glob("*.png"))[::2]:
        path.unlink()
    _seqmerge(video, tmp_path / "auto", "merge=none")
    assert LabelSet(tmp_path / "auto").manifest["summary"] == summary
    _seqmerge(video, tmp_path / "none", "align=none", "merge=none")
    none = LabelSet(tmp_path / "none")
    scores = {name: evaluate(dataset, ls, progress=False)["miou"] for name, ls in (("auto", auto), ("none", none))}
    assert scores["auto"] > scores["none"] + 0.05


def test_auto_chooses_homography_on_evolving_photos(tmp_path):
    index = make_evolving(tmp_path / "data", n=100, size=96, seed=1, progress=False)
    p = _annotated(index, tmp_path)
    _seqmerge(p, tmp_path / "auto", "merge=none")
    _seqmerge(p, tmp_path / "homography", "align=homography", "merge=none")
    _seqmerge(p, tmp_path / "none", "align=none", "merge=none")
    auto = LabelSet(tmp_path / "auto")
    summary = auto.manifest["summary"]
    document = json.loads((tmp_path / "seq.json").read_text())
    assert summary["auto"]["homography"] == len(document["sequences"]) > 0 and summary["auto"]["flow"] == 0
    choices = summary["auto"]["sequences"].values()
    assert all(c["time_step_s"] > 3600 for c in choices)  # photos hours or days apart: never flow
    # and the images alone say so for most sequences too
    assert sum(c["motion"] > 0.05 or c["consistent_share"] < 0.2 for c in choices) > 0.5 * len(choices)
    homography = LabelSet(tmp_path / "homography")
    assert all(np.array_equal(auto.read_label(i), homography.read_label(i)) for i in auto.ids())
    dataset = open_dataset(index)
    assert evaluate(dataset, auto, progress=False)["miou"] >= evaluate(dataset, LabelSet(tmp_path / "none"),
                                                                      progress=False)["miou"]


# ---- real frames, when the shared data is there ------------------------------------------

@pytest.mark.skipif(not CAMVID.is_file(), reason="camvid_small not in the shared data folder")
def _camvid_stretch(tmp_path, subject: str, first: int, last: int, frames: int) -> dict:
    """camvid_small's frames of ``subject`` with ``time`` in [first, last], read in place,
    one sequence, its middle frame annotated."""
    import csv

    rows = [r for r in csv.DictReader(CAMVID.open()) if r["subject"] == subject and first <= int(r["time"]) <= last]
    assert len(rows) == frames
    for row in rows:
        for column in ("image", "mask"):
            row[column] = str(CAMVID.parent / row[column])
    from tests.conftest import write_index

    classes = json.loads((CAMVID.parent / "classes.json").read_text())["classes"]
    index = write_index(tmp_path / "index.csv", rows, classes)
    return _annotated(index, tmp_path, "--by", "subject")


def test_camvid_dense_stretch_flow_equals_plain_chain_and_auto_picks_flow(tmp_path):
    """The 0016E5 stretch of frames 2 apart (dense video) of camvid_small."""
    p = _camvid_stretch(tmp_path, "0016E5", 7959, 8039, 41)
    _seqmerge(p, tmp_path / "auto", "merge=none")
    _seqmerge(p, tmp_path / "none", "align=none", "merge=none")
    dataset = open_dataset(p["index"])
    auto = LabelSet(tmp_path / "auto")
    assert auto.manifest["summary"]["auto"]["flow"] == 1
    document = json.loads((tmp_path / "seq.json").read_text())
    for image_id, label in _plain_chain(dataset, document["sequences"][0]).items():
        np.testing.assert_array_equal(auto.read_label(image_id), label, err_msg=image_id)
    assert evaluate(dataset, auto, progress=False)["miou"] > evaluate(dataset, LabelSet(tmp_path / "none"),
                                                                     progress=False)["miou"]


def test_camvid_hard_one_second_steps_do_not_break_the_chain(tmp_path):
    """0006R0's frames 1 s apart, where on several steps under 5 % of the pixels pass the
    forward-backward test (a real drive, no cut): the chain goes on as the plain chain does;
    only a size change breaks it unless ``min_consistent`` is set."""
    p = _camvid_stretch(tmp_path, "0006R0", 1080, 1560, 17)
    _seqmerge(p, tmp_path / "flow", "align=flow", "merge=none")
    flow = LabelSet(tmp_path / "flow")
    assert flow.manifest["summary"]["alignment"] == {"flow": 16} and flow.manifest["summary"]["flow_breaks"] == {}
    dataset = open_dataset(p["index"])
    document = json.loads((tmp_path / "seq.json").read_text())
    for image_id, label in _plain_chain(dataset, document["sequences"][0]).items():
        np.testing.assert_array_equal(flow.read_label(image_id), label, err_msg=image_id)
    _seqmerge(p, tmp_path / "cut", "align=flow", "merge=none", "min_consistent=0.05")
    breaks = LabelSet(tmp_path / "cut").manifest["summary"]["flow_breaks"]
    assert breaks.get("scene cut", 0) > 0  # asked for, the test takes these steps for cuts
