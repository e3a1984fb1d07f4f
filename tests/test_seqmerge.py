"""Sequence merge (seed 000): sequencing (SChISM), annotation round trip, alignment, merge,
the ``seqmerge`` source end to end with real CAM labels."""
import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from plabel_kit import DataError, LabelSet, open_dataset
from plabel_kit.arrays import voc_palette
from plabel_kit.evaluation import evaluate
from plabel_kit.synth import EVOLVING_CLASSES, make_evolving
from plabel_seqmerge.alignment import FlowTracker, carry_homography, resize_nearest
from plabel_seqmerge.annotations import labelme_document, read_annotation, read_labelme
from plabel_seqmerge.homography import HomographyParams, estimate_homography, plausible
from plabel_seqmerge.merge import (class_thresholds, confident_cam, merge, merge_paper,
                                   precision_counts, score_of_label)
from plabel_seqmerge.seqfile import purity, size_histogram
from plabel_seqmerge.sequencing import (connected_groups, medoid, parse_time, pca_project,
                                        subject_links, window_pairs)
from tests.conftest import REPO, write_index

CPU_CONFIG = REPO / "configs" / "sources" / "cam_resnet18_cpu.py"
CLASSES = list(EVOLVING_CLASSES)


# ---- sequencing, pure ------------------------------------------------------------------

def test_parse_time_reads_iso_dates_and_plain_days():
    assert parse_time("2024-05-02T12:00:00") - parse_time("2024-05-01") == pytest.approx(1.5)
    assert parse_time("2024-05-01T06:00:00+02:00") % 1 == pytest.approx(0.25)  # the date as written
    assert parse_time("3.25") == 3.25 and parse_time(7) == 7.0
    assert parse_time("") is None and parse_time(None) is None and parse_time("yesterday") is None
    assert parse_time("nan") is None


def test_window_pairs_follow_schism_order():
    assert window_pairs(5, 3) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]
    # public-code defect: fewer observed days than the window gave no window at all
    assert window_pairs(2, 3) == [(0, 1)]
    assert window_pairs(1, 3) == []


def _vectors(*angles):
    """Unit vectors in the plane at the given angles (degrees): cosine = cos(difference)."""
    radians = np.radians(angles)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_two_observed_days_still_link():
    features = _vectors(0, 40, 1, 41)
    links = subject_links(features, np.array([0, 0, 1, 1]))
    assert connected_groups(4, links) == [[0, 2], [1, 3]]


def test_running_mean_floor_and_ratio_threshold():
    # day 0: image 0; day 1: images 1 (5 deg away), 2 (6 deg away): both >= 0.99 * best
    features, days = _vectors(0, 5, 6), np.array([0, 1, 1])
    assert sorted(subject_links(features, days, running_mean=False)) == [(0, 1), (0, 2)]
    assert subject_links(features, days, ratio=0.99999, running_mean=False) == [(0, 1)]
    # the first comparison's running mean is its own best: only the best links
    assert subject_links(features, days) == [(0, 1)]
    # second comparison's best (60 deg, cos 0.5) is below the running mean of bests (1.0, 0.5 ->
    # mean 0.75): not linked; without the running mean it is
    features = _vectors(0, 0, 60)
    days = np.array([0, 1, 2])
    assert (0, 1) in subject_links(features, days, window=2)
    assert (1, 2) not in subject_links(features, days, window=2)
    assert (1, 2) in subject_links(features, days, window=2, running_mean=False)


def test_no_stray_reverse_comparison_after_the_loop():
    """The public code compares the last day pair once more, in reverse, after its loop.
    Day 0: A1 (0 deg), A2 (70 deg); day 1: B1 (60 deg), B2 (85 deg). Forward: A1's best is
    B1 (cos 60 = 0.50), A2's best is B1 (0.985; B2 at 0.966 misses 0.99 x 0.985), so B2 stays
    alone. The reverse pass would give B2 its best, A2 (0.966), above both 0.99 x 0.966 and
    the running mean of bests (0.50, 0.985, 0.985, 0.966 -> 0.859), and link it."""
    features = _vectors(0, 70, 60, 85)
    links = subject_links(features, np.array([0, 0, 1, 1]))
    assert sorted(links) == [(0, 2), (1, 2)]
    assert connected_groups(4, links) == [[0, 1, 2]]


