"""The ``randomwalk`` refiner: equal to the dense formulation of IRN / PSA (written here,
brute force) on small images, fast and small on a 375x500 image, raises mIoU over CAM-like
scores on synthetic scenes; errors, resume."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plabel_kit import DataError, LabelSet, PseudoLabel, open_dataset
from tests.conftest import VOC_SAMPLES
from tests.test_crf import cam_like_scores, miou, scenes128, write_cam_like  # noqa: F401 (shared fixture)


# ---- the dense reference: IRN's / PSA's matrices, pair by pair --------------------------

def in_half_disc(dy, dx, radius):
    """IRN's PathIndex / PSA's search directions: (0, 1..r-1) and rows 1..r-1 inside the disc."""
    after = dy > 0 or (dy == 0 and dx > 0)
    return after and dy < radius and abs(dx) < radius and dx * dx + dy * dy < radius * radius


def dense_affinity(height, width, radius, pair_affinity):
    """[n, n] with ones on the diagonal and pair_affinity(y, x, y2, x2) both ways."""
    n = height * width
    matrix = np.eye(n)
    for i in range(n):
        y, x = divmod(i, width)
        for j in range(n):
            y2, x2 = divmod(j, width)
            if in_half_disc(y2 - y, x2 - x, radius):
                matrix[i, j] = matrix[j, i] = pair_affinity(y, x, y2, x2)
    return matrix


def path_max(boundary, y, x, y2, x2):
    """The largest boundary value on the cells within one cell of the segment's line."""
    dy, dx = y2 - y, x2 - x
    cells = [boundary[y + py, x + px] for py in range(min(0, dy), max(0, dy) + 1)
             for px in range(min(0, dx), max(0, dx) + 1) if (dy * px - dx * py) ** 2 / (dy * dy + dx * dx) < 1]
    return max(cells)


def dense_walk(affinity, planes, beta, log_steps):
    """IRN's to_transition_matrix + matmul: T = A^beta / column sums, squared log_steps times."""
    transition = np.power(affinity, beta)
    transition = transition / transition.sum(axis=0, keepdims=True)
    for _ in range(log_steps):
        transition = transition @ transition
    return (planes.reshape(len(planes), -1) @ transition).reshape(planes.shape)


def upsample(planes, stride, size):
    up = F.interpolate(torch.from_numpy(planes)[None], scale_factor=stride, mode="bilinear", align_corners=False)
    return up[0, :, :size[0], :size[1]].numpy()


@pytest.fixture(scope="module")
def scene(scenes):
    """One 64 x 64 synthetic scene with two classes and its CAM-like stride-4 scores."""
    sample = next(s for s in open_dataset(scenes) if len(s.classes) == 2)
    return sample, cam_like_scores(sample.mask, sample.classes, 4)


def test_irn_boundary_walk_equals_the_dense_formulation(scene, tmp_path):
    from plabel_randomwalk.refiner import RandomWalk

    sample, cams = scene
    h, w = cams.shape[1:]
    rng = np.random.default_rng(0)
    boundary = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 1.0)
    boundary = (boundary - boundary.min()) / (boundary.max() - boundary.min())
    np.save(tmp_path / f"{sample.id}.npy", boundary)
    keys = np.asarray(sample.classes)
    out = RandomWalk(affinity="boundary", boundaries=str(tmp_path), device="cpu").refine(
        sample, PseudoLabel(np.zeros(sample.mask.shape, np.uint8), cams, keys, stride=4))

    affinity = dense_affinity(h, w, 5, lambda *pair: 1 - path_max(boundary, *pair))
    walked = dense_walk(affinity, cams * (1 - boundary), beta=10, log_steps=8)
    up = upsample(walked.astype(np.float32), 4, sample.mask.shape)
    peak = up.max()  # IRN: one global max over classes and pixels
    with_background = np.concatenate([np.full((1, *up.shape[1:]), 0.25), up / peak])
    expected = np.concatenate([[0], keys]).astype(np.uint8)[np.argmax(with_background, axis=0)]
    assert out.stride == 4 and list(out.keys) == list(keys)
    np.testing.assert_allclose(out.scores, walked / peak, atol=1e-5)
    np.testing.assert_array_equal(out.label, expected)
    assert 0.5 < (out.label == sample.mask).mean() < 1


