"""CSRM's five losses and their schedules, pure torch.

Shapes: B images, C foreground classes, K = C + 1 segmentation classes (0 = background),
H x W the crop, h x w the decoder's resolution, D the representation size. Targets use
255 for "ignore". Every loss returns a scalar that stays attached to its input's graph even
when nothing is supervised (a zero times the input), so DDP always sees a gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def smooth_tags(tags: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of multi-hot tags [B, C] for per-class sigmoids: each binary target
    moves ``smoothing / 2`` towards the other side (0.1: present 0.95, absent 0.05)."""
    return tags * (1.0 - smoothing) + smoothing / 2.0


def classification_loss(logits: torch.Tensor, tags: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Multilabel soft-margin loss of logits [B, C] against smoothed multi-hot tags [B, C]."""
    return F.multilabel_soft_margin_loss(logits, smooth_tags(tags.to(logits.dtype), smoothing))


def class_to_segmentation_loss(seg_logits: torch.Tensor, pseudo_masks: torch.Tensor,
                               smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy of the student's segmentation logits [B, K, H, W] against the teacher's
    CAM pseudo masks int [B, H, W] (class ids, 255 ignored). As CSRM, only images whose
    mask holds at least one foreground pixel take part (a mask that is all background or
    uncertain says nothing reliable about the image)."""
    foreground = ((pseudo_masks != 0) & (pseudo_masks != IGNORE)).flatten(1).any(dim=1)
    if not foreground.any():
        return seg_logits.sum() * 0.0
    return F.cross_entropy(seg_logits[foreground], pseudo_masks[foreground].long(), ignore_index=IGNORE,
                           label_smoothing=smoothing)


def confident_targets(probs: torch.Tensor, confidence: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax of probabilities [B, K, H, W] where the top probability exceeds ``confidence``
    (and ``valid`` bool [B, H, W] holds), 255 elsewhere: int64 [B, H, W]."""
    top, target = probs.max(dim=1)
    keep = top > confidence
    if valid is not None:
        keep &= valid
    return torch.where(keep, target, torch.full_like(target, IGNORE))


def segmentation_to_class_loss(cam_logits: torch.Tensor, background_logits: torch.Tensor,
                               teacher_probs: torch.Tensor, confidence: float = 0.5,
                               valid: torch.Tensor | None = None, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy of [background, CAMs] against the teacher's segmentation.

    cam_logits [B, C, H, W]: the student's classifier map before relu (upsampled);
    background_logits [B, 1, H, W]: the student's segmentation background logit, detached
    here (as CSRM: this loss trains the classification branch, not the background);
    teacher_probs [B, K, H, W]: the teacher's segmentation probabilities (restricted to the
    image's tags by the caller). Pixels whose top teacher probability is <= ``confidence``
    or outside ``valid`` [B, H, W] are ignored."""
    logits = torch.cat([background_logits.detach(), cam_logits], dim=1)
    target = confident_targets(teacher_probs, confidence, valid)
    if not (target != IGNORE).any():
        return cam_logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=smoothing)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over dim 1 of probabilities [B, K, ...] -> [B, ...]."""
    return -(probs * torch.log(probs + 1e-10)).sum(dim=1)


def entropy_drop_loss(seg_logits: torch.Tensor, teacher_probs: torch.Tensor, drop_percent: float,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """U2PL's unsupervised loss: cross-entropy of the student's logits [B, K, H, W] against the
    teacher's argmax, leaving out the ``drop_percent`` % of valid pixels where the teacher's
    probabilities [B, K, H, W] have the highest entropy. As U2PL, the mean over kept pixels is
    scaled by valid / kept pixels. valid: bool [B, H, W] or None (all)."""
    with torch.no_grad():
        target = teacher_probs.argmax(dim=1)
        uncertainty = entropy(teacher_probs)
        valid = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        values = uncertainty[valid]
        keep = valid.clone()
        n_drop = int(round(values.numel() * drop_percent / 100.0))
        if n_drop > 0:
            # the kept pixels are those strictly below the n_drop-th highest entropy
            threshold = torch.kthvalue(values.float().cpu(), values.numel() - n_drop + 1).values.to(values)
            keep &= uncertainty < threshold
        kept = int(keep.sum())
        if kept == 0:
            return seg_logits.sum() * 0.0
        target = torch.where(keep, target, torch.full_like(target, IGNORE))
        scale = valid.sum().float() / kept
    return scale * F.cross_entropy(seg_logits, target, ignore_index=IGNORE)


def pixel_contrast_loss(rep: torch.Tensor, anchor_masks: torch.Tensor, prototypes: torch.Tensor,
                        negatives: list[torch.Tensor], num_queries: int = 256, num_negatives: int = 50,
                        temperature: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """U2PL / ReCo pixel contrast with a memory bank.

    rep [B, D, h, w]: the student's representations; anchor_masks bool [B, K, h, w]: where
    class k may draw its queries; prototypes [K, D]: each class's positive key (the teacher's
    mean representation; rows of classes without anchors are not read); negatives: K tensors
    [M_k, D], the memory bank of each class (M_k may be 0). For every class with anchors,
    ``num_queries`` anchors and ``num_queries * num_negatives`` negatives are drawn with
    replacement; logits = cosine similarity / temperature against [prototype, negatives];
    cross-entropy with the prototype as the answer. Returns the sum over classes divided by
    the number of classes with anchors; 0 when fewer than two classes have anchors.
    Each class's anchors meet that class's own bank (the reference pairs the i-th class
    having anchors with bank i, which differ once a class is absent)."""
    present = [k for k in range(anchor_masks.shape[1]) if anchor_masks[:, k].any()]
    loss = rep.sum() * 0.0
    if len(present) <= 1:
        return loss
    pixels = rep.permute(0, 2, 3, 1)
    answer = torch.zeros(num_queries, dtype=torch.long, device=rep.device)
    for k in present:
        bank = negatives[k]
        if len(bank) == 0:
            continue
        candidates = pixels[anchor_masks[:, k]]
        picks = torch.randint(len(candidates), (num_queries,), generator=generator).to(rep.device)
        anchors = candidates[picks]
        with torch.no_grad():
            drawn = torch.randint(len(bank), (num_queries * num_negatives,), generator=generator).to(bank.device)
            keys = bank[drawn].to(rep.device, rep.dtype).view(num_queries, num_negatives, -1)
            positive = prototypes[k].to(rep.dtype).expand(num_queries, 1, -1)
            keys = torch.cat([positive, keys], dim=1)
        logits = F.cosine_similarity(anchors.unsqueeze(1), keys, dim=2) / temperature
        loss = loss + F.cross_entropy(logits, answer)
    return loss / len(present)


def s2c_weight(step: int, warmup_steps: int, total_steps: int, start: float = 0.1, end: float = 1.0) -> float:
    """The segmentation->class weight: 0 during warm-up, then linear from ``start`` to ``end``
    over the remaining steps."""
    if step < warmup_steps:
        return 0.0
    span = max(1, total_steps - warmup_steps)
    return start + (end - start) * min(1.0, (step - warmup_steps) / span)


def unreliable_percent(epoch: int, epochs: int, initial: float = 20.0) -> float:
    """U2PL's schedule for both the dropped (unsupervised loss) and the low/high-entropy
    (contrast) percentages: ``initial`` % at epoch 0, falling linearly towards 0."""
    return initial * (1.0 - epoch / epochs)