def test_images_of_one_day_are_never_compared():
    features = _vectors(0, 0, 0)
    assert subject_links(features, np.array([4, 4, 4])) == []


def test_transitive_closure_and_medoid():
    assert connected_groups(6, [(0, 1), (1, 2), (4, 5)]) == [[0, 1, 2], [4, 5]]
    assert connected_groups(3, []) == []
    assert medoid(_vectors(0, 10, 20)) == 1


def test_pca_is_capped_and_keeps_cosine_geometry_of_centred_data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 40)).astype(np.float32)
    reduced = pca_project(features, 256)
    assert reduced.shape == (5, 5)
    centred = features - features.mean(0)
    assert np.allclose(reduced @ reduced.T, centred @ centred.T, atol=1e-3)
    assert pca_project(features, 0) is not None and pca_project(features, 0).shape == (5, 40)


def test_size_histogram_and_purity():
    assert size_histogram([2, 3, 4, 5, 9, 40]) == {"2": 1, "3-4": 2, "5-8": 1, "9-16": 1, "33-64": 1}
    sequences = [{"id": "a", "images": ["1", "2", "3"]}, {"id": "b", "images": ["4", "5"]}]
    groups = {"1": "x", "2": "x", "3": "y", "4": "y", "5": "y"}
    assert purity(sequences, groups) == pytest.approx((4 / 5, 4 / 5))


# ---- merge, pure -------------------------------------------------------------------------

def test_equation_1_exactly():
    carried = np.array([[0, 2, 255, 0, 1]], np.uint8)
    cam = np.array([[3, 3, 4, 0, 255]], np.uint8)
    # CAM's class enters where the carried mask has no class (0 or 255); nowhere else
    assert merge_paper(carried, cam).tolist() == [[3, 2, 4, 0, 1]]
    assert merge(carried, cam, "paper").tolist() == [[3, 2, 4, 0, 1]]
    assert merge(carried, cam, "none").tolist() == carried.tolist()


def test_confident_merge_uses_only_confident_cam_pixels():
    carried = np.array([[0, 0, 0, 0, 255, 2]], np.uint8)
    cam = np.array([[3, 3, 4, 0, 3, 3]], np.uint8)
    scores = np.array([[[0.2, 0.9, 0.0, 0.8, 0.5, 0.9]], [[0.0, 0.0, 0.35, 0.0, 0, 0]]], np.float32)
    score = score_of_label(cam, scores, np.array([3, 4]))  # planes of classes 3 and 4
    assert np.allclose(score, [[0.2, 0.9, 0.35, 0.0, 0.5, 0.9]])
    thresholds = np.array([np.inf, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert confident_cam(cam, score, thresholds).tolist() == [[0, 3, 4, 0, 3, 3]]
    assert merge(carried, cam, "confident", score, thresholds).tolist() == [[0, 3, 4, 0, 3, 2]]
    thresholds[4] = np.inf  # a class the calibration rejected never enters
    assert merge(carried, cam, "confident", score, thresholds).tolist() == [[0, 3, 0, 0, 3, 2]]
    # without scores every labelled pixel counts as fully confident
    assert score_of_label(cam, None, None).min() == 1.0


def test_calibration_finds_the_lowest_threshold_with_enough_precision():
    # class 1: right where its score >= 0.6, wrong below; class 2 always wrong; class 3 unseen
    score = np.array([[0.35, 0.45, 0.65, 0.9, 0.5, 0.95]], np.float32)
    cam = np.array([[1, 1, 1, 1, 2, 2]], np.uint8)
    truth = np.array([[0, 0, 1, 1, 0, 255]], np.uint8)  # 255 is not judged
    grid = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    labelled, correct = precision_counts(cam, score, truth, grid, 4)
    assert labelled[1].tolist() == [4, 3, 2, 2, 1] and correct[1].tolist() == [2, 2, 2, 2, 1]
    assert labelled[2].tolist() == [1, 1, 1, 0, 0] and correct[2].sum() == 0
    thresholds = class_thresholds(labelled, correct, grid, 0.5)
    assert thresholds[1] == 0.3  # 2 of 4 right: half is enough
    assert class_thresholds(labelled, correct, grid, 0.6)[1] == 0.4  # 2 of 3
    assert np.isinf(thresholds[2]) and thresholds[3] == 0.3 and np.isinf(thresholds[0])
    assert (class_thresholds(labelled, correct, grid, 0.0)[1:] == 0.3).all()  # 0 = off


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2, 255]), min_size=12, max_size=12),
       st.lists(st.sampled_from([0, 1, 2, 255]), min_size=12, max_size=12),
       st.floats(0, 1), st.floats(0, 1))
