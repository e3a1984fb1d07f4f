"""ISLE (seed 001) and the vote / maxconf baselines: properties of the merge, the public
script's overlap bug (9 + 11 = 20), selection on synthetic scenes with complementary
inputs, thresholds on strided score maps, the printed table and the CLI's warnings."""
import csv
import json
import re

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from plabel_kit import DataError, LabelSet, LabelSetWriter, PseudoLabel, Sample, open_dataset
from plabel_kit.arrays import voc_palette
from plabel_kit.datasets import VOC_CLASSES
from plabel_kit.evaluation import evaluate
from plabel_kit.synth import make_scenes
from plabel_isle.ensemble import gate_by_tags, majority_vote, merge_claims
from plabel_isle.inputs import input_label
from plabel_isle.isle import ConfidenceFallbackWarning
from plabel_isle.maxconf import MaxConf
from plabel_isle.vote import Vote
from tests.conftest import write_index

CHAIR, TABLE, TV = 9, 11, 20  # VOC ids: the public script sums chair + table into tvmonitor
CROSS = np.ones((3, 3), np.uint8)


def write_set(path, classes, pseudos: dict) -> str:
    writer = LabelSetWriter(path, {"kind": "test", "type": path.name}, classes, voc_palette())
    for image_id, pseudo in pseudos.items():
        writer.write(image_id, pseudo)
    writer.finish()
    return str(path)


def learned(label_set) -> dict:
    """The combiner's summary() as the stage runner stored it in the output manifest."""
    return json.loads((label_set / "manifest.json").read_text())["summary"]


def miou(data, labels) -> float:
    return evaluate(open_dataset(data), LabelSet(labels), progress=False)["miou"]


# ---- properties of the pure merge -----------------------------------------------------

@st.composite
def merge_cases(draw):
    n_sources = draw(st.integers(1, 4))
    n_classes = draw(st.integers(2, 21))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    values = st.sampled_from(list(range(n_classes)) + [255])
    labels = np.array(draw(st.lists(values, min_size=n_sources * height * width,
                                    max_size=n_sources * height * width)), np.uint8)
    chosen = np.array([-1] + draw(st.lists(st.integers(0, n_sources - 1), min_size=n_classes - 1,
                                           max_size=n_classes - 1)))
    priority = np.array(draw(st.permutations(range(n_classes))))
    confidence = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                                        min_size=n_classes * height * width,
                                        max_size=n_classes * height * width)), np.float32)
    rule = draw(st.sampled_from(["score", "confidence", "ignore"]))
    return (labels.reshape(n_sources, height, width), chosen, priority, rule,
            confidence.reshape(n_classes, height, width))


@settings(max_examples=300, deadline=None)
@given(merge_cases())
def test_merge_outputs_only_chosen_claims(case):
    labels, chosen, priority, rule, confidence = case
    n_classes = len(chosen)
    out, contested = merge_claims(labels, chosen, priority, rule, confidence)
    assert out.dtype == np.uint8 and out.shape == labels.shape[1:]
    assert set(np.unique(out)) <= set(range(n_classes)) | {255}
    claimers = [[c for c in range(1, n_classes) if labels[chosen[c], y, x] == c]
                for y, x in np.ndindex(out.shape)]
    assert contested == sum(len(c) > 1 for c in claimers)
    for (y, x), claim in zip(np.ndindex(out.shape), claimers):
        value = out[y, x]
        if not claim:  # unclaimed: background, unless every input was uncertain
            assert value == (255 if (labels[:, y, x] == 255).all() else 0)
        elif len(claim) == 1:
            assert value == claim[0]
        elif rule == "ignore":
            assert value == 255
        elif rule == "score":
            assert value == max(claim, key=lambda c: priority[c])
        else:
            top = max(confidence[c, y, x] for c in claim)
            assert value == max((c for c in claim if confidence[c, y, x] == top),
                                key=lambda c: priority[c])
    # image level: a class never appears where its chosen source did not put it
    for c in set(np.unique(out)) - {0, 255}:
        assert (labels[chosen[c]] == c).any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0, 3, 9, 11, 255]), min_size=12, max_size=12),
       st.sets(st.sampled_from([3, 9, 11])))
