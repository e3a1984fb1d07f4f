"""What the teacher's outputs become before the losses read them: class->segmentation
pseudo masks from CAMs, segmentation probabilities restricted to the image's tags, and the
pixel-contrast selections (anchors, prototypes, negatives) of CSRM's two roles: from the
class->segmentation masks on the "labelled" (strong) views, from the teacher's entropy on
the "unlabelled" (weak) views.

Shapes: B images, C foreground classes, K = C + 1 segmentation classes, h x w a map's size.
"""
from __future__ import annotations

import numpy as np
import torch

from plabel_kit.arrays import scores_to_labels, uncertain_band
from plabel_kit.types import IGNORE


def restrict_to_tags(probs: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Segmentation probabilities [B, K, h, w] with the planes of untagged classes zeroed and
    the rest renormalised (background always kept). tags: multi-hot [B, C]."""
    keep = torch.cat([torch.ones_like(tags[:, :1]), tags], dim=1).to(probs.dtype)[:, :, None, None]
    kept = probs * keep
    return kept / kept.sum(dim=1, keepdim=True).clamp_min(1e-12)


def normalised_cams(cams: torch.Tensor) -> torch.Tensor:
    """relu'd CAMs [B, C, h, w] with every plane divided by its own max (+1e-5), as IRN / PNOC."""
    peak = cams.flatten(2).max(dim=2).values[:, :, None, None]
    return cams / (peak + 1e-5)


def c2s_mask(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, fg_threshold: float,
             bg_threshold: float, crf: bool) -> np.ndarray:
    """IRN's training label from one image's CAMs: foreground where the CAMs beat
    ``fg_threshold``, background where even ``bg_threshold`` leaves background, 255 between.
    With ``crf`` both label maps are refined by the dense CRF label recipe first
    (``plabel_kit.toolkit.cam.ir_labels``). image uint8 [H, W, 3]; cams float32 [K, H, W] in 0..1 for
    the class ids ``keys`` [K]; returns uint8 [H, W]."""
    if crf:
        from plabel_kit.toolkit.cam import ir_labels

        return ir_labels(np.ascontiguousarray(image), cams, keys, fg_threshold, bg_threshold)
    return uncertain_band(scores_to_labels(cams, keys, fg_threshold), scores_to_labels(cams, keys, bg_threshold))


def contrast_selection(probs: torch.Tensor, labels: torch.Tensor, tags: torch.Tensor, valid: torch.Tensor,
                       percent: float, class_threshold: float = 0.3, low_rank: int = 3,
                       high_rank: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which pixels serve the pixel contrast on CSRM's "unlabelled" crops, from the teacher's
    segmentation (U2PL's rules on unlabelled images, with CSRM's use of the tags).

    probs [B, K, h, w]: the teacher's softmax over all classes; labels int [B, h, w]: its
    argmax restricted to the tags; tags multi-hot [B, C]; valid bool [B, h, w]; ``percent``:
    the low- / high-entropy share in % of valid pixels.
    Returns bool [B, K, h, w] each:
    - prototype pixels of class k: labelled k and among the ``percent`` % lowest entropies;
    - anchors of k: prototype pixels where the teacher gives k more than ``class_threshold``;
    - negatives for k: among the ``percent`` % highest entropies, pixels where k is in the
      teacher's top ``low_rank`` classes though the image is not tagged with k (background is
      always tagged), or where k ranks ``low_rank`` .. ``high_rank`` - 1 (hard negatives)."""
    num_classes = probs.shape[1]
    uncertainty = -(probs * torch.log(probs + 1e-10)).sum(dim=1)
    values = uncertainty[valid].float().cpu()
    if values.numel() == 0:
        empty = torch.zeros_like(probs, dtype=torch.bool)
        return empty, empty, empty
    count = max(1, int(round(values.numel() * percent / 100.0)))
    low_cut = torch.kthvalue(values, count).values.to(uncertainty)
    high_cut = torch.kthvalue(values, values.numel() - count + 1).values.to(uncertainty)
    low = (uncertainty <= low_cut) & valid
    high = (uncertainty >= high_cut) & valid

    classes = torch.arange(num_classes, device=probs.device)[None, :, None, None]
    prototype = (labels[:, None] == classes) & low[:, None]
    anchors = prototype & (probs > class_threshold)

    rank = probs.argsort(dim=1, descending=True).argsort(dim=1)  # rank[b, k] = place of class k
    tagged = torch.cat([torch.ones_like(tags[:, :1]), tags], dim=1).bool()[:, :, None, None]
    untagged_but_likely = (rank < low_rank) & ~tagged
    hard = (rank >= low_rank) & (rank < high_rank)
    negatives = (untagged_but_likely | hard) & high[:, None]
    return prototype, anchors, negatives


def labelled_contrast_selection(probs: torch.Tensor, pseudo: torch.Tensor, class_threshold: float = 0.3,
                                low_rank: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel contrast's selections on CSRM's "labelled" crops, where the class->segmentation
    pseudo masks stand in for U2PL's ground truth (``compute_contra_memobank_loss`` with
    ``low_mask = high_mask = pseudo != 255``): no entropy rule, so every class of the mask
    takes part however confident the teacher is elsewhere.

    probs [B, K, h, w]: the teacher's softmax over all classes; pseudo int [B, h, w]: the
    class->segmentation mask at that resolution (255 = band / padding).
    Returns bool [B, K, h, w] each:
    - prototype pixels of class k: labelled k;
    - anchors of k: prototype pixels where the teacher gives k more than ``class_threshold``;
    - negatives for k: labelled pixels of another class where k is in the teacher's top
      ``low_rank`` classes."""
    classes = torch.arange(probs.shape[1], device=probs.device)[None, :, None, None]
    prototype = pseudo[:, None] == classes  # 255 is no class
    anchors = prototype & (probs > class_threshold)
    rank = probs.argsort(dim=1, descending=True).argsort(dim=1)
    labelled = (pseudo != IGNORE)[:, None]
    negatives = (rank < low_rank) & labelled & ~prototype
    return prototype, anchors, negatives


def masked_means(rep: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean representation per class: rep [B, D, h, w], masks bool [B, K, h, w] -> [K, D]
    (zeros for classes without pixels)."""
    weights = masks.to(rep.dtype)
    sums = torch.einsum("bdhw,bkhw->kd", rep, weights)
    counts = weights.sum(dim=(0, 2, 3)).clamp_min(1.0)
    return sums / counts[:, None]


def negative_keys(rep: torch.Tensor, negatives: torch.Tensor) -> list[torch.Tensor]:
    """The representations [N_k, D] at each class's negative pixels: rep [B, D, h, w],
    negatives bool [B, K, h, w] -> K tensors."""
    pixels = rep.permute(0, 2, 3, 1)
    return [pixels[negatives[:, k]] for k in range(negatives.shape[1])]


def ignore_outside(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 [H, W] with 255 wherever ``valid`` bool [H, W] is False (crop padding)."""
    out = mask.copy()
    out[~valid] = IGNORE
    return out