def test_merges_keep_carried_classes_and_take_only_cam_classes(carried, cam, t1, t2):
    carried = np.array(carried, np.uint8).reshape(3, 4)
    cam = np.array(cam, np.uint8).reshape(3, 4)
    score = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    thresholds = np.array([np.inf, t1, t2])
    paper = merge(carried, cam, "paper")
    confident = merge(carried, cam, "confident", score, thresholds)
    has_class = (carried != 0) & (carried != 255)
    for out in (paper, confident):
        assert (out[has_class] == carried[has_class]).all()
        changed = out != carried
        assert (out[changed] == cam[changed]).all() and not np.isin(out[changed], (0, 255)).any()
    # confident takes a subset of what Equation 1 takes
    assert ((confident == carried) | (confident == paper)).all()


# ---- alignment, pure -------------------------------------------------------------------

def _texture(size=160, seed=0):
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    image = np.stack([noise, noise[::-1], noise[:, ::-1]], axis=-1)
    return (image * 255).astype(np.uint8)


def _affine(image, degrees, scale, shift, nearest=False):
    middle = (image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2
    matrix = cv2.getRotationMatrix2D(middle, degrees, scale)
    matrix[:, 2] += shift
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=flags, borderMode=cv2.BORDER_REFLECT), matrix


def _square_mask(size=160):
    mask = np.zeros((size, size), np.uint8)
    mask[50:110, 40:100] = 2
    mask[60:80, 60:80] = 3
    return mask


def test_homography_recovers_a_camera_move_and_carries_the_mask():
    image, mask = _texture(), _square_mask()
    moved, matrix = _affine(image, 12, 1.1, (6, -4))
    truth, _ = _affine(mask, 12, 1.1, (6, -4), nearest=True)
    found = estimate_homography(image, moved)
    assert found is not None
    assert np.allclose(found[:2] / found[2, 2], matrix, atol=0.05 * np.abs(matrix).max() + 0.5)
    carried = carry_homography(image, mask, moved, HomographyParams(), work_size=64)  # estimated at 64 px
    objects = (truth != 0) & (carried != 255)
    assert objects.sum() > 0.95 * (truth != 0).sum()
    assert (carried[objects] == truth[objects]).mean() > 0.95
    resized = resize_nearest(mask, mask.shape)
    assert (resized[truth != 0] == truth[truth != 0]).mean() < 0.8  # resizing alone does not align


def test_homography_refuses_unrelated_images_and_implausible_fits():
    assert estimate_homography(_texture(seed=1), _texture(seed=2)) is None
    assert plausible(np.eye(3), (100, 100), 2.0)
    assert not plausible(np.diag([3.0, 3.0, 1.0]), (100, 100), 2.0)  # 3x zoom
    assert not plausible(np.diag([1.0, -1.0, 1.0]), (100, 100), 2.0)  # mirror
    assert not plausible(np.diag([2.5, 0.5, 1.0]), (100, 100), 2.0)  # strong anisotropy