def test_tag_gate_keeps_only_tagged_classes(values, tags):
    label = np.array(values, np.uint8).reshape(3, 4)
    gated = gate_by_tags(label, tags)
    assert set(np.unique(gated)) <= {0, 255} | tags
    assert ((gated == label) | (gated == 0)).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0, 1, 2, 255]), min_size=6, max_size=6), min_size=1,
                max_size=4), st.sampled_from(["ignore", "first"]))
def test_vote_winner_has_most_votes_and_255_never_counts(rows, ties):
    labels = np.array(rows, np.uint8).reshape(len(rows), 2, 3)
    out, _ = majority_vote(labels, 3, ties)
    votes = np.stack([(labels == c).sum(axis=0) for c in range(3)])
    for y, x in np.ndindex(out.shape):
        if (labels[:, y, x] == 255).all():
            assert out[y, x] == 255
        elif out[y, x] != 255:
            assert votes[out[y, x], y, x] == votes[:, y, x].max()


# ---- the public script's overlap bug, end to end ---------------------------------------

@pytest.fixture
def chair_table(tmp_path):
    """VOC classes. Selection: A is exact on chair and poor on table, B the reverse. Held
    image 'h': A's chair and B's table overlap in [10:16, 10:16]; in the overlap A's chair
    score is 0.4 of its peak and B's table score 0.9."""
    root = tmp_path / "ct"
    (root / "img").mkdir(parents=True)
    masks = {"s_chair": {CHAIR: (2, 14)}, "s_table": {TABLE: (8, 22)},
             "h": {CHAIR: (2, 12), TABLE: (12, 22)}}
    rows = []
    for image_id, boxes in masks.items():
        mask = np.zeros((24, 24), np.uint8)
        for c, (a, b) in boxes.items():
            mask[a:b, a:b] = c
        Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(root / "img" / f"{image_id}.png")
        Image.fromarray(mask).save(root / "img" / f"{image_id}_m.png")
        rows.append({"id": image_id, "image": f"img/{image_id}.png", "mask": f"img/{image_id}_m.png",
                     "labels": ";".join(VOC_CLASSES[c] for c in boxes)})
    write_index(root / "all.csv", rows, VOC_CLASSES)
    write_index(root / "select.csv", rows[:2], VOC_CLASSES)
    write_index(root / "held.csv", rows[2:], VOC_CLASSES)

    def box(c, a, b):
        label = np.zeros((24, 24), np.uint8)
        label[a:b, a:b] = c
        return label

    chair_plane = np.where(box(1, 2, 16) == 1, 0.4, 0.0).astype(np.float32)
    chair_plane[2:10, 2:10] = 1.0
    table_plane = np.where(box(1, 10, 22) == 1, 0.9, 0.0).astype(np.float32)
    table_plane[18:22, 18:22] = 1.0
    sets = {}
    for name, scored in (("A", True), ("A_noscores", False)):
        held = box(CHAIR, 2, 16)
        sets[name] = write_set(root / name, VOC_CLASSES, {
            "s_chair": PseudoLabel(box(CHAIR, 2, 14)), "s_table": PseudoLabel(box(TABLE, 10, 14)),
            "h": PseudoLabel(held, chair_plane[None], [CHAIR]) if scored else PseudoLabel(held)})
    b_table = box(TABLE, 8, 22)
    b_table[:, 21] = 0  # IoU 13/14 on table: below A's 1.0 on chair
    sets["B"] = write_set(root / "B", VOC_CLASSES, {
        "s_chair": PseudoLabel(box(CHAIR, 4, 6)), "s_table": PseudoLabel(b_table),
        "h": PseudoLabel(box(TABLE, 10, 22), table_plane[None], [TABLE])})
    return root, sets


@pytest.mark.parametrize("overlap, expected", [("score", CHAIR), ("ignore", 255),
                                               ("confidence", TABLE)])
