"""Pixel-pair affinities on the walk grid (pure numpy).

Pairs are IRN's / PSA's: each cell and the cells at offsets (dy, dx) with 0 <= dy < r,
|dx| < r, dx^2 + dy^2 < r^2 and (dy, dx) after (0, 0) in raster order: half of the disc of
radius r; the walk operator adds the reverse pairs. An affinity map is float64 [D, h, w]:
entry [d, y, x] links cell (y, x) with (y + dy_d, x + dx_d), and is 0 where that cell lies
outside the grid.

- ``boundary_affinity``: IRN's, from a boundary map (the IRNet model supplies it).
- ``image_affinity``: from colour alone (no training), for any label set.
- AffinityNet's learned affinities (PSA) come from a trained network: the ``irnet`` plugin
  registers them as the affinity component ``affinitynet``.

The ``randomwalk`` refiner takes its affinities from components of kind ``affinity``
(:class:`plabel_kit.Affinity`), which call these functions.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def neighbour_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """The (dy, dx) offsets of IRN's ``PathIndex`` / PSA's ``get_indices_in_radius``:
    34 for radius 5."""
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
                if dx * dx + dy * dy < radius * radius]
    return tuple(offsets)


@lru_cache(maxsize=None)
def path_offsets(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Cells on the straight path from (0, 0) to (dy, dx), both ends included: those of the
    bounding box whose distance to the line is below one cell (IRN's rule)."""
    length_sq = dy * dy + dx * dx
    return tuple((y, x) for y in range(min(0, dy), max(0, dy) + 1)
                 for x in range(min(0, dx), max(0, dx) + 1)
                 if (dy * x - dx * y) ** 2 / length_sq < 1)


def boundary_affinity(boundary: np.ndarray, radius: int = 5) -> np.ndarray:
    """IRN's affinity: 1 - the largest boundary value on the path between the two cells.
    boundary float [h, w] in 0..1 -> float64 [D, h, w] (D = len(neighbour_offsets(radius)))."""
    boundary = _check_map(boundary, "boundary")
    if boundary.min(initial=0.0) < 0 or boundary.max(initial=0.0) > 1:
        raise ValueError("boundary values must lie in 0..1")
    height, width = boundary.shape
    # outside the grid counts as a full boundary: pairs leaving the grid get affinity 0
    padded = np.pad(boundary, radius, constant_values=1.0)
    out = np.empty((len(neighbour_offsets(radius)), height, width))
    for d, (dy, dx) in enumerate(neighbour_offsets(radius)):
        peak = np.zeros((height, width))
        for py, px in path_offsets(dy, dx):
            np.maximum(peak, padded[radius + py:radius + py + height, radius + px:radius + px + width], out=peak)
        out[d] = 1.0 - peak
    return out


def image_affinity(colours: np.ndarray, radius: int = 5, sigma: float = 0.05) -> np.ndarray:
    """Colour similarity exp(-|c_i - c_j|^2 / (2 sigma^2)) between cells' mean colours.
    colours float [h, w, C] (RGB in 0..1) -> float64 [D, h, w]. Position enters through the
    radius; the walk's exponent beta sharpens it further."""
    if not isinstance(colours, np.ndarray) or colours.ndim != 3:
        raise ValueError(f"colours must be float [h, w, C], got {getattr(colours, 'shape', colours)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    colours = colours.astype(np.float64)
    height, width = colours.shape[:2]
    padded = np.pad(colours, ((radius, radius), (radius, radius), (0, 0)), constant_values=np.nan)
    out = np.empty((len(neighbour_offsets(radius)), height, width))
    for d, (dy, dx) in enumerate(neighbour_offsets(radius)):
        other = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
        distance_sq = np.sum((colours - other) ** 2, axis=-1)
        out[d] = np.nan_to_num(np.exp(-distance_sq / (2.0 * sigma * sigma)), nan=0.0)
    return out


def _check_map(array: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} must be a float array [h, w], got "
                         f"{getattr(array, 'dtype', type(array).__name__)} {list(getattr(array, 'shape', ()))}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinity")
    return array.astype(np.float64, copy=False)
