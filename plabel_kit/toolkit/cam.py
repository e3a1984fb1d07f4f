"""The CAM classifier (IRN's ``resnet50_cam.Net``: a ResNet, global average pooling, a 1x1
classifier without bias), its checkpoint files, and IRN's IR labels made from its maps
(``cam_to_ir_label``; Ahn et al., CVPR 2019, github.com/jiwoon-ahn/irn).

A CAM checkpoint is a dict ``{"model": state_dict, "architecture": {"backbone",
"output_stride", "classes"}}`` (``classes`` with background first): what ``plabel source cam``
writes as ``<out>/work/cam_final.pth`` and what CSRM, IRNet and the CAM embedder read."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..arrays import scores_to_labels, uncertain_band
from .backbones import build_backbone
from .checkpoints import load_checkpoint, save_checkpoint


class CamNet(nn.Module):
    """features [B, C, h, w] -> GAP -> 1x1 conv (no bias) -> logits [B, classes].

    ``frozen_stages`` as ``build_backbone``: IRN's ``resnet50_cam.Net`` freezes conv1/bn1 and
    detaches the output of ``layer2``, so with ImageNet weights only ``layer3``, ``layer4``
    and the classifier learn (``frozen_stages=2``)."""

    def __init__(self, backbone: str, num_classes: int, output_stride: int = 16,
                 frozen_stem: bool = False, norm_eval: bool = False, frozen_stages: int | None = None):
        super().__init__()
        self.backbone, channels = build_backbone(backbone, output_stride, frozen_stem, norm_eval, frozen_stages)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """relu(classifier applied at every position): [B, classes, h, w]."""
        return F.relu(F.conv2d(self.features(images), self.classifier.weight))

    def parameter_groups(self):
        """(backbone params, new-layer params): IRN trains the classifier at 10x the lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())


def save_cam_checkpoint(model: CamNet, architecture: dict, path) -> None:
    """Write ``model``'s weights and ``architecture`` (backbone, output_stride, classes) to
    ``path`` atomically."""
    save_checkpoint({"model": model.state_dict(), "architecture": architecture}, path)


def load_cam_checkpoint(path, device="cpu") -> tuple[CamNet, dict]:
    """(CamNet in eval mode on ``device``, its architecture dict) from a CAM checkpoint."""
    state = load_checkpoint(path, "plabel CAM checkpoint")
    if "architecture" not in state:
        raise ValueError(f"{path}: not a plabel CAM checkpoint (no 'architecture')")
    arch = state["architecture"]
    model = CamNet(arch["backbone"], len(arch["classes"]) - 1, arch["output_stride"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), arch


def ir_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, fg_threshold: float = 0.30,
              bg_threshold: float = 0.05) -> np.ndarray:
    """IRN's ``cam_to_ir_label``: image uint8 [H, W, 3], CAMs float [K, H, W] of the classes
    ``keys`` [K] -> uint8 [H, W]: labels at a constant background plane ``fg_threshold``
    (confident foreground) and ``bg_threshold`` (confident background), each refined by the
    dense CRF label recipe, 255 where the two disagree."""
    from .crf import crf_label_map

    def refined(threshold):
        return crf_label_map(image, scores_to_labels(scores, keys, threshold), keys)

    return uncertain_band(refined(fg_threshold), refined(bg_threshold))
