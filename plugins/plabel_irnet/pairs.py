"""Pair labels and pair affinities on a grid, over the pairs of
``plabel_kit.toolkit.affinity.neighbour_offsets(radius)`` (IRN's ``PathIndex`` / PSA's
``get_indices_in_radius``). Entry [..., d, y, x] is the pair (y, x) - (y + dy_d, x + dx_d)."""
from __future__ import annotations

import numpy as np
import torch

IGNORE = 255


def pair_labels(label: np.ndarray, radius: int) -> np.ndarray:
    """IRN's / PSA's affinity labels from an IR label map. uint8 [h, w] (255 = unsure) ->
    uint8 [3, D, h, w]: planes (background pair, same-foreground-class pair, pair of
    different classes). A pair with an unsure end or an end off the grid is in no plane."""
    from plabel_kit.toolkit.affinity import neighbour_offsets

    height, width = label.shape
    padded = np.pad(label, radius, constant_values=IGNORE)
    out = np.zeros((3, len(neighbour_offsets(radius)), height, width), np.uint8)
    known = label != IGNORE
    for d, (dy, dx) in enumerate(neighbour_offsets(radius)):
        other = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
        both = known & (other != IGNORE)
        out[0, d] = both & (label == 0) & (other == 0)
        out[1, d] = both & (label == other) & (label != 0)
        out[2, d] = both & (label != other)
    return out


def _shifted(maps: torch.Tensor, offsets, radius: int, fill: float) -> torch.Tensor:
    """maps [B, C, h, w] -> [B, C, len(offsets), h, w]: the value at (y + dy, x + dx)."""
    height, width = maps.shape[-2:]
    padded = torch.nn.functional.pad(maps, (radius,) * 4, value=fill)
    return torch.stack([padded[..., radius + dy:radius + dy + height, radius + dx:radius + dx + width]
                        for dy, dx in offsets], dim=2)


def path_affinity(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """IRN's ``to_affinity``: 1 - the largest boundary value on the path between the pair
    (``plabel_kit.toolkit.affinity.path_offsets``), differentiable. boundary [B, h, w] in 0..1
    -> [B, D, h, w]; cells off the grid count as boundary."""
    from plabel_kit.toolkit.affinity import neighbour_offsets, path_offsets

    cells = sorted({c for o in neighbour_offsets(radius) for c in path_offsets(*o)})
    where = {c: i for i, c in enumerate(cells)}
    values = _shifted(boundary[:, None], cells, radius, 1.0)[:, 0]
    peaks = [values[:, [where[c] for c in path_offsets(*o)]].amax(dim=1) for o in neighbour_offsets(radius)]
    return 1.0 - torch.stack(peaks, dim=1)


def feature_affinity(features: torch.Tensor, radius: int) -> torch.Tensor:
    """PSA's affinity exp(-mean_c |f_i - f_j|): features [B, C, h, w] -> [B, D, h, w] (0 for
    partners off the grid)."""
    from plabel_kit.toolkit.affinity import neighbour_offsets

    offsets = neighbour_offsets(radius)
    others = _shifted(features, offsets, radius, 0.0)
    on_grid = _shifted(torch.ones_like(features[:, :1]), offsets, radius, 0.0)[:, 0]
    # off-grid partners by mask, not by NaN padding: non-finite features must stay visible
    # (a diverged training then fails its loss check instead of walking nowhere)
    return torch.exp(-(features[:, :, None] - others).abs().mean(dim=1)) * on_grid


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IRN's / PSA's loss ((bg-pos + fg-pos) / 2 + neg) / 2 with each term averaged over ALL
    ranks' pairs: under DDP (which averages gradients over ranks) the local sums are divided
    by the global counts and multiplied by the world size, so 2 ranks train as 1 process on
    the whole batch (IRN divides by its own counts per GPU, which weights ranks unevenly).
    affinity [B, D, h, w] in 0..1, labels uint8 [B, 3, D, h, w] -> (loss, global counts [3])."""
    labels = labels.to(affinity.dtype)
    positive = -torch.log(affinity + 1e-5)
    negative = -torch.log(1.0 + 1e-5 - affinity)
    sums = torch.stack([(labels[:, 0] * positive).sum(), (labels[:, 1] * positive).sum(),
                        (labels[:, 2] * negative).sum()])
    counts = labels.sum(dim=(0, 2, 3, 4)).detach()
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        torch.distributed.all_reduce(counts)
    terms = world * sums / (counts + 1e-5)
    return ((terms[0] + terms[1]) / 2 + terms[2]) / 2, counts
