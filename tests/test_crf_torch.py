"""The ``crf`` refiner's torch backend: pydensecrf's labels on the VOC samples with both
recipes, batched equal to one by one, and the ``backend`` setting through the CLI."""
import numpy as np
import pytest

from plabel_kit import LabelSet, PseudoLabel, Sample
from plabel_kit.datasets import load_image, load_index_png
from plabel_kit.types import IGNORE

from .conftest import VOC_IDS, VOC_SAMPLES
from .test_crf import cam_like_scores

AGREEMENT = 0.999


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the suite runs on 2 shared cores, where torch's thread pool spends
    more time waiting than working (results do not depend on it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def references():
    """recipe -> (jobs, pydensecrf marginals) on the seven VOC samples: the label recipe on
    the ground-truth masks (255 band unsure), the softmax recipe on CAM-like scores with
    PSA's (1 - max)^4 background; unaries built by the refiner itself."""
    from plabel_kit.toolkit.crf import dense_crf
    from plabel_crf.refiner import DenseCRF

    out = {}
    for recipe, settings in (("label", {}), ("softmax", {"alpha": 4.0})):
        refiner = DenseCRF(recipe=recipe, backend="pydensecrf", workers=0, **settings)
        jobs = []
        for image_id in VOC_IDS:
            mask = load_index_png(VOC_SAMPLES / f"{image_id}_5labels.png")
            classes = tuple(int(c) for c in np.unique(mask) if 0 < c < IGNORE)
            sample = Sample(image_id, classes, str(VOC_SAMPLES / f"{image_id}_0img.png"),
                            _image=load_image(VOC_SAMPLES / f"{image_id}_0img.png"), _mask=mask)
            if recipe == "label":
                pseudo = PseudoLabel(mask)
            else:
                pseudo = PseudoLabel(mask, cam_like_scores(mask, classes), np.asarray(classes, np.int64), stride=4)
            jobs.append(refiner.job(sample, pseudo))
        out[recipe] = (jobs, [dense_crf(j.image, j.unary, j.kernels, j.iterations) for j in jobs])
    return out


@pytest.fixture(scope="module")
def batched(references):
    """recipe -> torch marginals of all seven images in one call."""
    from plabel_crf.torch_crf import dense_crf_batch

    return {recipe: dense_crf_batch([j.image for j in jobs], [j.unary for j in jobs], jobs[0].kernels,
                                    jobs[0].iterations, device="cpu")
            for recipe, (jobs, _) in references.items()}


def agreement(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    same = sum(int((a.argmax(0) == b.argmax(0)).sum()) for a, b in zip(expected, got))
    return same / sum(a[0].size for a in expected)


@pytest.mark.parametrize("recipe", ["label", "softmax"])
def test_torch_labels_agree_with_pydensecrf(references, batched, recipe):
    jobs, expected = references[recipe]
    got = batched[recipe]
    assert len(got) == len(VOC_IDS) == 7
    assert [q.shape for q in got] == [q.shape for q in expected]
    assert len({q.shape[0] for q in got}) > 1  # label counts differ within the batch
    rate = agreement(expected, got)
    print(f"{recipe}: torch and pydensecrf agree on {100 * rate:.4f}% of pixels")
    assert rate >= AGREEMENT
    for q, reference in zip(got, expected):
        assert q.dtype == np.float32
        np.testing.assert_allclose(q.sum(0), 1, atol=1e-5)
        np.testing.assert_allclose(q, reference, atol=1e-3)


def test_batched_equals_one_by_one(references, batched):
    from plabel_crf.torch_crf import dense_crf_batch

    jobs, _ = references["label"]
    jobs, together_all = jobs[:4], batched["label"][:4]
    assert len({job.unary.shape for job in jobs}) == 4  # sizes and label counts differ
    for job, together in zip(jobs, together_all):
        alone, = dense_crf_batch([job.image], [job.unary], job.kernels, job.iterations, device="cpu")
        np.testing.assert_array_equal(alone.argmax(0), together.argmax(0))
        np.testing.assert_allclose(alone, together, atol=1e-6)


def test_zero_iterations_is_the_unary_softmax(references):
    from plabel_crf.torch_crf import dense_crf_batch

    job = references["label"][0][0]
    q, = dense_crf_batch([job.image], [job.unary], job.kernels, 0, device="cpu")
    expected = np.exp(-job.unary) / np.exp(-job.unary).sum(0)
    np.testing.assert_allclose(q.reshape(len(q), -1), expected, atol=1e-6)


def test_cli_backend_torch(cli_run, voc_csv, references, tmp_path):
    gt, out = tmp_path / "gt", tmp_path / "torch"
    assert cli_run("source", "ground_truth", "--data", voc_csv, "--out", gt).exit_code == 0
    result = cli_run("refine", "crf", "--data", voc_csv, "--in", gt, "--out", out, "--set", "backend=torch")
    assert result.exit_code == 0, result.output
    labels = LabelSet(out)
    assert labels.producer["config"]["backend"] == "torch"
    jobs, expected = references["label"]
    same = total = 0
    for image_id, job, q in zip(VOC_IDS, jobs, expected):
        reference = job.keys.astype(np.uint8)[q.argmax(0)]
        mask = load_index_png(VOC_SAMPLES / f"{image_id}_5labels.png")
        reference[mask == IGNORE] = IGNORE  # the label recipe keeps the 255 band
        got = labels.read_label(image_id)
        same, total = same + int((got == reference).sum()), total + got.size
    assert same / total >= AGREEMENT


def test_backend_setting(monkeypatch):
    import torch

    from plabel_crf.refiner import DenseCRF

    assert DenseCRF().backend == ("torch" if torch.cuda.is_available() else "pydensecrf")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert DenseCRF().backend == "torch"
    assert DenseCRF(backend="pydensecrf").config()["backend"] == "pydensecrf"
    with pytest.raises(ValueError, match="backend must be one of auto, pydensecrf, torch"):
        DenseCRF(backend="cuda")


def test_bad_inputs_are_named():
    from plabel_kit.toolkit.crf import RECIPES
    from plabel_crf.torch_crf import dense_crf_batch

    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match=r"unary must be float32 \[n, 20\] for a 4x5 image"):
        dense_crf_batch([image], [np.zeros((2, 21), np.float32)], RECIPES["label"])
    with pytest.raises(ValueError, match="1 images but 2 unaries"):
        dense_crf_batch([image], [np.zeros((2, 20), np.float32)] * 2, RECIPES["label"])
    with pytest.raises(ValueError, match="image must be uint8"):
        dense_crf_batch([image.astype(np.float32)], [np.zeros((2, 20), np.float32)], RECIPES["label"])


def test_gpu_matches_cpu(references, batched):
    """On a GPU the scatter adds in another order: the same labels to float rounding."""
    import torch

    from plabel_crf.torch_crf import dense_crf_batch

    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    for recipe, (jobs, expected) in references.items():
        got = dense_crf_batch([j.image for j in jobs], [j.unary for j in jobs], jobs[0].kernels,
                              jobs[0].iterations, device="cuda")
        assert agreement(batched[recipe], got) >= 0.9999
        assert agreement(expected, got) >= AGREEMENT
        for q, cpu in zip(got, batched[recipe]):
            np.testing.assert_allclose(q, cpu, atol=1e-4)
