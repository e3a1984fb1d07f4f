"""The ``randomwalk`` refiner: score maps propagated over pixel affinities (IRN, PSA)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import DataError, PseudoLabel, Refiner, Sample
from plabel_kit.arrays import resize_scores, scores_to_labels

from .affinity import boundary_affinity, image_affinity
from .walk import grid_size, max_pool_to_grid, pool_to_grid, propagate, upsample_from_grid, walk_operator

#: per recipe: walk stride, beta, background exponent alpha (None: IRN's threshold rule)
RECIPES = {
    "irn": {"stride": 4, "beta": 10.0, "alpha": None},
    "psa": {"stride": 8, "beta": 8.0, "alpha": 16.0},
}
#: affinity sources; "affinitynet" is PSA's trained one, from the irnet plugin
AFFINITIES = ("image", "boundary", "affinitynet")
#: AffinityNet's training labels: PSA's two-alpha CRF labels or IRN's IR labels
AFFINITY_LABELS = ("psa", "irn")


@dataclass
class RandomWalk(Refiner):
    """Random walk of score maps over pixel affinities (IRN / PSA), with sparse operators.

    Reads the image and the input's score maps (any stride; the label map is not read:
    every pixel is decided again). Writes labels at image size and the walked scores on the
    walk grid (keys as input, plus 0 when a background plane was added; stride = walk stride).

    Recipes (``stride``, ``beta``, ``alpha`` left at None take the recipe's values):

    \b
    - ``irn``: stride 4, beta 10, 2^8 steps. The foreground planes walk; the result,
      upsampled, is divided by its global max and thresholded at ``threshold`` (0.25).
    - ``psa``: stride 8, beta 8, 2^8 steps, background plane (1 - max)^alpha, alpha 16,
      walked with the classes; label = argmax.

    A background plane in the input (key 0) walks too, and the label is then the argmax.

    Affinities (``affinity``), between cells within ``radius`` on the walk grid:

    \b
    - ``image``: colour similarity exp(-|dc|^2 / 2 sigma^2) of cells' mean RGB (0..1); needs
      no training.
    - ``boundary``: IRN's, 1 - max boundary on the path, from ``boundaries``/<id>.npy (float
      [h, w] in 0..1 on the walk grid or at image size); the scores are first multiplied by
      (1 - boundary), as IRN does.
    - ``affinitynet``: PSA's AffinityNet (plugin ``irnet``): loaded from ``affinity_checkpoint``,
      else trained (``affinity_epochs``, ``affinity_crop``; checkpoints in ``<out>/work``)
      on labels of the input, a CAM label set with scores; use with ``recipe=psa``.
      ``affinity_labels``: ``psa`` (PSA's: the CAM scores with background (1 - max)^alpha
      at alpha 4 and 32, each through the softmax-recipe dense CRF, 8 x 8-pooled: confident
      foreground from alpha 4, confident background from alpha 32) or ``irn`` (IRN's IR
      labels: the input's labels in ``mode=ir_labels``, else IR labels of its scores);
      None = ``psa`` with ``recipe=psa``, ``irn`` with ``recipe=irn``.

    ``device``: "auto" (the GPU of this rank when there is one, else CPU), "cpu", "cuda[:n]".
    """

    recipe: str = "irn"
    affinity: str = "image"
    boundaries: str | None = None
    stride: int | None = None
    radius: int = 5
    beta: float | None = None
    log_steps: int = 8
    alpha: float | None = None
    threshold: float = 0.25
    sigma: float = 0.05
    device: str = "auto"
    save_scores: bool = True
    affinity_checkpoint: str | None = None
    affinity_epochs: int = 8
    affinity_crop: int = 448
    affinity_labels: str | None = None

    inputs = ("boundaries", "affinity_checkpoint")
    runtime = ("device",)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}, not {self.affinity!r}")
        if (self.affinity == "boundary") != bool(self.boundaries):
            raise ValueError("affinity=boundary reads boundary maps from --boundaries DIR, and only "
                             "it does")
        if self.boundaries and not Path(self.boundaries).is_dir():
            raise ValueError(f"boundaries: {self.boundaries} is not a folder")
        for name in ("stride", "radius"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.log_steps < 0:
            raise ValueError(f"log_steps must be >= 0, got {self.log_steps}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.affinity_labels is not None:
            if self.affinity_labels not in AFFINITY_LABELS:
                raise ValueError(f"affinity_labels must be one of {', '.join(AFFINITY_LABELS)}, "
                                 f"not {self.affinity_labels!r}")
            if self.affinity != "affinitynet":
                raise ValueError("affinity_labels chooses AffinityNet's training labels: it needs "
                                 "affinity=affinitynet")

    def setting(self, name: str):
        """A parameter, or the recipe's value when it is None."""
        value = getattr(self, name)
        return RECIPES[self.recipe][name] if value is None else value

    def training_labels(self) -> str:
        """``affinity_labels``, or the recipe's own: ``psa`` for ``recipe=psa``, else ``irn``."""
        if self.affinity_labels is not None:
            return self.affinity_labels
        return "psa" if self.recipe == "psa" else "irn"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        return "cpu"

    def fit(self, dataset, labels, workdir: Path) -> None:
        if self.affinity != "affinitynet":
            return
        from plabel_cam.source import _log, pick_device
        from plabel_irnet.affinitynet import AffinityModel, AffinityTraining

        device = pick_device(self.device)
        self._affinitynet = AffinityModel.load(self.affinity_checkpoint, device) if self.affinity_checkpoint \
            else AffinityModel.train(dataset, labels, workdir, device,
                                     AffinityTraining(self.affinity_epochs, crop_size=self.affinity_crop,
                                                      labels=self.training_labels()), _log)

    def refine(self, sample: Sample, pseudo: PseudoLabel) -> PseudoLabel:
        stride = self.setting("stride")
        size = sample.image.shape[:2]
        grid = grid_size(size, stride)
        scores, keys = self.grid_scores(sample, pseudo, grid, stride)
        if self.affinity == "boundary":
            boundary = self.boundary_map(sample, grid, stride)
            affinity = boundary_affinity(boundary, self.radius)
            scores = scores * (1.0 - boundary)
        elif self.affinity == "affinitynet":
            affinity = self._affinitynet.affinity(sample.image, grid, self.radius)
        else:
            colours = pool_to_grid(np.moveaxis(sample.image, -1, 0) / 255.0, stride)
            affinity = image_affinity(np.moveaxis(colours, 0, -1), self.radius, self.sigma)
        operator = walk_operator(affinity, self.radius, self.setting("beta"))
        walked = propagate(scores, operator, 2 ** self.log_steps, self.torch_device())
        up = upsample_from_grid(walked, stride, size)
        if (keys == 0).any():
            label = keys.astype(np.uint8)[np.argmax(up, axis=0)]
        else:
            # IRN: normalise by the global max (not per class), then threshold
            peak = float(up.max(initial=0.0))
            if peak > 0:
                walked, up = walked / peak, up / peak
            label = scores_to_labels(up, keys, self.threshold)
        if not self.save_scores or len(keys) == 0:
            return PseudoLabel(label)
        return PseudoLabel(label, walked.astype(np.float32), keys, stride=stride)

    def grid_scores(self, sample, pseudo, grid, stride):
        """The input's planes on the walk grid, float64 [K, h, w], with keys int64 [K]; adds
        PSA's background plane (computed before pooling, as PSA does) when alpha is set."""
        if pseudo.scores is None:
            raise DataError("randomwalk walks score maps and this pseudo label has none",
                            path=sample.image_path, image_id=sample.id)
        scores, keys = pseudo.scores, np.asarray(pseudo.keys, np.int64)
        if not np.isfinite(scores).all():
            raise DataError("scores hold NaN or infinity", path=sample.image_path, image_id=sample.id)
        (height, width), (h, w) = sample.image.shape[:2], scores.shape[1:]
        if abs(h * pseudo.stride - height) >= pseudo.stride or abs(w * pseudo.stride - width) >= pseudo.stride:
            raise DataError(f"scores are {w}x{h} at stride {pseudo.stride}, which does not cover the "
                            f"{width}x{height} image", path=sample.image_path, image_id=sample.id)
        if pseudo.stride == stride and scores.shape[1:] == grid:
            planes = self.with_background(scores, keys).astype(np.float64)
        else:
            full = resize_scores(scores, sample.image.shape[:2])
            planes = pool_to_grid(self.with_background(full, keys), stride)
        if len(planes) > len(keys):
            keys = np.concatenate([[0], keys]).astype(np.int64)
        return planes, keys

    def with_background(self, scores: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """[bg, scores...] with PSA's (1 - max)^alpha when alpha is set and key 0 is absent."""
        alpha = self.setting("alpha")
        if alpha is None or (keys == 0).any():
            return scores
        top = scores.max(axis=0, keepdims=True) if len(scores) else np.zeros((1, *scores.shape[1:]))
        return np.concatenate([np.power(np.clip(1.0 - top, 0.0, None), alpha), scores])

    def boundary_map(self, sample: Sample, grid: tuple[int, int], stride: int) -> np.ndarray:
        """float64 [h, w] in 0..1 on the walk grid from ``boundaries``/<id>.npy. The hook an
        in-process boundary provider (IRNet) overrides."""
        path = Path(self.boundaries) / f"{sample.id}.npy"
        try:
            boundary = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError("no boundary map for this image", path=path, image_id=sample.id) from None
        except Exception as exc:
            raise DataError(f"cannot read boundary map ({exc})", path=path, image_id=sample.id) from None
        size = sample.image.shape[:2]
        if boundary.ndim != 2 or boundary.shape not in (grid, size):
            raise DataError(f"boundary map is {list(boundary.shape)}; expected the walk grid {list(grid)} "
                            f"or the image size {list(size)}", path=path, image_id=sample.id)
        boundary = boundary.astype(np.float64)
        if not np.isfinite(boundary).all() or boundary.min() < 0 or boundary.max() > 1:
            raise DataError("boundary values must be finite and in 0..1", path=path, image_id=sample.id)
        return boundary if boundary.shape == grid else max_pool_to_grid(boundary, stride)
