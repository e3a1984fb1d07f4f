"""IRNet's boundary branch and AffinityNet's feature head, both on a ``StageBackbone``."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import StageBackbone


def _reduce(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(4, out_channels))


def _pad_to(images: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % multiple, 0, -height % multiple))


class BoundaryNet(nn.Module):
    """IRN's ``EdgeDisplacement`` edge branch: each of the 5 frozen stages -> 1x1 conv to
    32 channels + GroupNorm(4) + ReLU, upsampled to stride 4, concatenated, 1x1 conv ->
    boundary logits [B, 1, H/4, W/4]. GroupNorm, not BatchNorm: batch-size (and rank)
    independent, as IRN."""

    def __init__(self, backbone: str, output_stride: int):
        super().__init__()
        self.backbone = StageBackbone(backbone, output_stride).freeze()
        self.output_stride = output_stride
        self.reduce = nn.ModuleList(_reduce(c, 32) for c in self.backbone.channels)
        self.fuse = nn.Conv2d(32 * len(self.backbone.channels), 1, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            stages = self.backbone(images)
        size = stages[0].shape[-2:]
        edges = [F.relu(F.interpolate(reduce(s), size=size, mode="bilinear", align_corners=False))
                 for reduce, s in zip(self.reduce, stages)]
        return self.fuse(torch.cat(edges, dim=1))

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def boundary(self, image: torch.Tensor) -> np.ndarray:
        """One normalised image [3, H, W] -> boundary float32 [ceil(H/4), ceil(W/4)] in 0..1:
        sigmoid of the mean logits of the image and its mirror (IRN's inference)."""
        height, width = image.shape[-2:]
        batch = _pad_to(torch.stack([image, image.flip(-1)]), 4 * self.output_stride)
        logits = self(batch)[:, 0]
        logits = logits[:, :math.ceil(height / 4), :]
        mirror = logits[1].flip(-1)[:, logits.shape[-1] - math.ceil(width / 4):]
        edge = torch.sigmoid(logits[0, :, :math.ceil(width / 4)] / 2 + mirror / 2)
        return edge.cpu().numpy().astype(np.float32)


class AffinityNet(nn.Module):
    """PSA's AffinityNet on a CAM backbone at output stride 8: the last three stages ->
    1x1 convs to 64 / 128 / 256 channels + ELU, concatenated, 1x1 conv (448) + ELU; the
    affinity of two cells is exp(-mean |f_i - f_j|). As PSA's ``resnet38_aff.Net``: the
    three reductions start from He-normal weights and the fuse layer from Xavier-uniform
    with gain 4; batch norm is frozen (statistics, scale and shift); the backbone trains
    at 1x lr except ``frozen_stages`` (mmseg's numbering; PSA freezes the layers before
    stride 4 of its ImageNet weights, the ResNet stem: ``frozen_stages=0``)."""

    widths = (64, 128, 256)

    def __init__(self, backbone: str, frozen_stages: int = -1):
        super().__init__()
        self.backbone = StageBackbone(backbone, 8, frozen_stages)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for p in module.parameters():
                    p.requires_grad_(False)
        self.heads = nn.ModuleList(nn.Conv2d(c, w, 1, bias=False)
                                   for c, w in zip(self.backbone.channels[-3:], self.widths))
        self.fuse = nn.Conv2d(sum(self.widths), sum(self.widths), 1, bias=False)
        for head in self.heads:
            nn.init.kaiming_normal_(head.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> features [B, 448, H/8, W/8]."""
        stages = self.backbone(images)[-3:]
        size = stages[0].shape[-2:]
        parts = [F.elu(head(F.interpolate(s, size=size, mode="bilinear", align_corners=False)
                            if s.shape[-2:] != size else s)) for head, s in zip(self.heads, stages)]
        return F.elu(self.fuse(torch.cat(parts, dim=1)))

    def parameter_groups(self):
        """(backbone parameters that train, new layers' parameters): PSA's lr x1 and x10."""
        return [p for p in self.backbone.parameters() if p.requires_grad], \
            list(self.heads.parameters()) + list(self.fuse.parameters())

    @torch.no_grad()
    def grid_affinity(self, image: torch.Tensor, grid: tuple[int, int], radius: int) -> np.ndarray:
        """One normalised image [3, H, W] -> float64 [D, h, w] affinities on the walk grid
        ``grid`` (features at stride 8, resized to the grid when it differs)."""
        from .pairs import feature_affinity

        height, width = image.shape[-2:]
        features = self(_pad_to(image[None], 8))[..., :math.ceil(height / 8), :math.ceil(width / 8)]
        if features.shape[-2:] != tuple(grid):
            features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)
        return feature_affinity(features, radius)[0].double().cpu().numpy()
