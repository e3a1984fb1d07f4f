"""The ``crf`` refiner: a dense CRF per image, images spread over a process pool."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from plabel_kit import DataError, PseudoLabel, Refiner, Sample
from plabel_kit.arrays import foreground_planes, resize_scores, scores_to_labels
from plabel_kit.toolkit.crf import (GT_PROB, ITERATIONS, RECIPES, Kernels, compact_labels, dense_crf, kernel_scale,
                                    label_keys, label_unary, psa_background, scaled, softmax_unary)
from plabel_kit.toolkit.runtime import available_cores, process_pool
from plabel_kit.types import IGNORE

#: recipes whose unary comes from scores, not from the label map
SCORE_RECIPES = ("softmax", "deeplab")
BACKENDS = ("pydensecrf", "torch")


class CrfJob(NamedTuple):
    """One image's work, picklable for the pool: validated arrays and settings."""

    image: np.ndarray  # uint8 [H, W, 3], C-contiguous
    unary: np.ndarray  # float32 [n, H * W]
    keys: np.ndarray  # int64 [n]: the class id of each CRF label
    kernels: Kernels  # spatial widths already scaled to this image
    iterations: int


def run_job(job: CrfJob) -> np.ndarray:
    """Marginals float32 [n, H, W] of one job (runs in a pool worker)."""
    return dense_crf(job.image, job.unary, job.kernels, job.iterations)


def default_backend() -> str:
    """torch when a GPU is present (where it is many times faster), else pydensecrf."""
    import torch

    return "torch" if torch.cuda.is_available() else "pydensecrf"


