"""VGG encoder for U-Nets (seed 000's VGG-16 U-Net), registered in mmseg's MODELS."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from mmcv.cnn import VGG
from mmcv.cnn.vgg import make_vgg_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS


@MODELS.register_module()
class VGGEncoder(BaseModule):
    """VGG-11/13/16/19 as a U-Net encoder: mmcv's VGG stages with free stage widths.

    forward(x [N, 3, H, W]) -> 6 maps: each stage's output before its max pool (strides 1,
    2, 4, 8, 16; ``widths`` channels) and the last stage pooled (stride 32). Layers are
    numbered as torchvision's ``vgg16.features`` (``vgg16_bn`` with ``with_bn``), so its
    weights load through ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``.
    """

    def __init__(self, depth: int = 16, widths: Sequence[int] = (64, 128, 256, 512, 512),
                 with_bn: bool = False, init_cfg=None):
        super().__init__(init_cfg)
        if depth not in VGG.arch_settings:
            raise ValueError(f"VGG depth must be one of {sorted(VGG.arch_settings)}, not {depth}")
        blocks = VGG.arch_settings[depth]
        if len(widths) != len(blocks):
            raise ValueError(f"widths must give {len(blocks)} stage widths, got {list(widths)}")
        layers, self.stage_ends = [], []
        in_channels = 3
        for num_blocks, width in zip(blocks, widths):
            layers.extend(make_vgg_layer(in_channels, width, num_blocks, with_bn=with_bn))
            self.stage_ends.append(len(layers) - 1)  # index of the stage's max pool
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.out_channels = tuple(widths) + (widths[-1],)

    def forward(self, x):
        outs = []
        for index, layer in enumerate(self.features):
            if index in self.stage_ends:
                outs.append(x)
            x = layer(x)
        outs.append(x)
        return tuple(outs)
