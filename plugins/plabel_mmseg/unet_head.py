"""U-Net decoder as an mmseg decode head, for any encoder that returns a feature pyramid."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS


@MODELS.register_module()
class UNetHead(BaseDecodeHead):
    """U-Net decoder (Ronneberger et al.; the layout of segmentation_models_pytorch's Unet).

    Takes encoder maps fine to coarse (``in_channels`` lists their channels). Block k
    upsamples the running map to the size of the k-th finest-but-one skip, concatenates
    that skip and applies two 3x3 conv-norm-ReLU with ``decoder_channels[k]`` outputs;
    blocks beyond the skips upsample x2 with no skip (a ResNet encoder has none at stride 1).
    Logits [N, num_classes, h, w] come from the last block.
    """

    def __init__(self, in_channels: Sequence[int], decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
                 in_index: Sequence[int] | None = None, **kwargs):
        in_channels = list(in_channels)
        super().__init__(in_channels, decoder_channels[-1],
                         in_index=list(in_index) if in_index is not None else list(range(len(in_channels))),
                         input_transform="multiple_select", **kwargs)
        skips = in_channels[-2::-1]  # coarse to fine, the deepest map excluded
        previous = in_channels[-1]
        self.blocks = nn.ModuleList()
        for k, width in enumerate(decoder_channels):
            skip = skips[k] if k < len(skips) else 0
            self.blocks.append(nn.Sequential(
                ConvModule(previous + skip, width, 3, padding=1, conv_cfg=self.conv_cfg,
                           norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
                ConvModule(width, width, 3, padding=1, conv_cfg=self.conv_cfg,
                           norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)))
            previous = width

    def forward(self, inputs):
        features = self._transform_inputs(inputs)
        skips = features[-2::-1]
        x = features[-1]
        for k, block in enumerate(self.blocks):
            if k < len(skips):
                x = resize(x, size=skips[k].shape[2:], mode="bilinear", align_corners=self.align_corners)
                x = torch.cat([x, skips[k]], dim=1)
            else:
                x = resize(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
            x = block(x)
        return self.cls_seg(x)
