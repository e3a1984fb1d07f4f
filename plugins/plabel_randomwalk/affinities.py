"""The affinities this plugin registers for the ``randomwalk`` refiner: ``image`` (colour
only, no training) and ``boundary`` (IRN's, from boundary maps on disk)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import Affinity, DataError, Sample
from plabel_kit.toolkit.affinity import boundary_affinity, image_affinity
from plabel_kit.toolkit.walk import max_pool_to_grid, pool_to_grid


@dataclass
class ImageAffinity(Affinity):
    """Colour similarity exp(-|dc|^2 / 2 sigma^2) of the cells' mean RGB (0..1); reads the
    image only, needs no training."""

    sigma: float = 0.05

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")

    def walk_inputs(self, sample, scores, stride, radius):
        colours = pool_to_grid(np.moveaxis(sample.image, -1, 0) / 255.0, stride)
        return image_affinity(np.moveaxis(colours, 0, -1), radius, self.sigma), scores


@dataclass
class BoundaryAffinity(Affinity):
    """IRN's: 1 - the largest boundary value on the path between the two cells, from
    ``boundaries``/<id>.npy (float [h, w] in 0..1, on the walk grid or at image size: then
    max-pooled to it); the scores are multiplied by (1 - boundary) first, as IRN does."""

    boundaries: str | None = None

    inputs = ("boundaries",)

    def __post_init__(self):
        if not self.boundaries:
            raise ValueError("needs --boundaries DIR (the folder of boundary maps <id>.npy)")
        if not Path(self.boundaries).is_dir():
            raise ValueError(f"boundaries: {self.boundaries} is not a folder")

    def walk_inputs(self, sample, scores, stride, radius):
        boundary = self.boundary_map(sample, scores.shape[1:], stride)
        return boundary_affinity(boundary, radius), scores * (1.0 - boundary)

    def boundary_map(self, sample: Sample, grid: tuple[int, int], stride: int) -> np.ndarray:
        """float64 [h, w] in 0..1 on the walk grid from ``boundaries``/<id>.npy."""
        path = Path(self.boundaries) / f"{sample.id}.npy"
        try:
            boundary = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError("no boundary map for this image", path=path, image_id=sample.id) from None
        except Exception as exc:
            raise DataError(f"cannot read boundary map ({exc})", path=path, image_id=sample.id) from None
        size = sample.image.shape[:2]
        if boundary.ndim != 2 or boundary.shape not in (grid, size):
            raise DataError(f"boundary map is {list(boundary.shape)}; expected the walk grid {list(grid)} "
                            f"or the image size {list(size)}", path=path, image_id=sample.id)
        boundary = boundary.astype(np.float64)
        if not np.isfinite(boundary).all() or boundary.min() < 0 or boundary.max() > 1:
            raise DataError("boundary values must be finite and in 0..1", path=path, image_id=sample.id)
        return boundary if boundary.shape == grid else max_pool_to_grid(boundary, stride)