@dataclass
class DenseCRF(Refiner):
    """Dense CRF (pydensecrf) with the WSSS recipes of PSA, IRN and DeepLab (``plabel_kit.toolkit.crf``).

    Reads the image and the input pseudo label (label map; scores for the score recipes).
    Writes the refined label map and, with ``save_scores``, the CRF marginals as scores
    (stride 1, background plane first).

    \b
    - ``label`` (IRN / Puzzle-CAM / CSRM; the default): unary from the label map
      (gt_prob 0.7, zero_unsure False); gaussian 3/3, bilateral sxy 50 srgb 5 compat 10.
      The CRF's labels are background, the image's tagged classes and any class in the map
      (in the scores too with ``from_scores``). 255 pixels enter as unsure (uniform unary)
      and stay 255 in the output (``keep_ignore``): the CRF cleans the certain regions'
      borders and never turns an uncertain pixel into a certain one. ``from_scores`` makes
      the labels from the scores with background ``threshold`` instead (IRN: 0.30 / 0.05);
      the input map's 255 band then does not apply and the CRF decides every pixel
      (``keep_ignore=true`` re-imposes it).
    - ``softmax`` (PSA): unary -log(p) from the score planes (resized to the image), with a
      background plane: the scores' own (key 0) when present, else PSA's (1 - max)^alpha
      when ``alpha`` is set (PSA: 4 / 32), else a constant plane ``threshold``. Gaussian
      3/3, bilateral sxy 80 srgb 13 compat 10. Every pixel is decided again (the input's
      255 band is not read unless ``keep_ignore``).
    - ``deeplab`` (DeepLab-v2): as ``softmax`` with gaussian 1/3, bilateral 67/3/4.

    Kernel parameters left at None take the recipe's values. ``scale`` multiplies both
    spatial widths (gaussian_sxy, bilateral_sxy, the recipe's or set ones): ``auto`` (the
    default) = the image's longer side / 500, the PASCAL VOC size the recipes were tuned on,
    so a kernel covers the same share of any image; a number; 1 = the published absolute
    widths. ``backend``: ``pydensecrf``
    (``workers`` processes run the images of a batch in parallel; None: all cores; 0 or 1:
    in this process) or ``torch`` (the same model, :mod:`plabel_crf.torch_crf`, a batch per
    call, on the GPU when there is one; labels agree with pydensecrf's to float rounding,
    not bit for bit, so the two are not mixed on resume); ``auto``: torch when a GPU is
    present, else pydensecrf (the manifest records the one chosen).
    """

    recipe: str = "label"
    iterations: int = ITERATIONS
    gaussian_sxy: float | None = None
    gaussian_compat: float | None = None
    bilateral_sxy: float | None = None
    bilateral_srgb: float | None = None
    bilateral_compat: float | None = None
    gt_prob: float = GT_PROB
    from_scores: bool = False
    threshold: float = 0.15
    alpha: float | None = None
    keep_ignore: bool | None = None
    scale: float | str = "auto"
    save_scores: bool = True
    workers: int | None = None
    backend: str = "auto"

    batch_size = 32
    runtime = ("workers",)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not 0 < self.gt_prob < 1:
            raise ValueError(f"gt_prob must be in (0, 1), got {self.gt_prob}")
        if self.from_scores and self.recipe != "label":
            raise ValueError("from_scores applies to the label recipe; the score recipes always "
                             "read the scores")
        if self.backend == "auto":
            self.backend = default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        for name, value in self.kernels()._asdict().items():
            if value <= 0 and not name.endswith("compat"):
                raise ValueError(f"{name} must be > 0, got {value}")
        kernel_scale(self.scale, (1, 1))  # 'auto' or a positive number, else ValueError

    def kernels_for(self, size: tuple[int, int]) -> Kernels:
        """The kernels for an image of ``size`` (H, W): spatial widths times ``scale``."""
        return scaled(self.kernels(), kernel_scale(self.scale, size))

    def kernels(self) -> Kernels:
        """The recipe's kernels with this refiner's overrides."""
        base = RECIPES[self.recipe]
        return Kernels(*(base[i] if getattr(self, name) is None else getattr(self, name)
                         for i, name in enumerate(Kernels._fields)))

    def keeps_ignore(self) -> bool:
        """Whether the input's 255 pixels stay 255: by default only when the label recipe's
        unary comes from that label map (not ``from_scores``, whose unary has no band)."""
        if self.keep_ignore is not None:
            return self.keep_ignore
        return self.recipe == "label" and not self.from_scores

    # ---- one image ------------------------------------------------------------------

    def refine(self, sample: Sample, pseudo: PseudoLabel) -> PseudoLabel:
        return self.refine_batch([sample], [pseudo])[0]

    def refine_batch(self, samples: Sequence[Sample], pseudos: Sequence[PseudoLabel]) -> list[PseudoLabel]:
        jobs = [self.job(s, p) for s, p in zip(samples, pseudos, strict=True)]
        marginals = self._map(jobs)
        return [self.output(job, q, p) for job, q, p in zip(jobs, marginals, pseudos)]

    def job(self, sample: Sample, pseudo: PseudoLabel) -> CrfJob:
        """Validate one image's inputs (DataError naming file and id) and build its unary."""
        image = np.ascontiguousarray(sample.image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"crf needs an RGB image [H, W, 3], got {list(image.shape)}",
                            path=sample.image_path, image_id=sample.id)
        size = image.shape[:2]
        if pseudo.label.shape != size:
            raise DataError(f"label is {pseudo.label.shape[1]}x{pseudo.label.shape[0]} but the image "
                            f"is {size[1]}x{size[0]}", path=sample.image_path, image_id=sample.id)
        try:
            if self.recipe == "label":
                unary, keys = self._label_unary(sample, pseudo, size)
            else:
                unary, keys = self._score_unary(sample, pseudo, size)
        except ValueError as exc:
            raise DataError(f"crf: {exc}", path=sample.image_path, image_id=sample.id) from None
        return CrfJob(image, unary, keys, self.kernels_for(size), self.iterations)

    def output(self, job: CrfJob, marginals: np.ndarray, pseudo: PseudoLabel) -> PseudoLabel:
        """Label = the class id of the most probable CRF label, 255 band kept as configured."""
        label = job.keys.astype(np.uint8)[np.argmax(marginals, axis=0)]
        if self.keeps_ignore():
            label[pseudo.label == IGNORE] = IGNORE
        if self.save_scores:
            return PseudoLabel(label, marginals, job.keys, stride=1)
        return PseudoLabel(label)

    def _label_unary(self, sample, pseudo, size):
        if self.from_scores:
            scores, score_keys = self._scores(sample, pseudo, size)
            labels = scores_to_labels(scores, score_keys, self.threshold)
            extra = score_keys
        else:
            labels, extra = pseudo.label, ()
        keys = label_keys(labels, np.union1d(sample.classes, extra))
        return label_unary(compact_labels(labels, keys), len(keys), self.gt_prob), keys

    def _score_unary(self, sample, pseudo, size):
        scores, keys = self._scores(sample, pseudo, size)
        foreground, fg_keys = foreground_planes(scores, keys)
        if (keys == 0).any():
            background = scores[keys == 0][:1]
        elif self.alpha is not None:
            background = psa_background(foreground, self.alpha)
        else:
            background = np.full((1, *size), self.threshold, np.float32)
        probs = np.concatenate([background, foreground]).astype(np.float32)
        return softmax_unary(probs), np.concatenate([[0], fg_keys]).astype(np.int64)

    def _scores(self, sample, pseudo, size):
        """float32 [K, H, W] at the image's size and int64 keys [K]."""
        if pseudo.scores is None:
            raise DataError(f"the {self.recipe} recipe{' with from_scores' if self.from_scores else ''} "
                            f"needs score maps and this pseudo label has none (recipe=label refines "
                            f"label maps)", path=sample.image_path, image_id=sample.id)
        height, width = size
        h, w = pseudo.scores.shape[1:]
        stride = pseudo.stride
        if abs(h * stride - height) >= stride or abs(w * stride - width) >= stride:
            raise DataError(f"scores are {w}x{h} at stride {stride}, which does not cover the "
                            f"{width}x{height} image", path=sample.image_path, image_id=sample.id)
        if not np.isfinite(pseudo.scores).all():
            raise DataError("scores hold NaN or infinity", path=sample.image_path, image_id=sample.id)
        return resize_scores(pseudo.scores, size), np.asarray(pseudo.keys, np.int64)

    # ---- the pool -------------------------------------------------------------------

    def worker_count(self) -> int:
        return available_cores() if self.workers is None else self.workers

    def _map(self, jobs: list[CrfJob]) -> list[np.ndarray]:
        if self.backend == "torch":
            from .torch_crf import dense_crf_batch

            # one call per kernel set: with scale=auto, images of different sizes differ
            marginals: list = [None] * len(jobs)
            for kernels in dict.fromkeys(job.kernels for job in jobs):
                group = [k for k, job in enumerate(jobs) if job.kernels == kernels]
                found = dense_crf_batch([jobs[k].image for k in group], [jobs[k].unary for k in group], kernels,
                                        self.iterations)
                for k, q in zip(group, found):
                    marginals[k] = q
            return marginals
        workers = min(self.worker_count(), len(jobs))
        if workers <= 1:
            return [run_job(job) for job in jobs]
        return list(self._pool(workers).map(run_job, jobs))

    def close(self):
        """Shut the worker pool down now (it also goes when the refiner is collected)."""
        pool = self.__dict__.pop("_executor", None)
        self.__dict__.pop("_executor_size", None)
        if pool is not None:
            pool.shutdown()

    def _pool(self, workers: int):
        """A pool kept across batches (started once per stage), shut down with the refiner; forked
        (the workers run only numpy and pydensecrf, which are safe in a forked child)."""
        pool = self.__dict__.get("_executor")
        if pool is None or self.__dict__.get("_executor_size", 0) < workers:
            if pool is not None:
                pool.shutdown()
            pool = process_pool(workers)
            weakref.finalize(self, pool.shutdown)
            self.__dict__.update(_executor=pool, _executor_size=workers)
        return pool
