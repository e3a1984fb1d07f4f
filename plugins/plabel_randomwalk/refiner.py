"""The ``randomwalk`` refiner: score maps propagated over pixel affinities (IRN, PSA)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import DataError, PseudoLabel, Refiner, RegistryError, Sample
from plabel_kit.arrays import resize_scores
from plabel_kit.toolkit.walk import grid_size, pool_to_grid, walk_scores

#: per recipe: walk stride, beta, background exponent alpha (None: IRN's threshold rule)
RECIPES = {
    "irn": {"stride": 4, "beta": 10.0, "alpha": None},
    "psa": {"stride": 8, "beta": 8.0, "alpha": 16.0},
}
#: the built-in affinities and the plugin (module) that registers each: named in the error
#: when that plugin is not loaded. Any other registered affinity works too.
BUILT_IN_AFFINITIES = {"image": ("randomwalk", "plabel_randomwalk"),
                       "boundary": ("randomwalk", "plabel_randomwalk"),
                       "affinitynet": ("irnet", "plabel_irnet")}
#: RandomWalk parameter -> the affinity parameter it sets, for affinities that declare it
AFFINITY_OPTIONS = {"sigma": "sigma", "boundaries": "boundaries", "affinity_checkpoint": "checkpoint",
                    "affinity_epochs": "epochs", "affinity_crop": "crop_size", "device": "device"}
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

    Affinities (``affinity``), between cells within ``radius`` on the walk grid, are
    components of kind ``affinity`` (:class:`plabel_kit.Affinity`) built from the registry:
    any plugin may register one. This refiner's parameters ``sigma``, ``boundaries``,
    ``affinity_checkpoint`` / ``affinity_epochs`` / ``affinity_crop`` / ``affinity_labels``
    and ``device`` set the affinity's ``sigma``, ``boundaries``, ``checkpoint`` / ``epochs`` /
    ``crop_size`` / ``labels`` and ``device`` when it has them. Built in:

    \b
    - ``image`` (plugin ``randomwalk``): colour similarity exp(-|dc|^2 / 2 sigma^2) of cells'
      mean RGB (0..1); needs no training.
    - ``boundary`` (plugin ``randomwalk``): IRN's, 1 - max boundary on the path, from
      ``boundaries``/<id>.npy (float [h, w] in 0..1 on the walk grid or at image size); the
      scores are first multiplied by (1 - boundary), as IRN does.
    - ``affinitynet`` (plugin ``irnet``): PSA's AffinityNet: loaded from ``affinity_checkpoint``,
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
        for name in ("stride", "radius"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.log_steps < 0:
            raise ValueError(f"log_steps must be >= 0, got {self.log_steps}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.affinity_labels is not None and self.affinity_labels not in AFFINITY_LABELS:
            raise ValueError(f"affinity_labels must be one of {', '.join(AFFINITY_LABELS)}, "
                             f"not {self.affinity_labels!r}")
        self._affinity = self.build_affinity()

    def build_affinity(self):
        """The ``affinity`` component from the registry, given those of this refiner's
        parameters it declares (``AFFINITY_OPTIONS``, ``labels``)."""
        from plabel_kit import get_registry
        from plabel_kit.registry import parameters

        registry = get_registry()
        if not registry.registrants("affinity", self.affinity) and self.affinity in BUILT_IN_AFFINITIES:
            plugin, module = BUILT_IN_AFFINITIES[self.affinity]
            raise RegistryError(f"affinity {self.affinity!r} is registered by no installed plugin ({module}): "
                                f"{_why_not_loaded(plugin)}")
        declared = {p.name for p in parameters(registry.get("affinity", self.affinity))}
        # only boundary maps and training labels are refused when unused: the other options
        # have defaults, which every affinity that does not declare them simply ignores
        if self.boundaries and "boundaries" not in declared:
            raise ValueError(f"--boundaries is read by affinity=boundary, not by affinity={self.affinity}")
        if self.affinity_labels is not None and "labels" not in declared:
            raise ValueError(f"affinity_labels chooses AffinityNet's training labels: it needs "
                             f"affinity=affinitynet, not affinity={self.affinity}")
        config = {target: getattr(self, option) for option, target in AFFINITY_OPTIONS.items()
                  if target in declared}
        if "labels" in declared:
            config["labels"] = self.training_labels()
        return registry.build("affinity", {"type": self.affinity, **config})

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

        from plabel_kit.toolkit.runtime import local_rank

        if torch.cuda.is_available():
            # modulo: more ranks than GPUs on this machine share them
            return f"cuda:{local_rank() % torch.cuda.device_count()}"
        return "cpu"

    def fit(self, dataset, labels, workdir: Path) -> None:
        self._affinity.fit(dataset, labels, workdir)

    def close(self) -> None:
        self._affinity.close()

    def refine(self, sample: Sample, pseudo: PseudoLabel) -> PseudoLabel:
        stride = self.setting("stride")
        size = sample.image.shape[:2]
        scores, keys = self.grid_scores(sample, pseudo, grid_size(size, stride), stride)
        affinity, scores = self._affinity.walk_inputs(sample, scores, stride, self.radius)
        label, walked = walk_scores(scores, keys, affinity, radius=self.radius, beta=self.setting("beta"),
                                    steps=2 ** self.log_steps, stride=stride, size=size,
                                    threshold=self.threshold, device=self.torch_device())
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


def _why_not_loaded(plugin: str) -> str:
    """Why the plugin named ``plugin`` registered nothing: broken (with its reason) or not loaded."""
    from plabel_kit import get_plugins

    for info in get_plugins().all():
        if info.name == plugin and info.problem:
            return f"plugin {plugin!r} is broken ({info.problem})"
    return (f"plugin {plugin!r} is not installed or is disabled (PLABEL_DISABLE_PLUGINS / "
            f"PLABEL_LOAD_PLUGINS)")
