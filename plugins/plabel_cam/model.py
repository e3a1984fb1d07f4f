"""The CAM classifier: an MMSegmentation backbone, global average pooling, a 1x1
classifier without bias (IRN's ``resnet50_cam.Net``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# name -> (mmseg backbone config, feature channels). V1c has the deep (3-conv) stem of
# mmseg's pretrained models; plain "resnet50" matches torchvision / mmpretrain weights.
BACKBONES = {
    "resnet50_v1c": (dict(type="ResNetV1c", depth=50), 2048),
    "resnet50": (dict(type="ResNet", depth=50), 2048),
    "resnet18": (dict(type="ResNet", depth=18), 512),
    # a quarter of ResNet-18's width: trains on 2 CPU cores in minutes
    "resnet18_small": (dict(type="ResNet", depth=18, stem_channels=32, base_channels=16), 128),
}
# output stride -> (strides, dilations) of the four stages; IRN uses (2, 2, 2, 1) with
# no dilation, i.e. stride 16 (its "strides" count the stem, mmseg's do not)
OUTPUT_STRIDES = {16: ((1, 2, 2, 1), (1, 1, 1, 1)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}


def check_architecture(backbone: str, output_stride: int) -> None:
    """ValueError unless ``backbone`` is a preset of BACKBONES and ``output_stride`` one of OUTPUT_STRIDES."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} unknown (known: {', '.join(BACKBONES)})")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {sorted(OUTPUT_STRIDES)}")


def check_frozen_stages(frozen_stages: int) -> None:
    """ValueError unless ``frozen_stages`` is -1 (nothing), 0 (the stem) or 1..4 (the stem
    and the first that many stages)."""
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages must be -1 (none), 0 (stem) or 1..4, got {frozen_stages}")


def build_backbone(name: str, output_stride: int, frozen_stem: bool = False, norm_eval: bool = False,
                   frozen_stages: int | None = None) -> tuple[nn.Module, int]:
    """An mmseg ResNet preset of BACKBONES returning its last stage. ``frozen_stages`` (mmseg's
    meaning: -1 none, 0 the stem, k the stem and stages 1..k; None: 0 if ``frozen_stem`` else
    -1) are kept in eval mode with ``requires_grad`` False, so neither their weights nor their
    batch-norm statistics change and no gradient reaches them."""
    import mmseg.models  # noqa: F401  (fills mmseg's MODELS registry)
    from mmseg.registry import MODELS

    check_architecture(name, output_stride)
    if frozen_stages is None:
        frozen_stages = 0 if frozen_stem else -1
    check_frozen_stages(frozen_stages)
    config, channels = BACKBONES[name]
    strides, dilations = OUTPUT_STRIDES[output_stride]
    config = dict(config, num_stages=4, out_indices=(3,), strides=strides, dilations=dilations,
                  norm_cfg=dict(type="BN", requires_grad=True), norm_eval=norm_eval,
                  frozen_stages=frozen_stages, style="pytorch")
    return MODELS.build(config), channels


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


def _unwrap(state: dict) -> dict:
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def backbone_state_from(state: dict) -> dict:
    """Backbone weights from a torchvision-style (``conv1.weight``, ``layer1.0...``, ``fc.*``),
    mmpretrain-style (``backbone.`` prefix, ``head.*``) or mmseg-style state dict, or from a
    plabel CAM checkpoint (``backbone.`` + ``classifier.``). DDP's ``module.`` is stripped."""
    out = {}
    for key, value in _unwrap(state).items():
        key = key.removeprefix("module.")
        if key.startswith(("fc.", "head.", "classifier.", "decode_head.", "auxiliary_head.")):
            continue
        out[key.removeprefix("backbone.")] = value
    return out


def load_pretrained(backbone: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load a local ResNet state dict into ``backbone``; returns (missing, unexpected) keys."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    weights = backbone_state_from(state)
    own = backbone.state_dict()
    stems = ({k.split(".")[0] for k in weights} & {"stem", "conv1"}, {k.split(".")[0] for k in own} & {"stem", "conv1"})
    if stems[0] and stems[1] and stems[0] != stems[1]:
        hint = "resnet50_v1c" if "stem" in stems[0] else "resnet50"
        raise ValueError(f"{path}: the weights have a {'deep' if 'stem' in stems[0] else 'plain'} stem; "
                         f"use --set backbone={hint}")
    shape_mismatch = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shape_mismatch:
        raise ValueError(f"{path}: shapes differ for {len(shape_mismatch)} keys, e.g. {shape_mismatch[0]} "
                         f"({tuple(weights[shape_mismatch[0]].shape)} vs {tuple(own[shape_mismatch[0]].shape)})")
    result = backbone.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    return missing, list(result.unexpected_keys)