def test_psa_image_walk_equals_the_dense_formulation(scene):
    from plabel_randomwalk.refiner import RandomWalk

    sample, cams = scene
    full = np.repeat(np.repeat(cams, 4, axis=1), 4, axis=2)  # stride-1 input, 64 x 64
    background = np.power(1 - full.max(axis=0, keepdims=True), 16)
    planes = np.concatenate([background, full])
    pooled = planes.reshape(len(planes), 8, 8, 8, 8).mean(axis=(2, 4))  # PSA: avg_pool2d(8, 8)
    colours = (sample.image / 255.0).reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))

    def colour_affinity(y, x, y2, x2):
        return np.exp(-np.sum((colours[y, x] - colours[y2, x2]) ** 2) / (2 * 0.1 ** 2))

    walked = dense_walk(dense_affinity(8, 8, 5, colour_affinity), pooled, beta=8, log_steps=8)
    keys = np.concatenate([[0], sample.classes])
    expected = keys.astype(np.uint8)[np.argmax(upsample(walked.astype(np.float32), 8, (64, 64)), 0)]

    out = RandomWalk(recipe="psa", sigma=0.1, device="cpu").refine(
        sample, PseudoLabel(np.zeros((64, 64), np.uint8), full, sample.classes))
    assert out.stride == 8 and list(out.keys) == list(keys)
    np.testing.assert_allclose(out.scores, walked, atol=1e-5)
    np.testing.assert_array_equal(out.label, expected)


def test_stride_one_input_is_pooled_to_the_walk_grid(scene):
    from plabel_randomwalk.refiner import RandomWalk

    sample, cams = scene
    label = np.zeros(sample.mask.shape, np.uint8)
    walker = RandomWalk(device="cpu")
    on_grid = walker.refine(sample, PseudoLabel(label, cams, sample.classes, stride=4))
    full = np.repeat(np.repeat(cams, 4, axis=1), 4, axis=2)
    at_full = walker.refine(sample, PseudoLabel(label, full, sample.classes, stride=1))
    np.testing.assert_allclose(at_full.scores, on_grid.scores, atol=1e-6)
    np.testing.assert_array_equal(at_full.label, on_grid.label)
    with pytest.raises(DataError, match=f"id '{sample.id}': scores are 8x8 at stride 4, which does not cover"):
        walker.refine(sample, PseudoLabel(label, cams[:, :8, :8], sample.classes, stride=4))


def test_a_closed_boundary_stops_the_walk(scene, tmp_path):
    from plabel_randomwalk.refiner import RandomWalk

    sample, cams = scene
    boundary = np.zeros(cams.shape[1:])
    boundary[:, 8] = 1.0
    np.save(tmp_path / f"{sample.id}.npy", boundary)
    left = np.zeros_like(cams)
    left[:, :, :8] = 1.0
    out = RandomWalk(affinity="boundary", boundaries=str(tmp_path), device="cpu").refine(
        sample, PseudoLabel(np.zeros(sample.mask.shape, np.uint8), left, sample.classes, stride=4))
    assert (out.scores[:, :, 8:] == 0).all() and (out.scores[:, :, :8] > 0.99).all()
    assert (out.label[:, 36:] == 0).all() and (out.label[:, :28] != 0).all()


IRN_TIMING = r"""
import json, sys, time, tracemalloc
import numpy as np, torch
torch.set_num_threads(1)
from plabel_kit import PseudoLabel, Sample
from plabel_kit.datasets import load_image
from plabel_randomwalk.refiner import RandomWalk

image_path, inputs, boundaries = sys.argv[1:]
data = np.load(inputs)
walker = RandomWalk(affinity="boundary", boundaries=boundaries, device="cpu")  # IRN's settings

def run(image_id, image, scores):
    sample = Sample(image_id, tuple(data["keys"]), image_path, _image=image)
    label = np.zeros(image.shape[:2], np.uint8)
    return walker.refine(sample, PseudoLabel(label, scores, data["keys"], stride=4))

image = load_image(image_path)
run("small", image[:64, :64], data["scores"][:, :16, :16])  # loads the lazy imports
def status_mb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024

before = status_mb("VmRSS")
start = time.perf_counter()
out = run("big", image, data["scores"])
seconds = time.perf_counter() - start
# this process's peak resident size minus what it held before: an upper bound of the run's growth.
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest).
grown = status_mb("VmHWM") - before
tracemalloc.start()
run("big", image, data["scores"])
traced = tracemalloc.get_traced_memory()[1] / 2 ** 20
print(json.dumps({"seconds": seconds, "peak_growth_mb": grown, "rss_before_mb": before, "tracemalloc_peak_mb": traced,
                  "grid": list(out.scores.shape), "foreground": float((out.label > 0).mean())}))
"""


