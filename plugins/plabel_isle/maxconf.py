"""Per-pixel most confident class over the inputs' score maps: a baseline for ISLE."""
from __future__ import annotations

from dataclasses import dataclass

from plabel_kit import Combiner, DataError, PseudoLabel
from plabel_kit.arrays import scores_to_labels
from plabel_kit.types import IGNORE

from .ensemble import fuse_max
from .inputs import foreground_scores


@dataclass
class MaxConf(Combiner):
    """Per pixel, the most confident class over the inputs' score maps (baseline; no paper).

    Reads the inputs' score maps (each plane divided by its maximum; inputs without scores
    are skipped; background planes are replaced by ``threshold``); writes labels, 0 where
    no class beats ``threshold``, and the fused scores (per class the maximum over
    inputs). ``tags``: planes of classes outside the image-level tags are dropped."""

    threshold: float = 0.15
    tags: bool = True

    def combine(self, sample, pseudos):
        planes, keys = [], []
        for i, pseudo in enumerate(pseudos):
            scored = foreground_scores(pseudo, sample, IGNORE, self.tags, f"input {i + 1}")
            if scored is not None:
                planes.append(scored[0])
                keys.append(scored[1])
        if not planes:
            raise DataError("maxconf needs score maps and no input has one for this image",
                            path=sample.image_path, image_id=sample.id)
        fused, fused_keys = fuse_max(planes, keys)
        label = scores_to_labels(fused, fused_keys, self.threshold)
        return PseudoLabel(label, fused, fused_keys, 1)
