"""Pixel-wise majority vote over label sets: the simplest ensemble, a baseline for ISLE."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plabel_kit import Combiner, PseudoLabel
from plabel_kit.types import IGNORE

from .ensemble import TIE_RULES, majority_vote
from .inputs import input_label


@dataclass
class Vote(Combiner):
    """Pixel-wise majority over the input label sets (baseline for ISLE; no paper).

    Reads the inputs' labels; writes the class most inputs give each pixel. 255 votes do
    not count; a pixel every input left 255 stays 255. ``ties``: ``ignore`` (255) or
    ``first`` (the tied class of the earliest input). ``tags``: classes outside the
    image-level tags become background in every input first."""

    ties: str = "ignore"
    tags: bool = True

    def __post_init__(self):
        if self.ties not in TIE_RULES:
            raise ValueError(f"ties must be one of {TIE_RULES}, not {self.ties!r}")
        self._counts = {"images": 0, "tied_pixels": 0}

    def combine(self, sample, pseudos):
        labels = np.stack([input_label(p, sample, IGNORE, None, self.tags, f"input {i + 1}")
                           for i, p in enumerate(pseudos)])
        present = labels[labels != IGNORE]
        label, tied = majority_vote(labels, int(present.max(initial=0)) + 1, self.ties)
        self._counts["images"] += 1
        self._counts["tied_pixels"] += tied
        return PseudoLabel(label)

    def summary(self) -> dict:
        """Pixels decided by the tie rule (this run's images)."""
        return {"method": "vote", "ties": self.ties, "combined": dict(self._counts)}