def test_overlapping_chair_and_table_never_become_tvmonitor(cli_run, chair_table, tmp_path,
                                                             overlap, expected):
    root, sets = chair_table
    out = tmp_path / overlap
    result = cli_run("combine", "isle", "--data", root / "held.csv", "--in", sets["A"], "--in",
                     sets["B"], "--out", out, "--select-on", root / "select.csv",
                     "--set", f"overlap={overlap}")
    assert result.exit_code == 0, result.output
    label = LabelSet(out).read_label("h")
    assert TV not in label
    assert (label[10:16, 10:16] == expected).all()
    assert (label[2:10, 2:10] == CHAIR).all() and (label[16:22, 16:22] == TABLE).all()
    summary = learned(out)
    rows = {r["name"]: r for r in summary["classes"]}
    assert rows["chair"]["source"] == 0 and rows["chair"]["scores"] == pytest.approx([1.0, 4 / 144], abs=1e-6)
    assert rows["diningtable"]["source"] == 1 and rows["diningtable"]["scores"][1] == pytest.approx(13 / 14, abs=1e-6)
    assert not rows["cat"]["seen"]
    assert summary["combined"]["contested_pixels"] == 36


def test_confidence_without_scores_falls_back_to_score_with_a_counted_warning(cli_run, chair_table,
                                                                              tmp_path):
    root, sets = chair_table
    out = tmp_path / "fallback"
    with pytest.warns(ConfidenceFallbackWarning, match="has no score map for class 'chair'"):
        result = cli_run("combine", "isle", "--data", root / "held.csv", "--in", sets["A_noscores"],
                         "--in", sets["B"], "--out", out, "--select-on", root / "select.csv",
                         "--set", "overlap=confidence")
    assert result.exit_code == 0, result.output
    assert (LabelSet(out).read_label("h")[10:16, 10:16] == CHAIR).all()
    summary = learned(out)
    assert summary["combined"]["confidence_fallback_images"] == 1


def test_selecting_on_the_combined_images_is_warned(cli_run, chair_table, tmp_path):
    root, sets = chair_table
    args = ["combine", "isle", "--in", sets["A"], "--in", sets["B"], "--select-on", root / "select.csv"]
    held = cli_run(*args, "--data", root / "held.csv", "--out", tmp_path / "held")
    assert held.exit_code == 0 and "warning" not in held.output
    overlapping = cli_run(*args, "--data", root / "all.csv", "--out", tmp_path / "all")
    assert overlapping.exit_code == 0, overlapping.output
    assert "warning: 2 image(s) of --select-on are also being combined" in overlapping.output
    summary = learned(tmp_path / "all")
    assert summary["combined"]["labelled_images_combined"] == 2
    assert summary["labelled"]["ids"] == ["s_chair", "s_table"]


def test_bad_inputs_fail_in_one_line(cli_run, chair_table, tmp_path):
    root, sets = chair_table
    base = ["combine", "isle", "--data", root / "held.csv", "--in", sets["A"], "--in", sets["B"]]
    result = cli_run(*base, "--out", tmp_path / "a")
    assert result.exit_code == 1 and "pass a labelled subset with --select-on" in result.output
    h_only = write_set(tmp_path / "h_only", VOC_CLASSES, {"h": PseudoLabel(np.zeros((24, 24), np.uint8))})
    result = cli_run("combine", "isle", "--data", root / "held.csv", "--in", sets["A"], "--in", h_only,
                     "--out", tmp_path / "b", "--select-on", root / "select.csv")
    assert result.exit_code == 1 and "no label for this --select-on image" in result.output
    assert "h_only/labels/s_chair.png: id 's_chair'" in result.output
    rows = list(csv.DictReader((root / "select.csv").open()))
    write_index(root / "no_masks.csv", [{**r, "mask": ""} for r in rows], VOC_CLASSES)
    result = cli_run(*base, "--out", tmp_path / "b2", "--select-on", root / "no_masks.csv")
    assert result.exit_code == 1 and "id 's_chair': --select-on images need ground-truth masks" in result.output
    result = cli_run(*base, "--out", tmp_path / "c", "--select-on", root / "select.csv",
                     "--set", "thresholds=0.3")
    assert result.exit_code == 1 and "1 threshold(s) given for 2 input label set(s)" in result.output
    result = cli_run(*base, "--out", tmp_path / "d", "--select-on", root / "select.csv",
                     "--set", "thresholds=0.3,none")
    assert result.exit_code == 1 and "has no score map" in result.output
    assert "id 's_chair'" in result.output and str(sets["A"]) in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = cli_run(*base, "--out", tmp_path / "e", "--set", "overlap=sum")
    assert result.exit_code == 1 and "overlap must be one of" in result.output


