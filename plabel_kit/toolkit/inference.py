"""Multi-scale, flipped CAM inference as IRN's ``make_cam`` (pure torch)."""
from __future__ import annotations

import math

import numpy as np

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalise(image) -> torch.Tensor:
    """uint8 [H, W, 3] RGB (numpy) -> float32 [3, H, W] with ImageNet statistics."""
    tensor = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def scaled_batches(image: torch.Tensor, scales, flip: bool):
    """For each scale, the normalised image [3, H, W] resized by it, with its mirror when
    ``flip``: [1 or 2, 3, h, w] (IRN's multi-scale inference input)."""
    height, width = image.shape[1:]
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = image[None] if size == (height, width) else \
            F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        yield torch.cat([scaled, scaled.flip(-1)]) if flip else scaled


def fold_flip(maps: torch.Tensor, flip: bool) -> torch.Tensor:
    """Maps [1 or 2, K, h, w] of a ``scaled_batches`` batch -> [K, h, w]: the image's plus its
    mirror's flipped back."""
    return maps[0] + maps[1].flip(-1) if flip else maps[0]


@torch.no_grad()
def multiscale_cam(model, image: torch.Tensor, class_ids, scales=(1.0, 0.5, 1.5, 2.0),
                   flip: bool = True, output_stride: int = 16) -> torch.Tensor:
    """CAMs of ``class_ids`` (indices into the classifier's outputs) for one normalised image
    [3, H, W]: per scale, the CAMs of the image and its mirror (relu'd, mirror flipped back)
    are summed and upsampled to the image size rounded up to the output stride, then cropped
    (IRN's ``strided_up_size``); scales are summed and each class plane is divided by its
    own max (+1e-5). Returns float32 [K, H, W] in 0..1 (K = 0 for no class ids)."""
    height, width = image.shape[1:]
    if len(class_ids) == 0:  # an untagged image: F.interpolate refuses an empty batch
        return torch.zeros((0, height, width), dtype=torch.float32, device=image.device)
    rounded = (math.ceil(height / output_stride) * output_stride,
               math.ceil(width / output_stride) * output_stride)
    total = None
    for batch in scaled_batches(image, scales, flip):
        cams = fold_flip(model.cams(batch)[:, class_ids], flip)
        cams = F.interpolate(cams[None], size=rounded, mode="bilinear", align_corners=False)[0]
        cams = cams[:, :height, :width]
        total = cams if total is None else total + cams
    peak = total.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return (total / (peak + 1e-5)).float()