def _stripes(size=160):
    """A frame of another scene: vertical stripes, nothing of the texture in it."""
    xs = np.mgrid[0:size, 0:size][1]
    stripes = ((np.sin(xs / 3) + 1) * 127).astype(np.uint8)
    return np.stack([stripes] * 3, axis=-1)


def test_flow_chain_follows_a_dense_sequence_and_breaks_on_a_cut_when_asked():
    base, mask = _texture(), _square_mask()
    frames = [_affine(base, 0, 1.0, (2 * k, k))[0] for k in range(5)] + [_stripes()]
    truth = _affine(mask, 0, 1.0, (8, 4), nearest=True)[0]
    # by default a chain breaks only at a size change: the share of pixels passing the
    # trust test does not tell a cut from a hard step of real video (see docs/seqmerge.md)
    assert FlowTracker(lambda _, position: frames[position], flow_size=640).carry("s", 0, 5, mask) is not None
    tracker = FlowTracker(lambda _, position: frames[position], flow_size=640, min_consistent=0.05)
    carried = tracker.carry("s", 0, 4, mask)
    assert carried is not None
    # every pixel is placed (none left to another alignment); content entering the frame
    # (top and left strips) is background, as in the truth
    assert (carried != 255).all() and (carried == truth).mean() > 0.97
    assert tracker.carry("s", 0, 5, mask) is None  # the last frame is another scene
    assert tracker.breaks() == {"scene cut": 1}
    backwards = tracker.carry("s", 4, 0, truth)  # chains run from the annotated image both ways
    assert backwards is not None and (backwards == mask).mean() > 0.97
    coarse = FlowTracker(lambda _, position: frames[position], flow_size=80).carry("s", 0, 4, mask)
    assert (coarse == truth).mean() > 0.95  # estimated at half size, carried at full size
    sized = [frames[0], cv2.resize(frames[1], (120, 120))]
    assert FlowTracker(lambda _, position: sized[position], flow_size=640).carry("s", 0, 1, mask) is None


# ---- annotation readers ----------------------------------------------------------------

