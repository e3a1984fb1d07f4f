"""AffinityNet (PSA, Ahn & Kwak, CVPR 2018) for the ``randomwalk`` refiner: trained on
labels from the input CAM set (PSA's two-alpha CRF labels, ``psa_labels``, or IRN's IR
labels), pairs within radius 5 at stride 8, predicting the walk's affinities. Registered as
the affinity ``affinitynet`` (:class:`AffinityNetAffinity`); the refiner builds it through
the registry and so never imports this plugin."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import Affinity
from plabel_kit.toolkit.checkpoints import load_checkpoint, save_checkpoint
from plabel_kit.toolkit.runtime import barrier, is_main_process, log, pick_device

FINAL = "affinitynet_final.pth"
#: where AffinityNet's training labels come from: PSA's two-alpha CRFs or IRN's IR labels
LABELS = ("psa", "irn")


@dataclass
class AffinityTraining:
    """PSA's schedule (8 epochs, batch 8, crop 448 after a random long-side resize to
    448..768 (crop x 1..12/7), lr 0.1 with 10x for the new layers, weight decay 5e-4, poly
    0.9), pairs within ``radius`` 5 at stride 8.

    ``labels``: ``psa`` (PSA's: the CAM planes with background (1 - max)^alpha at
    ``low_alpha`` 4 and ``high_alpha`` 32, each through the softmax-recipe CRF, 8 x 8-pooled:
    confident foreground from the low alpha, confident background from the high one) or
    ``irn`` (IRN's IR labels of the CAM set, sampled at cell centres). ``frozen_stages``:
    backbone stages kept fixed (mmseg's numbering); None = 0, the stem, when the CAM was
    trained from ``pretrained`` weights (PSA freezes the layers of its ImageNet weights
    before stride 4), else -1."""

    epochs: int = 8
    batch_size: int = 8
    crop_size: int = 448
    lr: float = 0.1
    new_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    radius: int = 5
    seed: int = 0
    labels: str = "psa"
    low_alpha: float = 4.0
    high_alpha: float = 32.0
    frozen_stages: int | None = None

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"affinity labels must be one of {', '.join(LABELS)}, not {self.labels!r}")

    def frozen_for(self, cam_config: dict) -> int:
        """``frozen_stages``, or 0 (the stem) for a CAM trained from pretrained weights, else -1."""
        if self.frozen_stages is not None:
            return self.frozen_stages
        return 0 if cam_config.get("pretrained") else -1


class AffinityModel:
    """A trained AffinityNet and its use by the walk."""

    def __init__(self, net, device):
        self.net, self.device = net.to(device).eval(), device

    @classmethod
    def load(cls, path, device) -> "AffinityModel":
        from .model import AffinityNet

        state = load_checkpoint(path, "AffinityNet checkpoint")
        if "affinitynet" not in state:
            raise ValueError(f"{path}: not an AffinityNet checkpoint")
        net = AffinityNet(state["architecture"]["backbone"])
        net.load_state_dict(state["affinitynet"])
        return cls(net, device)

    @classmethod
    def train(cls, dataset, labels, workdir: Path, device, training: AffinityTraining, log) -> "AffinityModel":
        """Train on ``labels`` (a CAM label set: PSA's labels of its scores, or its IR labels, as
        ``training.labels`` says) unless ``workdir`` holds a finished model; resumes from
        ``workdir/latest.pth``. Backbone from the CAM checkpoint."""
        import torch

        from .data import IrLabels, PairItems, cam_checkpoint
        from .model import AffinityNet
        from .pairs import feature_affinity
        from .train import Schedule, train_affinity

        workdir = Path(workdir)
        final = workdir / FINAL
        if not final.exists():
            weights = cam_checkpoint(labels)
            if weights is None:
                from plabel_kit.errors import LabelSetError

                raise LabelSetError(f"{labels.path}: affinity=affinitynet trains from a CAM label set with its "
                                    f"checkpoint (<set>/work/cam_final.pth); none found")
            torch.manual_seed(training.seed)
            cam_config = labels.producer["config"]
            backbone, frozen = cam_config["backbone"], training.frozen_for(cam_config)
            net = AffinityNet(backbone, frozen)
            net.backbone.load_cam(weights)
            log(f"affinitynet: {backbone} backbone from {weights}"
                + (f", frozen_stages={frozen}" if frozen >= 0 else "") + f"; {training.labels} labels")
            common = dict(stride=8, radius=training.radius, crop=training.crop_size, seed=training.seed,
                          resize_long=(training.crop_size, training.crop_size * 12 // 7))
            if training.labels == "psa":
                from .psa_labels import psa_pair_items

                items = psa_pair_items(dataset, labels, workdir / "psa_labels", low_alpha=training.low_alpha,
                                       high_alpha=training.high_alpha, **common)
            else:
                items = PairItems(dataset, IrLabels(labels), workdir / "ir_labels", **common)
            old, new = net.parameter_groups()
            groups = [{"params": old, "lr": training.lr}, {"params": new, "lr": training.lr * training.new_lr_mult}]
            schedule = Schedule(training.epochs, training.batch_size, training.lr, training.weight_decay, 0.0, 0.9,
                                training.seed, 0)
            train_affinity(net, lambda model, images: feature_affinity(model(images), training.radius), groups,
                           items, schedule, workdir, device, "affinitynet", log)
            if is_main_process():
                save_checkpoint({"affinitynet": net.state_dict(), "architecture": {"backbone": backbone}}, final)
        barrier()  # the other ranks load what rank 0 wrote
        return cls.load(final, device)

    def affinity(self, image: np.ndarray, grid: tuple[int, int], radius: int) -> np.ndarray:
        """uint8 [H, W, 3] -> float64 [D, h, w] affinities on the walk grid."""
        from plabel_kit.toolkit.inference import normalise

        return self.net.grid_affinity(normalise(image).to(self.device), grid, radius)


@dataclass
class AffinityNetAffinity(Affinity):
    """PSA's AffinityNet affinities (Ahn & Kwak, CVPR 2018): loaded from ``checkpoint``, else
    trained by ``fit`` (``epochs``, ``crop_size``, ``labels``: see :class:`AffinityTraining`;
    checkpoints in the refiner's ``<out>/work``) on the refiner's input, a CAM label set
    with scores and its CAM checkpoint. Reads the image; the scores walk unchanged."""

    checkpoint: str | None = None
    epochs: int = 8
    crop_size: int = 448
    labels: str = "psa"
    device: str = "auto"

    inputs = ("checkpoint",)
    runtime = ("device",)

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, not {self.labels!r}")
        self._model: AffinityModel | None = None

    def fit(self, dataset, labels, workdir: Path) -> None:
        device = pick_device(self.device)
        self._model = AffinityModel.load(self.checkpoint, device) if self.checkpoint \
            else AffinityModel.train(dataset, labels, workdir, device,
                                     AffinityTraining(self.epochs, crop_size=self.crop_size, labels=self.labels), log)

    def walk_inputs(self, sample, scores, stride, radius):
        if self._model is None:
            raise RuntimeError("affinitynet: fit() must run before walk_inputs()")
        return self._model.affinity(sample.image, scores.shape[1:], radius), scores

    def close(self) -> None:
        self._model = None  # the network's (GPU) memory