# ---- selection on synthetic scenes with complementary inputs ---------------------------

def _degrade(mask: np.ndarray, strong: set, rng) -> np.ndarray:
    """A pseudo label from ground truth: good (1 px boundary jitter) on ``strong`` classes;
    elsewhere one realistic failure per class and image: under-coverage (eroded), over-
    coverage (dilated over neighbours and background), confusion (half the object called
    another class), a missed object, or a spurious blob beside it."""
    out = np.zeros_like(mask)
    for c in (int(c) for c in np.unique(mask) if c != 0):
        region = (mask == c).astype(np.uint8)
        if c in strong:
            region = [region, cv2.erode(region, CROSS), cv2.dilate(region, CROSS)][rng.integers(3)]
        else:
            failure = rng.choice(["under", "over", "confuse", "miss", "blob"])
            if failure == "under":
                region = cv2.erode(region, CROSS, iterations=3)
            elif failure == "over":
                region = cv2.dilate(region, CROSS, iterations=4)
            elif failure == "confuse":
                half = region.copy()
                half[:, : int(np.median(np.nonzero(region)[1]))] = 0
                out[half > 0] = rng.choice([k for k in range(1, 7) if k != c])
                region = region - half
            elif failure == "miss":
                region[:] = 0
            else:
                centre = tuple(int(v) for v in rng.integers(0, mask.shape[0], 2))
                cv2.circle(region, centre, int(rng.integers(5, 10)), 1, -1)
        out[region > 0] = c
    return out


def _scores(label: np.ndarray, rng, stride: int = 4):
    """Stride-4 score maps of a label's classes (blurred masks at random scales), keys = ids."""
    keys = [int(c) for c in np.unique(label) if c != 0]
    side = label.shape[0] // stride
    planes = [cv2.resize(cv2.GaussianBlur((label == c).astype(np.float32), (0, 0), 2.0), (side, side),
                         interpolation=cv2.INTER_AREA) * rng.uniform(0.5, 3.0) for c in keys]
    return np.stack(planes) if planes else np.zeros((0, side, side), np.float32), keys


