"""Multi-scale, flipped segmentation-branch inference (the CAM branch uses
``plabel_kit.toolkit.inference.multiscale_cam`` unchanged)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def multiscale_segmentation(model, image: torch.Tensor, class_ids, scales=(1.0, 0.5, 1.5, 2.0),
                            flip: bool = True) -> torch.Tensor:
    """Segmentation probabilities of background + ``class_ids`` (indices into the K = C + 1
    segmentation classes, 0 excluded) for one normalised image [3, H, W]: the softmax of each
    scale and mirror (flipped back), upsampled to H x W, averaged; then restricted to the
    image's classes and renormalised. Returns float32 [1 + len(class_ids), H, W].

    The reference averages logits and multiplies them by the 0/1 tag vector, which gives
    absent classes a logit of 0 that can beat the present classes' negative logits;
    restricting probabilities has no such case."""
    from plabel_kit.toolkit.inference import fold_flip, scaled_batches

    height, width = image.shape[1:]
    total = None
    for batch in scaled_batches(image, scales, flip):
        logits = F.interpolate(model.segment(batch).float(), size=(height, width), mode="bilinear",
                               align_corners=False)
        probs = fold_flip(torch.softmax(logits, dim=1), flip)
        total = probs if total is None else total + probs
    kept = total[[0, *class_ids]]
    return (kept / kept.sum(dim=0, keepdim=True).clamp_min(1e-12)).float()
