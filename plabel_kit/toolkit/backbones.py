"""ResNet backbones from MMSegmentation's registry by preset name, at output stride 16 or 8,
with frozen stages and local pretrained weights (torchvision, mmpretrain or mmseg state dicts).

The presets follow IRN (Ahn et al., CVPR 2019, github.com/jiwoon-ahn/irn): ``resnet50`` with
the stride-16 layout of ``resnet50_cam``; ``resnet50_v1c`` is mmseg's deep-stem variant."""
from __future__ import annotations

from torch import nn

from .checkpoints import load_checkpoint

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


def load_pretrained(backbone: nn.Module, path: str, log=None) -> tuple[list[str], list[str]]:
    """Load a local ResNet state dict into ``backbone``; returns (missing, unexpected) keys and,
    with ``log``, calls it with the one-line load report (``load_report``)."""
    weights = backbone_state_from(load_checkpoint(path, "state dict"))
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
    unexpected = list(result.unexpected_keys)
    if log is not None:
        log(load_report(path, missing, unexpected))
    return missing, unexpected


def load_report(path, missing: list[str], unexpected: list[str]) -> str:
    """"pretrained PATH: N missing keys (e.g. K), M unexpected (e.g. K)"."""
    return (f"pretrained {path}: {len(missing)} missing keys" + (f" (e.g. {missing[0]})" if missing else "")
            + f", {len(unexpected)} unexpected" + (f" (e.g. {unexpected[0]})" if unexpected else ""))
