"""The ``crf`` refiner: identical to pydensecrf called directly, on real VOC images; raises
mIoU over CAM-like score maps on synthetic scenes; validation, pool, resume."""
import json

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from plabel_kit import LabelSet, PseudoLabel, Sample, open_dataset
from plabel_kit.arrays import resize_scores, scores_to_labels
from plabel_kit.evaluation import evaluate
from plabel_kit.stages import open_writer
from plabel_kit.synth import make_scenes

CAM_THRESHOLD = 0.25


# ---- a CAM stand-in (the CAM source is another issue) ---------------------------------

def cam_like_scores(mask: np.ndarray, classes, stride: int = 4) -> np.ndarray:
    """Soft, coarse, under-covering maps from ground truth, deterministic: per class the
    distance to the object's border (1 at its centre, 0 at the border), blurred by 1/24 of
    the image side, area-resized to the stride and max-normalised. mask uint8 [H, W] ->
    float32 [K, ceil(H / stride), ceil(W / stride)]."""
    height, width = mask.shape
    grid = ((width - 1) // stride + 1, (height - 1) // stride + 1)
    planes = []
    for c in classes:
        depth = cv2.distanceTransform((mask == c).astype(np.uint8), cv2.DIST_L2, 5)
        peak = cv2.GaussianBlur(depth / max(float(depth.max()), 1.0), (0, 0), max(height, width) / 24)
        coarse = cv2.resize(peak, grid, interpolation=cv2.INTER_AREA)
        planes.append(coarse / max(float(coarse.max()), 1e-6))
    return np.asarray(planes, np.float32).reshape(len(planes), grid[1], grid[0])


def write_cam_like(index, out, stride: int = 4) -> LabelSet:
    """A label set of CAM-like scores (stride 4, keys = tagged classes) and their labels at
    IRN's background threshold 0.25."""
    dataset = open_dataset(index)
    writer = open_writer(out, dataset, {"kind": "label_source", "type": "cam_like", "config": {}, "version": "test"})
    for sample in dataset:
        keys = np.asarray(sample.classes, np.int64)
        scores = cam_like_scores(sample.mask, sample.classes, stride)
        label = scores_to_labels(resize_scores(scores, sample.mask.shape), keys, CAM_THRESHOLD)
        writer.write(sample.id, PseudoLabel(label, scores, keys, stride=stride))
    writer.finish()
    return LabelSet(out)


def miou(index, path) -> float:
    return 100 * evaluate(open_dataset(index), LabelSet(path), progress=False)["miou"]


@pytest.fixture(scope="module")
def scenes128(tmp_path_factory):
    """32 synthetic scenes of 128 px (large enough for a stride-4 walk) with CAM-like scores."""
    root = tmp_path_factory.mktemp("scenes128")
    index = make_scenes(root / "data", n=32, size=128, seed=10, progress=False)
    write_cam_like(index, root / "cam")
    return index, root / "cam"


# ---- direct pydensecrf calls, as the reference code makes them --------------------------

def direct_crf(image, unary, n, gaussian, bilateral):
    """pydensecrf as IRN / PSA / DeepLab call it: 10 iterations; returns Q [n, H, W]."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=gaussian[0], compat=gaussian[1])
    crf.addPairwiseBilateral(sxy=bilateral[0], srgb=bilateral[1], rgbim=np.ascontiguousarray(np.copy(image)),
                             compat=bilateral[2])
    return np.array(crf.inference(10)).reshape(n, height, width)


def test_three_recipes_identical_to_direct_pydensecrf_on_voc(cli_run, voc_csv, tmp_path):
    gt, cam = tmp_path / "gt", tmp_path / "cam"
    assert cli_run("source", "ground_truth", "--data", voc_csv, "--out", gt).exit_code == 0
    write_cam_like(voc_csv, cam)
    runs = {"label": (gt, ["recipe=label"]), "softmax": (cam, ["recipe=softmax", "alpha=4.0"]),
            "deeplab": (tmp_path / "softmax", ["recipe=deeplab"])}
    for recipe, (source, settings) in runs.items():
        args = [a for s in settings for a in ("--set", s)]
        result = cli_run("refine", "crf", "--data", voc_csv, "--in", source, "--out", tmp_path / recipe, *args,
                         "--set", "backend=pydensecrf", "--set", "scale=1")  # the published widths
        assert result.exit_code == 0, result.output
    dataset = open_dataset(voc_csv)
    assert len(dataset) == 7
    for sample in dataset:
        image = sample.image
        # label: IRN's crf_inference_label on the image's classes
        keys = np.union1d([0], sample.classes)
        compact = np.searchsorted(keys, sample.mask)
        q = direct_crf(image, unary_from_labels(compact, len(keys), gt_prob=0.7, zero_unsure=False),
                       len(keys), (3, 3), (50, 5, 10))
        _assert_same(LabelSet(tmp_path / "label"), sample.id, keys, q)
        # softmax: PSA's crf_inference on [(1 - max)^alpha, cams]
        scores, score_keys, _ = LabelSet(cam).read_scores(sample.id)
        cams = resize_scores(scores, image.shape[:2])
        probs = np.concatenate([np.power(1 - cams.max(0, keepdims=True), 4.0), cams])
        q = direct_crf(image, unary_from_softmax(probs), len(probs), (3, 3), (80, 13, 10))
        _assert_same(LabelSet(tmp_path / "softmax"), sample.id, np.concatenate([[0], score_keys]), q)
        # deeplab on the softmax run's marginals (a background plane of its own, key 0)
        probs, probs_keys, stride = LabelSet(tmp_path / "softmax").read_scores(sample.id)
        assert stride == 1 and probs_keys[0] == 0
        q = direct_crf(image, unary_from_softmax(probs), len(probs), (1, 3), (67, 3, 4))
        _assert_same(LabelSet(tmp_path / "deeplab"), sample.id, probs_keys, q)


def _assert_same(label_set, image_id, keys, marginals):
    expected = np.asarray(keys, np.uint8)[np.argmax(marginals, axis=0)]
    np.testing.assert_array_equal(label_set.read_label(image_id), expected, err_msg=image_id)
    scores, saved_keys, _ = label_set.read_scores(image_id)
    np.testing.assert_array_equal(saved_keys, keys)
    np.testing.assert_allclose(scores, marginals, atol=1e-3)  # stored as float16


def test_label_recipe_keeps_the_ignore_band_and_treats_it_as_unsure(tmp_path):
    from plabel_kit.toolkit.crf import crf_label_map
    from plabel_crf.refiner import DenseCRF

    dataset = open_dataset(_voc_subset(tmp_path, 2))
    for sample in dataset:
        edges = cv2.morphologyEx(sample.mask, cv2.MORPH_GRADIENT, np.ones((9, 9), np.uint8)) > 0
        banded = np.where(edges, 255, sample.mask).astype(np.uint8)
        keys = np.union1d([0], sample.classes)
        unsure_first = np.where(banded == 255, 0, np.searchsorted(keys, banded) + 1)
        q = direct_crf(sample.image, unary_from_labels(unsure_first, len(keys), gt_prob=0.7, zero_unsure=True),
                       len(keys), (3, 3), (50, 5, 10))
        decided = keys.astype(np.uint8)[q.argmax(0)]
        np.testing.assert_array_equal(crf_label_map(sample.image, banded, sample.classes, scale=1), decided)
        refined = DenseCRF(backend="pydensecrf", workers=0, scale=1).refine(sample, PseudoLabel(banded))
        np.testing.assert_array_equal(refined.label, np.where(edges, 255, decided))
        redecided = DenseCRF(backend="pydensecrf", workers=0, keep_ignore=False, scale=1).refine(
            sample, PseudoLabel(banded))
        np.testing.assert_array_equal(redecided.label, decided)
        assert edges.sum() > 1000 and (decided[edges] != sample.mask[edges]).any()


def _voc_subset(tmp_path, count):
    from tests.conftest import VOC_IDS, VOC_SAMPLES, write_index
    from plabel_kit.datasets import VOC_CLASSES

    rows = []
    for image_id in VOC_IDS[:count]:
        mask = cv2.imread(str(VOC_SAMPLES / f"{image_id}_5labels.png"), cv2.IMREAD_UNCHANGED)
        rows.append({"id": image_id, "image": str(VOC_SAMPLES / f"{image_id}_0img.png"),
                     "mask": str(VOC_SAMPLES / f"{image_id}_5labels.png"),
                     "labels": ";".join(VOC_CLASSES[c] for c in np.unique(mask) if 0 < c < 255)})
    return write_index(tmp_path / "voc_subset" / "index.csv", rows, VOC_CLASSES)


def test_crf_raises_miou_over_cam_like_scores(cli_run, scenes128, tmp_path):
    index, cam = scenes128
    results = {"cam": miou(index, cam)}
    for recipe in ("label", "softmax"):
        out = tmp_path / recipe
        result = cli_run("refine", "crf", "--data", index, "--in", cam, "--out", out, "--set", f"recipe={recipe}")
        assert result.exit_code == 0, result.output
        results[recipe] = miou(index, out)
    print("mIoU on 32 synthetic scenes:", json.dumps({k: round(v, 2) for k, v in results.items()}))
    assert results["label"] > results["cam"] + 10
    assert results["softmax"] > results["cam"] + 10


def test_label_recipe_from_scores_is_irns_threshold_then_crf(scenes):
    """With ``from_scores`` the unary comes from the scores, so the input map's 255 band
    (an IR-label set's uncertain pixels) does not apply: the CRF decides every pixel, as
    IRN's threshold-then-CRF; ``keep_ignore=true`` re-imposes the band."""
    from plabel_kit.toolkit.crf import crf_label_map
    from plabel_crf.refiner import DenseCRF

    sample = next(s for s in open_dataset(scenes) if len(s.classes) == 2)
    keys = np.asarray(sample.classes)
    scores = cam_like_scores(sample.mask, sample.classes)
    edges = cv2.morphologyEx(sample.mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    band = np.where(cv2.dilate(edges.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0, 255, sample.mask)
    pseudo = PseudoLabel(band.astype(np.uint8), scores, keys, stride=4)
    assert 0.05 < (band == 255).mean() < 0.5
    for threshold in (0.30, 0.05):  # IRN's confident foreground / background
        thresholded = scores_to_labels(resize_scores(scores, sample.mask.shape), keys, threshold)
        expected = crf_label_map(sample.image, thresholded, keys)
        refined = DenseCRF(backend="pydensecrf", workers=0, from_scores=True, threshold=threshold).refine(sample, pseudo)
        np.testing.assert_array_equal(refined.label, expected)
        assert not (refined.label == 255).any()
        kept = DenseCRF(backend="pydensecrf", workers=0, from_scores=True, threshold=threshold,
                        keep_ignore=True).refine(sample, pseudo)
        np.testing.assert_array_equal(kept.label, np.where(band == 255, 255, expected))
    assert (expected != thresholded).any()


def test_pool_gives_the_in_process_result(scenes):
    from plabel_crf.refiner import DenseCRF

    dataset = open_dataset(scenes)
    samples = dataset.samples[:6]
    pseudos = [PseudoLabel(cv2.erode(s.mask, np.ones((5, 5), np.uint8))) for s in samples]
    refiner = DenseCRF(backend="pydensecrf", workers=2)
    pooled = refiner.refine_batch(samples, pseudos)
    refiner.close()
    again = refiner.refine_batch(samples[:2], pseudos[:2])  # a closed refiner starts a new pool
    refiner.close()
    alone = DenseCRF(backend="pydensecrf", workers=0).refine_batch(samples, pseudos)
    for a, b in zip(pooled + again, alone + alone[:2]):
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert any((a.label != p.label).any() for a, p in zip(pooled, pseudos))


def test_resume_and_refusal_to_mix(cli_run, scenes, tmp_path):
    out = tmp_path / "crf"
    gt = tmp_path / "gt"
    assert cli_run("source", "ground_truth", "--data", scenes, "--out", gt).exit_code == 0
    args = ("refine", "crf", "--data", scenes, "--in", gt, "--out", out, "--set", "save_scores=false")
    assert cli_run(*args).exit_code == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    (out / "labels" / sorted(first)[3]).unlink()
    assert cli_run(*args).exit_code == 0
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first
    assert not any((out / "scores").iterdir())
    result = cli_run(*args, "--set", "iterations=5")
    assert result.exit_code == 1 and "refusing to mix" in result.output


def test_errors_name_the_file_and_image(cli_run, scenes, tmp_path):
    gt = tmp_path / "gt"
    assert cli_run("source", "ground_truth", "--data", scenes, "--out", gt).exit_code == 0
    result = cli_run("refine", "crf", "--data", scenes, "--in", gt, "--out", tmp_path / "x", "--set", "recipe=softmax")
    assert result.exit_code == 1
    first = open_dataset(scenes).samples[0]
    line = result.output.strip()
    assert "\n" not in line and first.image_path in line and repr(first.id) in line and "needs score maps" in line
    result = cli_run("refine", "crf", "--data", scenes, "--in", gt, "--out", tmp_path / "y", "--set", "recipe=psa")
    assert result.exit_code == 1 and "softmax, label, deeplab" in result.output


def test_pure_functions_validate_before_pydensecrf():
    from plabel_kit.toolkit.crf import RECIPES, crf_labels, crf_scores, dense_crf

    image = np.zeros((6, 8, 3), np.uint8)
    labels = np.zeros((6, 8), np.int64)
    with pytest.raises(ValueError, match="C-contiguous"):
        crf_labels(image[:, ::-1], labels, 2)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        crf_labels(image.astype(np.float32), labels, 2)
    with pytest.raises(ValueError, match="labels are 8x5 but the image is 8x6"):
        crf_labels(image, labels[:5], 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        crf_labels(image, labels + 2, 2)
    with pytest.raises(ValueError, match=r"float32 \[n, 48\]"):
        dense_crf(image, np.zeros((2, 48)), RECIPES["label"])
    with pytest.raises(ValueError, match="NaN"):
        crf_scores(image, np.full((2, 6, 8), np.nan, np.float32))
    assert crf_labels(image, labels, 1).shape == (1, 6, 8)  # one label: nothing to decide
    flat = crf_scores(image, np.stack([np.full((6, 8), 0.2, np.float32), np.full((6, 8), 0.8, np.float32)]))
    assert flat.shape == (2, 6, 8) and (flat.argmax(0) == 1).all()


def test_refiner_checks_sizes_once_with_the_image_id(tmp_path):
    from plabel_crf.refiner import DenseCRF
    from plabel_kit import DataError

    sample = Sample("s1", (1,), str(tmp_path / "s1.png"), _image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"s1\.png: id 's1': label is 6x6 but the image is 8x8"):
        DenseCRF(backend="pydensecrf", workers=0).refine(sample, PseudoLabel(np.zeros((6, 6), np.uint8)))
    scores = PseudoLabel(np.zeros((8, 8), np.uint8), np.ones((1, 2, 2), np.float32), [1], stride=2)
    with pytest.raises(DataError, match="does not cover the 8x8 image"):
        DenseCRF(backend="pydensecrf", workers=0, recipe="softmax").refine(sample, scores)


# ---- kernels that scale with the image ---------------------------------------------------

def test_scale_auto_equals_scale_1_on_a_500_pixel_image_and_halves_at_250(tmp_path):
    from plabel_kit.toolkit.crf import RECIPES, crf_label_map, kernel_scale
    from plabel_crf.refiner import DenseCRF

    dataset = open_dataset(_voc_subset(tmp_path, 3))
    sample = next(s for s in dataset if max(s.image.shape[:2]) == 500)
    auto, one = DenseCRF(backend="pydensecrf", workers=0), DenseCRF(backend="pydensecrf", workers=0, scale=1)
    assert auto.config()["scale"] == "auto" and auto.kernels_for(sample.image.shape[:2]) == RECIPES["label"]
    pseudo = PseudoLabel(cv2.erode(sample.mask, np.ones((9, 9), np.uint8)))
    a, b = auto.refine(sample, pseudo), one.refine(sample, pseudo)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert (a.label != pseudo.label).any()  # the CRF did something
    half = auto.kernels_for((188, 250))
    assert (half.gaussian_sxy, half.bilateral_sxy) == (1.5, 25.0)  # spatial widths only
    assert (half.bilateral_srgb, half.gaussian_compat, half.bilateral_compat) == (5, 3, 10)
    assert DenseCRF(scale=2.0).kernels_for((188, 250)).bilateral_sxy == 100.0
    assert kernel_scale("auto", (144, 256)) == 256 / 500
    # the pure function scales too, and differs from the published widths on a small image
    small = cv2.resize(sample.image, (250, 188), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(pseudo.label, (250, 188), interpolation=cv2.INTER_NEAREST)
    assert not np.array_equal(crf_label_map(small, labels, sample.classes),
                              crf_label_map(small, labels, sample.classes, scale=1))
    np.testing.assert_array_equal(crf_label_map(small, labels, sample.classes),
                                  crf_label_map(small, labels, sample.classes, scale=0.5))
    with pytest.raises(ValueError, match="scale must be 'auto' or a positive number"):
        DenseCRF(scale="big")
    with pytest.raises(ValueError, match="scale must be 'auto' or a positive number"):
        DenseCRF(scale=0.0)


def test_torch_backend_gets_the_same_scaled_widths(monkeypatch):
    """Images of two sizes in one batch: one torch call per size, each with its image's widths."""
    import plabel_crf.torch_crf as torch_crf
    from plabel_crf.refiner import DenseCRF

    calls = []

    def record(images, unaries, kernels, iterations):
        calls.append(([im.shape[:2] for im in images], kernels))
        return [np.ones((len(u), *im.shape[:2]), np.float32) / len(u) for im, u in zip(images, unaries)]

    monkeypatch.setattr(torch_crf, "dense_crf_batch", record)
    refiner = DenseCRF(backend="torch")
    samples, pseudos = [], []
    for k, side in enumerate((100, 250, 100)):
        mask = np.zeros((side // 2, side), np.uint8)
        mask[5:20, 5:30] = 1
        samples.append(Sample(f"s{k}", (1,), f"s{k}.png", _image=np.zeros((side // 2, side, 3), np.uint8)))
        pseudos.append(PseudoLabel(mask))
    out = refiner.refine_batch(samples, pseudos)
    assert len(out) == 3 and len(calls) == 2
    for shapes, kernels in calls:
        assert len(set(shapes)) == 1
        assert kernels == refiner.kernels_for(shapes[0]) == pydensecrf_kernels(samples, pseudos, shapes[0])
    assert sorted(len(shapes) for shapes, _ in calls) == [1, 2]


def pydensecrf_kernels(samples, pseudos, size):
    """The kernels the pydensecrf backend's job for an image of ``size`` carries."""
    from plabel_crf.refiner import DenseCRF

    refiner = DenseCRF(backend="pydensecrf", workers=0)
    return next(refiner.job(s, p).kernels for s, p in zip(samples, pseudos) if s.image.shape[:2] == size)