def test_png_annotations_palette_and_grayscale(tmp_path):
    mask = np.array([[0, 1, 2], [5, 255, 0]], np.uint8)
    palette = Image.fromarray(mask)
    palette.putpalette(voc_palette().reshape(-1).tolist())
    palette.save(tmp_path / "p.png")
    Image.fromarray(mask).save(tmp_path / "g.png")  # mode L
    for name in ("p", "g"):
        assert np.array_equal(read_annotation(tmp_path / f"{name}.png", name, CLASSES), mask)
    Image.fromarray(np.full((2, 3), 9, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: id 'bad': annotation holds class id 9"):
        read_annotation(tmp_path / "bad.png", "bad", CLASSES)


def _labelme(path, shapes, height=20, width=30):
    path.write_text(json.dumps({"shapes": shapes, "imageHeight": height, "imageWidth": width}))
    return path


def test_labelme_polygons_rectangles_later_on_top(tmp_path):
    path = _labelme(tmp_path / "a.json", [
        {"label": "torso", "shape_type": "rectangle", "points": [[2, 2], [20, 15]]},
        {"label": "stain", "shape_type": "polygon", "points": [[10, 5], [16, 5], [16, 10], [10, 10]]},
        {"label": "__ignore__", "points": [[0, 18], [3, 18], [3, 19], [0, 19]]},  # no shape_type: polygon
    ])
    label = read_labelme(path, "a", CLASSES)
    assert label.shape == (20, 30)
    assert (label[2:16, 2:21][label[2:16, 2:21] != 3] == 2).all() and label[3, 3] == 2
    assert (label[5:11, 10:17] == 3).all()  # the later shape on top
    assert (label[18:20, 0:4] == 255).all() and label[0, 0] == 0 and label[17, 25] == 0


def test_labelme_unknown_label_and_shape_are_data_errors(tmp_path):
    path = _labelme(tmp_path / "u.json", [{"label": "arm", "points": [[0, 0], [5, 0], [5, 5]]}])
    with pytest.raises(DataError, match=r"u\.json: id 'u': shape 0: label 'arm' is not a class"):
        read_labelme(path, "u", CLASSES)
    path = _labelme(tmp_path / "c.json", [{"label": "limb", "shape_type": "circle", "points": [[5, 5], [8, 8]]}])
    with pytest.raises(DataError, match="shape_type 'circle' is not supported"):
        read_labelme(path, "c", CLASSES)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match=r"broken\.json: id 'b': not valid JSON"):
        read_labelme(tmp_path / "broken.json", "b", CLASSES)


def test_labelme_writer_round_trips_nested_regions(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 2
    mask[10:30, 10:30] = 0  # a background hole ...
    mask[15:25, 15:25] = 3  # ... holding another class
    mask[0:3, 37:40] = 255
    document = labelme_document(mask, CLASSES, "x.png")
    assert {s["label"] for s in document["shapes"]} == {"torso", "background", "stain", "__ignore__"}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(document))
    assert np.array_equal(read_labelme(path, "x", CLASSES), mask)


# ---- end to end on synthetic evolving data ---------------------------------------------

def _invoke(*args):
    """``plabel`` in-process, as the cli_run fixture (usable from module-scoped fixtures)."""
    from click.testing import CliRunner

    from plabel_kit.cli import _load_plugin_commands, cli

    _load_plugin_commands()
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def _ok(*args):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Evolving data (100 images, 96 px), sequences, tasks, simulated PNG annotations and a
    real CAM label set (the small CPU config, few epochs: a weak CAM, as on real photos
    without pretrained weights)."""
    root = tmp_path_factory.mktemp("seqmerge")
    index = make_evolving(root / "data", n=100, size=96, seed=1, progress=False)
    _ok("sequence", "build", "--data", index, "--out", root / "seq.json")
    _ok("sequence", "tasks", root / "seq.json", "--data", index, "--out", root / "tasks")
    _ok("sequence", "simulate-annotations", root / "tasks", "--data", index, "--out", root / "ann")
    _ok("source", "cam", "--data", index, "--out", root / "cam", "--config", CPU_CONFIG,
        "--set", "epochs=6", "--set", "crop_size=96", "--set", "resize_long=(72,120)", "--set", "scales=(1.0,)")
    return {"root": root, "index": index, "seq": root / "seq.json", "ann": root / "ann", "cam": root / "cam"}


def _seqmerge(p, out, *overrides, annotations=None):
    args = ["source", "seqmerge", "--data", p["index"], "--sequences", p["seq"], "--annotations",
            annotations or p["ann"], "--cam", p["cam"], "--out", out]
    for override in overrides:
        args += ["--set", override]
    return _invoke(*args)


def test_build_and_show_report_purity_and_annotations_needed(pipeline, tmp_path):
    document = json.loads(pipeline["seq"].read_text())
    dataset = open_dataset(pipeline["index"])
    assert document["dataset"]["fingerprint"] == dataset.fingerprint()
    assert document["embedder"]["type"] == "thumbnail" and document["params"]["window"] == 3
    times = {s.id: s.meta["time"] for s in dataset}
    for sequence in document["sequences"]:
        assert len(sequence["images"]) >= 2 and sequence["representative"] in sequence["images"]
        assert [times[i] for i in sequence["images"]] == sorted(times[i] for i in sequence["images"])
        assert len({dataset[i].meta["subject"] for i in sequence["images"]}) == 1
    sequenced = [i for s in document["sequences"] for i in s["images"]]
    assert sorted(sequenced + document["unsequenced"]) == sorted(dataset.ids)
    result = _ok("sequence", "show", pipeline["seq"], "--data", pipeline["index"], "--json", tmp_path / "s.json")
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["annotations_needed"] == len(document["sequences"]) < 0.3 * len(dataset)
    assert f"annotations needed: {stats['annotations_needed']} (one per sequence) instead of 100 images" in result.output
    assert "purity" in result.output and 0.5 < stats["purity"] <= 1.0
    assert sum(stats["size_histogram"].values()) == len(document["sequences"])


def test_images_without_subject_or_time_stay_unsequenced_and_are_reported(pipeline, tmp_path):
    rows = list(csv.DictReader(pipeline["index"].open()))
    rows[0]["subject"], rows[1]["time"], rows[2]["time"] = "", "", "last tuesday"
    for row in rows:
        for column in ("image", "mask"):
            row[column] = str(pipeline["index"].parent / row[column])
    index = write_index(tmp_path / "index.csv", rows, CLASSES, fieldnames=list(rows[0]))
    result = _ok("sequence", "build", "--data", index, "--out", tmp_path / "seq.json", "--pca", "0")
    document = json.loads((tmp_path / "seq.json").read_text())
    assert document["not_sequenceable"] == {"no subject": [rows[0]["id"]], "no time": [rows[1]["id"]],
                                            "unreadable time": [rows[2]["id"]]}
    assert {r["id"] for r in rows[:3]} <= set(document["unsequenced"])
    assert f"1 image(s) have unreadable time and stay unsequenced, e.g. {rows[2]['id']}" in result.output


def test_tasks_and_simulated_annotations_round_trip(pipeline, tmp_path):
    document = json.loads(pipeline["seq"].read_text())
    tasks = list(csv.DictReader((pipeline["root"] / "tasks" / "tasks.csv").open()))
    assert [t["sequence"] for t in tasks] == [s["id"] for s in document["sequences"]]
    assert [t["id"] for t in tasks] == [s["representative"] for s in document["sequences"]]
    assert all((pipeline["root"] / "tasks" / t["image"]).is_file() for t in tasks)
    _ok("sequence", "tasks", pipeline["seq"], "--data", pipeline["index"], "--out", tmp_path / "t", "--pick", "first")
    assert [t["id"] for t in csv.DictReader((tmp_path / "t" / "tasks.csv").open())] == \
        [s["images"][0] for s in document["sequences"]]
    _ok("sequence", "simulate-annotations", pipeline["root"] / "tasks", "--data", pipeline["index"],
        "--out", tmp_path / "lm", "--format", "labelme")
    dataset = open_dataset(pipeline["index"])
    agree = total = 0
    for task in tasks:
        from_png = read_annotation(pipeline["ann"] / f"{task['id']}.png", task["id"], CLASSES)
        from_json = read_annotation(tmp_path / "lm" / f"{task['id']}.json", task["id"], CLASSES)
        assert np.array_equal(from_png, dataset[task["id"]].mask)
        agree += int((from_json == from_png).sum())
        total += from_png.size
    assert agree / total > 0.999



def test_annotated_images_become_the_manual_dataset(pipeline, tmp_path):
    tasks = [t["id"] for t in csv.DictReader((pipeline["root"] / "tasks" / "tasks.csv").open())]
    ann = tmp_path / "ann"
    shutil.copytree(pipeline["ann"], ann)
    (ann / f"{tasks[0]}.png").unlink()  # not annotated yet
    result = _ok("sequence", "annotated", pipeline["root"] / "tasks", "--annotations", ann, "--data",
                 pipeline["index"], "--out", tmp_path / "manual")
    assert f"1 task image(s) have no annotation yet and are left out, e.g. {tasks[0]}" in result.output
    manual, others = open_dataset(tmp_path / "manual" / "index.csv"), open_dataset(tmp_path / "manual" / "others.csv")
    dataset = open_dataset(pipeline["index"])
    assert manual.ids == tasks[1:] and manual.classes == dataset.classes
    assert sorted(manual.ids + others.ids) == sorted(dataset.ids)
    for image_id in manual.ids:
        assert np.array_equal(manual[image_id].mask, dataset[image_id].mask)
        assert manual[image_id].classes == dataset[image_id].classes
    # the simulated annotator writes the same dataset from the ground truth
    _ok("sequence", "annotated", pipeline["root"] / "tasks", "--annotations", "ground-truth", "--data",
        pipeline["index"], "--out", tmp_path / "gt")
    assert open_dataset(tmp_path / "gt" / "index.csv").ids == tasks
    # a wrongly sized annotation is named by file and id, and the index is not written
    small = np.zeros((8, 8), np.uint8)
    Image.fromarray(small).save(ann / f"{tasks[1]}.png")
    bad = _invoke("sequence", "annotated", pipeline["root"] / "tasks", "--annotations", ann, "--data",
                  pipeline["index"], "--out", tmp_path / "bad")
    assert bad.exit_code == 1 and f"{tasks[1]}.png" in bad.output and tasks[1] in bad.output
    assert not (tmp_path / "bad" / "index.csv").exists()
    missing = _invoke("sequence", "annotated", pipeline["root"] / "tasks", "--annotations", tmp_path / "none",
                      "--data", pipeline["index"], "--out", tmp_path / "x")
    assert missing.exit_code == 2 and "ground-truth" in missing.output

def _scores(dataset, path):
    result = evaluate(dataset, LabelSet(path), progress=False)
    return {"miou": result["miou"], "fwiou": result["fwiou"]}


def test_defaults_never_score_below_the_carried_mask_alone(pipeline, tmp_path):
    """Real CAM labels from a few epochs: a weak CAM, as on photos without pretrained weights.
    The defaults (alignment on, calibrated confident merge) >= the carried mask alone."""
    dataset = open_dataset(pipeline["index"])
    scores = {}
    for name, overrides in (("defaults", ()), ("carried", ("align=none", "merge=none")),
                            ("carried_aligned", ("merge=none",)), ("paper", ("align=none", "merge=paper"))):
        result = _seqmerge(pipeline, tmp_path / name, *overrides)
        assert result.exit_code == 0, result.output
        scores[name] = _scores(dataset, tmp_path / name)
    for metric in ("miou", "fwiou"):
        assert scores["defaults"][metric] >= scores["carried"][metric]
        assert scores["defaults"][metric] >= scores["carried_aligned"][metric]
    summary = LabelSet(tmp_path / "defaults").manifest["summary"]
    document = json.loads(pipeline["seq"].read_text())
    assert summary["images"]["annotated"] == len(document["sequences"])
    assert summary["images"].get("unsequenced", 0) == len(document["unsequenced"])
    assert sum(summary["alignment"].values()) == summary["images"]["merged"]
    assert summary["alignment"].get("none", 0) == summary["fallbacks"].get("homography->none", 0)
    assert set(summary["cam_thresholds"]) == set(CLASSES[1:])
    # pixels outside a warped frame take the resized mask's label: no holes where the paper has none
    aligned = LabelSet(tmp_path / "carried_aligned")
    assert aligned.manifest["summary"]["pixels_from_simpler_alignment"]["homography"] > 0
    assert all((aligned.read_label(i) != 255).all() for i in aligned.ids())
    # annotated images keep their manual masks, unsequenced ones get CAM labels
    labels, cam = LabelSet(tmp_path / "defaults"), LabelSet(pipeline["cam"])
    for sequence in document["sequences"]:
        image_id = sequence["representative"]
        assert np.array_equal(labels.read_label(image_id), dataset[image_id].mask)
    for image_id in document["unsequenced"]:
        assert np.array_equal(labels.read_label(image_id), cam.read_label(image_id))


def _localising_cam(dataset, out, sigma=3.0):
    """A CAM-like label set that does localise: each tagged class's mask blurred and divided by
    its max (IRN's normalisation), labels at IRN's background threshold 0.15."""
    from plabel_kit import LabelSetWriter, PseudoLabel
    from plabel_kit.arrays import scores_to_labels

    writer = LabelSetWriter(out, {"type": "blurred_truth", "sigma": sigma}, dataset.classes, dataset.palette)
    for sample in dataset:
        keys = np.asarray(sample.classes, np.int64)
        planes = [cv2.GaussianBlur((sample.mask == k).astype(np.float32), (0, 0), sigma) for k in keys]
        scores = np.stack([p / (p.max() + 1e-5) for p in planes]) if planes else np.zeros((0, 96, 96), np.float32)
        writer.write(sample.id, PseudoLabel(scores_to_labels(scores, keys, 0.15), scores, keys))
    writer.finish()
    return out


def test_a_localising_cam_passes_calibration_and_improves_the_carried_mask(pipeline, tmp_path):
    dataset = open_dataset(pipeline["index"])
    p = dict(pipeline, cam=_localising_cam(dataset, tmp_path / "cam"))
    scores = {}
    for name, overrides in (("defaults", ()), ("aligned", ("merge=none",)), ("paper", ("merge=paper",))):
        assert _seqmerge(p, tmp_path / name, *overrides).exit_code == 0
        scores[name] = _scores(dataset, tmp_path / name)
    thresholds = LabelSet(tmp_path / "defaults").manifest["summary"]["cam_thresholds"]
    assert all(t["threshold"] == 0.3 for t in thresholds.values() if t["cam_pixels"])
    assert scores["defaults"]["miou"] > scores["aligned"]["miou"]
    assert scores["defaults"]["miou"] >= scores["paper"]["miou"]


def test_missing_and_odd_size_annotations_are_reported_and_fall_back_to_cam(pipeline, tmp_path):
    document = json.loads(pipeline["seq"].read_text())
    first, second = document["sequences"][:2]
    ann = tmp_path / "ann"
    ann.mkdir()
    for path in pipeline["ann"].iterdir():
        if path.stem != first["representative"]:
            (ann / path.name).write_bytes(path.read_bytes())
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(ann / f"{second['representative']}.png")
    result = _seqmerge(pipeline, tmp_path / "out", "align=flow", annotations=ann)
    assert result.exit_code == 0, result.output
    assert "1 sequence(s) have no annotation" in result.output and first["representative"] in result.output
    assert f"{second['representative']} (12x10 vs 96x96)" in result.output
    labels, cam = LabelSet(tmp_path / "out"), LabelSet(pipeline["cam"])
    summary = labels.manifest["summary"]
    assert summary["missing_annotations"] == [{"sequence": first["id"], "expected": first["representative"],
                                               "images": len(first["images"])}]
    assert [b["id"] for b in summary["annotation_size_differs"]] == [second["representative"]]
    assert summary["images"]["annotation missing"] == len(first["images"])
    assert summary["images"]["annotation size differs"] == len(second["images"])
    for image_id in first["images"] + second["images"]:
        assert np.array_equal(labels.read_label(image_id), cam.read_label(image_id))
    assert len(labels.ids()) == 100 and labels.manifest["complete"]


def test_bad_annotation_content_stops_before_anything_is_written(pipeline, tmp_path):
    document = json.loads(pipeline["seq"].read_text())
    ann = tmp_path / "ann"
    ann.mkdir()
    image_id = document["sequences"][0]["representative"]
    _labelme(ann / f"{image_id}.json", [{"label": "elbow", "points": [[0, 0], [5, 0], [5, 5]]}], 96, 96)
    result = _seqmerge(pipeline, tmp_path / "out", annotations=ann)
    assert result.exit_code == 1
    assert f"{image_id}.json: id '{image_id}': shape 0: label 'elbow' is not a class" in result.output
    assert not list((tmp_path / "out" / "labels").glob("*.png"))


def test_seqmerge_needs_its_inputs(pipeline, tmp_path):
    result = _invoke("source", "seqmerge", "--data", pipeline["index"], "--out", tmp_path / "o")
    assert result.exit_code == 1 and "needs --sequences, --annotations, --cam" in result.output


def test_cam_features_embedder_sequences_with_the_trained_backbone(pipeline, tmp_path):
    checkpoint = pipeline["cam"] / "work" / "cam_final.pth"
    _ok("sequence", "build", "--data", pipeline["index"], "--out", tmp_path / "seq.json",
        "--embedder", "cam_features", "--set", f"checkpoint={checkpoint}", "--set", "size=96")
    document = json.loads((tmp_path / "seq.json").read_text())
    assert document["embedder"] == {"type": "cam_features",
                                    "config": {"checkpoint": str(checkpoint), "size": 96, "device": "auto"}}
    assert document["sequences"] and document["params"]["pca"] == 256
