"""ResNet encoder for U-Nets (seed 000's ResNet-50 U-Net), registered in mmseg's MODELS."""
from __future__ import annotations

from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS


@MODELS.register_module()
class ResNetEncoder(ResNet):
    """mmseg's ResNet that also returns its stem, so a U-Net has a stride-2 skip.

    forward(x [N, 3, H, W]) -> (stem [N, stem_channels, H/2, W/2], then the stages chosen
    by ``out_indices`` at strides 4, 8, 16, 32). Parameter names are mmseg's ResNet's, so
    torchvision ResNet weights (``deep_stem=False``) or open-mmlab ``resnet50_v1c``
    weights (``deep_stem=True``) load through ``init_cfg=dict(type='Pretrained', ...)``.
    """

    def forward(self, x):
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.norm1(self.conv1(x)))
        outs = [x]
        x = self.maxpool(x)
        for index, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if index in self.out_indices:
                outs.append(x)
        return tuple(outs)
