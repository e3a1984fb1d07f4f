"""The CSRM network: one mmseg backbone feeding a classification branch (CAM), a
DeepLabV3+ segmentation branch (C+1 classes) and a pixel representation head.

The segmentation branch is mmseg's ``DepthwiseSeparableASPPHead`` (ASPP on the last
stage, a 1x1 skip from the first stage, two separable 3x3 convs, ``cls_seg``). Its
``forward`` returns logits only, so :meth:`CsrmNet.fused` recomposes the head's own
modules up to the fused ASPP + skip features, which the representation head also reads
(as CSRM's ``representation`` reads the decoder input).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from plabel_kit.toolkit.backbones import build_backbone


class CsrmOutput(NamedTuple):
    """logits [B, C]; cam_logits [B, C, h, w] (classifier at every position, before relu,
    at the output stride); seg [B, C+1, H/4, W/4] segmentation logits; rep [B, D, H/4, W/4]."""

    logits: torch.Tensor
    cam_logits: torch.Tensor
    seg: torch.Tensor
    rep: torch.Tensor


class CsrmNet(nn.Module):
    """Backbone (``plabel_cam`` presets) -> classifier + DeepLabV3+ decoder + representation.

    Parameter names ``backbone.*`` and ``classifier.weight`` are CamNet's, so a ``cam``
    checkpoint loads into them unchanged."""

    def __init__(self, backbone: str, num_classes: int, output_stride: int = 16,
                 decoder_channels: int = 256, skip_channels: int = 48,
                 aspp_dilations: tuple[int, ...] = (1, 6, 12, 18), representation_dim: int = 256,
                 dropout: float = 0.1, frozen_stem: bool = False, norm_eval: bool = False):
        super().__init__()
        import mmseg.models  # noqa: F401  (fills mmseg's MODELS registry)
        from mmseg.registry import MODELS

        self.backbone, channels = build_backbone(backbone, output_stride, frozen_stem, norm_eval)
        # the first stage feeds the decoder's skip connection (mmseg reads out_indices per call)
        self.backbone.out_indices = (0, 3)
        low_channels = self.backbone.base_channels * self.backbone.block.expansion
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)
        with warnings.catch_warnings():  # mmseg's head builds a loss it warns about; CSRM never uses it
            warnings.simplefilter("ignore", UserWarning)
            self.decoder = MODELS.build(dict(
                type="DepthwiseSeparableASPPHead", in_channels=channels, in_index=1, channels=decoder_channels,
                dilations=tuple(aspp_dilations), c1_in_channels=low_channels, c1_channels=skip_channels,
                dropout_ratio=dropout, num_classes=num_classes + 1, norm_cfg=dict(type="BN", requires_grad=True),
                align_corners=False))
        # mmseg's init_cfg for the classifier (init_weights() would log every tensor); its
        # ConvModules initialise themselves on construction
        nn.init.normal_(self.decoder.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.decoder.conv_seg.bias)
        fused = decoder_channels + skip_channels
        self.representation = nn.Sequential(
            nn.Conv2d(fused, representation_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(representation_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(representation_dim, representation_dim, 1))

    def fused(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The decoder's ASPP output upsampled to the skip's size and concatenated with it:
        [B, decoder_channels + skip_channels, H/4, W/4] (mmseg's forward before sep_bottleneck)."""
        head = self.decoder
        pooled = F.interpolate(head.image_pool(high), size=high.shape[2:], mode="bilinear", align_corners=False)
        aspp = head.bottleneck(torch.cat([pooled, *head.aspp_modules(high)], dim=1))
        skip = head.c1_bottleneck(low)
        aspp = F.interpolate(aspp, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([aspp, skip], dim=1)

    def forward(self, images: torch.Tensor) -> CsrmOutput:
        low, high = self.backbone(images)
        cam_logits = self.classifier(high)
        # GAP then a bias-free 1x1 conv equals the mean of the conv's map: one pass serves both
        logits = cam_logits.mean(dim=(2, 3))
        fused = self.fused(low, high)
        seg = self.decoder.cls_seg(self.decoder.sep_bottleneck(fused))
        return CsrmOutput(logits, cam_logits, seg, self.representation(fused))

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """relu(classifier at every position): [B, C, h, w] (CamNet's, for multiscale_cam)."""
        return F.relu(self.classifier(self.backbone(images)[-1]))

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits [B, C+1, H/4, W/4]."""
        low, high = self.backbone(images)
        return self.decoder.cls_seg(self.decoder.sep_bottleneck(self.fused(low, high)))

    def parameter_groups(self, classifier_is_new: bool):
        """(backbone params, new-layer params): new layers train at ``new_lr_mult`` x lr. The
        classifier is new unless it came from a ``cam`` checkpoint."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [*self.decoder.parameters(), *self.representation.parameters()]
        classifier = list(self.classifier.parameters())
        return (backbone, new + classifier) if classifier_is_new else (backbone + classifier, new)


def architecture_of(params, classes) -> dict:
    """What rebuilds the network: the architecture parameters of a csrm component + classes."""
    return {"backbone": params.backbone, "output_stride": params.output_stride,
            "decoder_channels": params.decoder_channels, "skip_channels": params.skip_channels,
            "aspp_dilations": list(params.aspp_dilations), "representation_dim": params.representation_dim,
            "dropout": params.dropout, "classes": list(classes)}


def build_from_architecture(arch: dict, frozen_stem: bool = False, norm_eval: bool = False) -> CsrmNet:
    return CsrmNet(arch["backbone"], len(arch["classes"]) - 1, arch["output_stride"], arch["decoder_channels"],
                   arch["skip_channels"], tuple(arch["aspp_dilations"]), arch["representation_dim"],
                   arch["dropout"], frozen_stem, norm_eval)
