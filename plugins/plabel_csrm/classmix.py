"""ClassMix (Olsson et al., WACV 2021) as CSRM applies it to weakly labelled crops."""
from __future__ import annotations

from typing import NamedTuple

import torch

from plabel_kit.types import IGNORE


class Mixed(NamedTuple):
    """images float [B, 3, H, W]; valid bool [B, H, W]; masks int [B, H, W] (class ids, 255 =
    ignore); tags multi-hot [B, C]; partner int64 [B] (the image each one took pixels from);
    pasted bool [B, H, W]."""

    images: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor
    tags: torch.Tensor
    partner: torch.Tensor
    pasted: torch.Tensor


def classmix(images: torch.Tensor, valid: torch.Tensor, masks: torch.Tensor, tags: torch.Tensor,
             generator: torch.Generator | None = None) -> Mixed:
    """Every image takes, from another image of the batch (drawn uniformly), the pixels of half
    (at least one) of the foreground classes in that partner's pseudo mask; 255 and padding
    pixels are never pasted. The pasted classes join the image's tags (its own tags stay,
    as in CSRM). Shapes as :class:`Mixed`; inputs are not modified. A batch of one is
    returned unchanged."""
    batch = images.shape[0]
    pasted = torch.zeros_like(valid)
    partner = torch.arange(batch)
    if batch < 2:
        return Mixed(images, valid, masks, tags, partner, pasted)
    # a uniform choice among the other images: shift by 1 .. batch-1
    partner = (partner + torch.randint(1, batch, (batch,), generator=generator)) % batch
    out_tags = tags.clone()
    for a in range(batch):
        b = int(partner[a])
        present = torch.unique(masks[b])
        present = present[(present != 0) & (present != IGNORE)]
        if len(present) == 0:
            continue
        chosen = present[torch.randperm(len(present), generator=generator)[:max(len(present) // 2, 1)]]
        pasted[a] = torch.isin(masks[b], chosen.to(masks.device)) & valid[b]
        out_tags[a, chosen.long() - 1] = 1
    partner_device = partner.to(images.device)
    mix = pasted.unsqueeze(1)
    return Mixed(torch.where(mix, images[partner_device], images),
                 torch.where(pasted, valid[partner_device], valid),
                 torch.where(pasted, masks[partner_device], masks),
                 out_tags, partner, pasted)