def test_irn_walk_on_375x500_under_2_s_and_500_mb_on_one_core(tmp_path):
    image_id = "2007_000346"
    mask = cv2.imread(str(VOC_SAMPLES / f"{image_id}_5labels.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (375, 500)
    keys = np.asarray([c for c in np.unique(mask) if 0 < c < 255])
    edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    boundary = np.clip(cv2.GaussianBlur(edges.astype(np.float64), (0, 0), 2.0) * 3, 0, 1)
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "big.npy", boundary)
    np.save(tmp_path / "b" / "small.npy", boundary[:64, :64])
    np.savez(tmp_path / "inputs.npz", scores=cam_like_scores(mask, keys, 4), keys=keys)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", IRN_TIMING, str(VOC_SAMPLES / f"{image_id}_0img.png"),
                             str(tmp_path / "inputs.npz"), str(tmp_path / "b")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print("IRN walk, 375x500, one core:", measured)
    assert measured["grid"][1:] == [94, 125]
    assert 0.05 < measured["foreground"] < 0.9
    assert measured["seconds"] < 2.0
    assert measured["peak_growth_mb"] < 500 and measured["tracemalloc_peak_mb"] < 500


def test_image_affinity_walk_raises_miou_over_cam_like_scores(cli_run, scenes128, tmp_path):
    index, cam = scenes128
    out = tmp_path / "rw"
    result = cli_run("refine", "randomwalk", "--data", index, "--in", cam, "--out", out)
    assert result.exit_code == 0, result.output
    results = {"cam": miou(index, cam), "randomwalk": miou(index, out)}
    print("mIoU on 32 synthetic scenes:", json.dumps({k: round(v, 2) for k, v in results.items()}))
    assert results["randomwalk"] > results["cam"] + 5
    assert LabelSet(out).read_scores(LabelSet(out).ids()[0])[2] == 4


def test_resume_and_the_boundary_option(cli_run, scenes, tmp_path):
    cam = write_cam_like(scenes, tmp_path / "cam")
    out = tmp_path / "rw"
    args = ("refine", "randomwalk", "--data", scenes, "--in", cam.path, "--out", out, "--set", "stride=2")
    assert cli_run(*args).exit_code == 0
    first = {p.name: p.read_bytes() for p in out.rglob("*.*") if p.parent.name in ("labels", "scores")}
    for folder, suffix in (("labels", "png"), ("scores", "npz")):
        (out / folder / f"{cam.ids()[5]}.{suffix}").unlink()
    assert cli_run(*args).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.rglob("*.*") if p.parent.name in ("labels", "scores")} == first

    boundaries = tmp_path / "boundaries"
    boundaries.mkdir()
    for sample in open_dataset(scenes).samples[:3]:
        np.save(boundaries / f"{sample.id}.npy", np.zeros(sample.mask.shape))
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", cam.path, "--out", tmp_path / "b",
                     "--set", "affinity=boundary", "--boundaries", boundaries)
    missing = open_dataset(scenes).samples[3]
    assert result.exit_code == 1
    assert str(boundaries / f"{missing.id}.npy") in result.output and "no boundary map" in result.output
    assert len(LabelSet(tmp_path / "b").ids()) == 3


def test_errors(cli_run, scenes, tmp_path):
    gt = tmp_path / "gt"
    assert cli_run("source", "ground_truth", "--data", scenes, "--out", gt).exit_code == 0
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", gt, "--out", tmp_path / "x")
    first = open_dataset(scenes).samples[0]
    assert result.exit_code == 1 and "walks score maps" in result.output
    assert first.image_path in result.output and repr(first.id) in result.output
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", gt, "--out", tmp_path / "y",
                     "--set", "affinity=affinitnet")
    assert result.exit_code == 1 and "unknown affinity 'affinitnet'; did you mean 'affinitynet'?" in result.output
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", gt, "--out", tmp_path / "y2",
                     "--set", "affinity=affinitynet")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", gt, "--out", tmp_path / "z",
                     "--set", "affinity=boundary")
    assert result.exit_code == 1 and "--boundaries" in result.output
    result = cli_run("refine", "randomwalk", "--data", scenes, "--in", gt, "--out", tmp_path / "z2",
                     "--boundaries", tmp_path)
    assert result.exit_code == 1 and "--boundaries is read by affinity=boundary, not by affinity=image" in result.output


def test_pure_functions_check_their_inputs():
    from plabel_kit.toolkit.affinity import boundary_affinity, image_affinity, neighbour_offsets
    from plabel_kit.toolkit.walk import propagate, walk_operator

    assert len(neighbour_offsets(5)) == 34
    with pytest.raises(ValueError, match="0..1"):
        boundary_affinity(np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="float array"):
        boundary_affinity(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[34, h, w\]"):
        walk_operator(np.zeros((3, 4, 4)), 5, 10)
    operator = walk_operator(image_affinity(np.zeros((4, 5, 3))), 5, 10)
    with pytest.raises(ValueError, match="4x4"):
        propagate(np.zeros((1, 4, 4)), operator, 2)
    # a uniform image links every pair within the radius: 256 steps make any map constant
    walked = propagate(np.arange(20.0).reshape(1, 4, 5), operator, 256)
    assert np.ptp(walked) < 1e-6 and 0 < walked.mean() < 19