@pytest.fixture(scope="module")
def complementary(tmp_path_factory):
    """60 scenes (64 px): 30 for selection, 30 held out (two CSVs sharing classes.json);
    A good on classes 1-2, B on 3-4, C on 5-6; 'blank' has all-background labels but
    exact stride-4 score maps behind a dominant background plane."""
    root = tmp_path_factory.mktemp("complementary")
    index = make_scenes(root, n=60, size=64, seed=5, progress=False)
    rows = list(csv.DictReader(index.open()))
    for name, part in (("select", rows[:30]), ("held", rows[30:])):
        with (root / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    dataset = open_dataset(index)
    sets = {}
    for k, (name, strong) in enumerate((("A", {1, 2}), ("B", {3, 4}), ("C", {5, 6}))):
        pseudos = {}
        for i, sample in enumerate(dataset):
            rng = np.random.default_rng([k, i])
            label = _degrade(sample.mask, strong, rng)
            scores, keys = _scores(label, rng)
            pseudos[sample.id] = PseudoLabel(label, scores, keys, 4)
        sets[name] = write_set(root / f"ls_{name}", dataset.classes, pseudos)
    blank = {}
    for i, sample in enumerate(dataset):
        scores, keys = _scores(sample.mask, np.random.default_rng([9, i]))
        background = np.full((1,) + scores.shape[1:], 10.0, np.float32)
        blank[sample.id] = PseudoLabel(np.zeros_like(sample.mask), np.concatenate([background, scores]),
                                       [0] + keys, 4)
    sets["blank"] = write_set(root / "ls_blank", dataset.classes, blank)
    return root, sets


def test_isle_beats_every_input_on_held_out_scenes(cli_run, complementary, tmp_path):
    root, sets = complementary
    held, select = root / "held.csv", root / "select.csv"
    inputs = [a for name in "ABC" for a in ("--in", sets[name])]
    results = {f"input {name}": miou(held, sets[name]) for name in "ABC"}
    runs = {"isle": ("isle", "--select-on", select),
            "isle overlap=confidence": ("isle", "--select-on", select, "--set", "overlap=confidence"),
            "isle overlap=ignore": ("isle", "--select-on", select, "--set", "overlap=ignore"),
            "isle selection=image": ("isle", "--select-on", select, "--set", "selection=image"),
            "isle tags=false": ("isle", "--select-on", select, "--set", "tags=false"),
            "vote": ("vote",), "maxconf threshold=0.5": ("maxconf", "--set", "threshold=0.5")}
    for k, (title, args) in enumerate(runs.items()):
        result = cli_run("combine", args[0], "--data", held, *inputs, "--out", tmp_path / f"r{k}", *args[1:])
        assert result.exit_code == 0, result.output
        assert "warning" not in result.output
        results[title] = miou(held, tmp_path / f"r{k}")
    best_input = max(results[f"input {name}"] for name in "ABC")
    print("\nmIoU on 30 held-out scenes (selection on 30 others):")
    for title, value in results.items():
        print(f"  {title:26s} {100 * value:6.2f}  ({100 * (value - best_input):+.2f} vs best input)")
    summary = learned(tmp_path / "r0")
    assert [row["source"] for row in summary["classes"]] == [0, 0, 1, 1, 2, 2]
    for title, value in results.items():
        if title.startswith("isle"):
            assert value >= best_input, (title, results)


def test_thresholds_relabel_strided_scores(cli_run, complementary, tmp_path):
    root, sets = complementary
    held, select = root / "held.csv", root / "select.csv"
    base = ["combine", "isle", "--data", held, "--in", sets["blank"], "--in", sets["A"],
            "--select-on", select]
    assert cli_run(*base, "--out", tmp_path / "as_is").exit_code == 0
    result = cli_run(*base, "--out", tmp_path / "thr", "--set", "thresholds=0.5,none")
    assert result.exit_code == 0, result.output
    as_is = learned(tmp_path / "as_is")
    thresholded = learned(tmp_path / "thr")
    assert all(row["source"] == 1 for row in as_is["classes"])  # blank labels score 0
    assert all(row["source"] == 0 for row in thresholded["classes"])
    assert all(row["scores"][0] > 0.6 for row in thresholded["classes"])
    assert thresholded["sources"][0]["threshold"] == 0.5 and thresholded["sources"][1]["threshold"] is None
    assert miou(held, tmp_path / "thr") > 0.8 > miou(held, tmp_path / "as_is")


def test_table_is_printed_after_fit_unless_quiet(cli_run, complementary, tmp_path, monkeypatch):
    root, sets = complementary
    monkeypatch.setenv("PLABEL_QUIET", "0")
    args = ["combine", "isle", "--data", root / "held.csv", "--in", sets["A"], "--in", sets["B"],
            "--select-on", root / "select.csv"]
    shown = cli_run(*args, "--out", tmp_path / "shown")
    assert shown.exit_code == 0, shown.output
    assert "dataset class IoU (%) on 30" in shown.output and "* = chosen" in shown.output  # the default
    per_image = cli_run(*args, "--out", tmp_path / "per_image", "--set", "selection=image")
    assert per_image.exit_code == 0 and "per-image class IoU (%) on 30" in per_image.output
    disc = next(line for line in shown.output.splitlines() if "disc" in line)
    assert re.search(r"\d+\.\d \*.*\d+\.\d.*ls_A", disc), disc
    assert "mean" in shown.output
    silent = cli_run("--quiet", *args, "--out", tmp_path / "silent")
    assert silent.exit_code == 0 and "chosen" not in silent.output


# ---- input preparation and baselines through the public API ----------------------------

def _sample(classes) -> Sample:
    return Sample("x", tuple(classes), "x.png")


def test_threshold_upsamples_strided_scores_and_maps_keys_to_ids():
    scores = np.zeros((3, 2, 2), np.float32)
    scores[0] = 5.0  # a background plane: replaced by the threshold
    scores[1, 0, :] = 2.0  # key 7, top row
    scores[2, 1, :] = 0.5  # key 3, bottom row (normalised to 1)
    pseudo = PseudoLabel(np.zeros((8, 8), np.uint8), scores, [0, 7, 3], 4)
    label = input_label(pseudo, _sample([3, 7]), 8, 0.5, True, "input 1")
    assert label.shape == (8, 8)
    assert (label[:3] == 7).all() and (label[-3:] == 3).all()
    assert (input_label(pseudo, _sample([3]), 8, 0.5, True, "input 1")[-3:] == 3).all()
    assert 7 not in input_label(pseudo, _sample([3]), 8, 0.5, True, "input 1")
    with pytest.raises(DataError, match="ls_x: id 'x': a background threshold is set"):
        input_label(PseudoLabel(np.zeros((8, 8), np.uint8)), _sample([3]), 8, 0.5, True, "ls_x")


def test_vote_ties_and_uncertain_pixels():
    labels = [np.array([[1, 1, 255, 2]], np.uint8), np.array([[1, 2, 255, 255]], np.uint8),
              np.array([[2, 255, 255, 255]], np.uint8)]
    pseudos = [PseudoLabel(x) for x in labels]
    assert Vote().combine(_sample([1, 2]), pseudos).label.tolist() == [[1, 255, 255, 2]]
    assert Vote(ties="first").combine(_sample([1, 2]), pseudos).label.tolist() == [[1, 1, 255, 2]]
    assert Vote().combine(_sample([1]), pseudos).label.tolist() == [[1, 255, 255, 0]]
    assert Vote(tags=False).summary() == {"method": "vote", "ties": "ignore",
                                          "combined": {"images": 0, "tied_pixels": 0}}


def test_maxconf_compares_normalised_scores():
    label = np.zeros((1, 3), np.uint8)
    loud = PseudoLabel(label, np.array([[[10.0, 6.0, 1.0]]], np.float32), [1])  # normalised 1, .6, .1
    quiet_ = PseudoLabel(label, np.array([[[0.1, 0.2, 0.25]]], np.float32), [2])  # .4, .8, 1
    fused = MaxConf(threshold=0.5).combine(_sample([1, 2]), [loud, quiet_, PseudoLabel(label)])
    assert fused.label.tolist() == [[1, 2, 2]]
    assert fused.keys.tolist() == [1, 2] and fused.scores.shape == (2, 1, 3)
    assert MaxConf(threshold=0.5).combine(_sample([1]), [loud, quiet_]).label.tolist() == [[1, 1, 0]]
    with pytest.raises(DataError, match="no input has one"):
        MaxConf().combine(_sample([1]), [PseudoLabel(label)])


def test_a_labelled_image_with_another_images_id_is_refused(cli_run, chair_table, tmp_path):
    root, sets = chair_table
    rows = list(csv.DictReader((root / "select.csv").open()))
    (tmp_path / "other.png").write_bytes((root / rows[0]["image"]).read_bytes())
    renamed = [{**rows[0], "id": "h", "image": str(tmp_path / "other.png"),
                "mask": str(root / rows[0]["mask"])}]
    write_index(tmp_path / "clash.csv", renamed, VOC_CLASSES)
    result = cli_run("combine", "isle", "--data", root / "held.csv", "--in", sets["A"], "--in", sets["B"],
                     "--out", tmp_path / "out", "--select-on", tmp_path / "clash.csv")
    assert result.exit_code == 1 and "other.png: id 'h'" in result.output
    assert "a labelled subset must hold the labelled images' own ids" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()



def test_the_isle_pipeline_refines_its_components_as_the_paper():
    """Seed 001 refines its components with AffinityNet and the dense CRF and reports
    dataset-level class IoU (Table 3): the walk and IRNet reach ISLE through a CRF stage,
    and selection defaults to the dataset-level IoU."""
    from plabel_isle.isle import Isle
    from plabel_kit.pipeline import load_pipeline
    from tests.conftest import REPO

    assert Isle().selection == "dataset"
    for name in ("voc_isle.py", "voc_isle_small.py"):
        pipeline = load_pipeline(REPO / "configs" / "pipelines" / name)
        inputs = pipeline.stage("isle").needs
        assert "randomwalk" not in inputs and "irnet" not in inputs, (name, inputs)
        for component in ("randomwalk", "irnet"):
            refined = [n for n in inputs if pipeline.stage(n).needs == [component]]
            assert len(refined) == 1, (name, component, inputs)
            assert pipeline.stage(refined[0]).spec["type"] == "crf"
