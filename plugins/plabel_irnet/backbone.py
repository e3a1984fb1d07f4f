"""A CAM backbone with every stage's output (IRN's 5 stages), loaded from a CAM checkpoint."""
from __future__ import annotations

import torch
from torch import nn


class StageBackbone(nn.Module):
    """mmseg ResNet (a ``plabel_kit.toolkit.backbones.BACKBONES`` preset) returning the stem (after the
    max pool, stride 4) and the four stages: IRN's ``stage1..stage5``. ``frozen_stages``
    (mmseg's: -1 none, 0 the stem, k the stem and stages 1..k) stay fixed in training."""

    def __init__(self, name: str, output_stride: int, frozen_stages: int = -1):
        super().__init__()
        import mmseg.models  # noqa: F401  (fills mmseg's MODELS registry)
        from mmseg.registry import MODELS
        from plabel_kit.toolkit.backbones import BACKBONES, OUTPUT_STRIDES, check_architecture

        check_architecture(name, output_stride)
        strides, dilations = OUTPUT_STRIDES[output_stride]
        config = dict(BACKBONES[name][0], num_stages=4, out_indices=(0, 1, 2, 3), strides=strides,
                      dilations=dilations, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True,
                      frozen_stages=frozen_stages, style="pytorch")
        self.resnet = MODELS.build(config)
        with torch.no_grad():
            self.channels = [f.shape[1] for f in self.forward(torch.zeros(1, 3, 32, 32))]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        net = self.resnet
        if net.deep_stem:
            x = net.stem(images)
        else:
            x = net.relu(net.norm1(net.conv1(images)))
        stages = [net.maxpool(x)]
        for layer_name in net.res_layers:
            stages.append(getattr(net, layer_name)(stages[-1]))
        return stages

    def load_cam(self, path) -> dict:
        """Backbone weights of a plabel CAM checkpoint; returns its architecture dict."""
        from plabel_kit.toolkit.backbones import backbone_state_from
        from plabel_kit.toolkit.checkpoints import load_checkpoint

        state = load_checkpoint(path, "plabel CAM checkpoint")
        if "architecture" not in state:
            raise ValueError(f"{path}: not a plabel CAM checkpoint (no 'architecture')")
        result = self.resnet.load_state_dict(backbone_state_from(state["model"]), strict=False)
        if result.missing_keys:
            raise ValueError(f"{path}: backbone weights missing, e.g. {result.missing_keys[0]}")
        return state["architecture"]

    def freeze(self) -> "StageBackbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()
