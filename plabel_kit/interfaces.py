"""Component interfaces. A component is a dataclass: its fields are its parameters
(typed, with defaults), so ``plabel components`` can list them and manifests record them.

Every component's docstring says what it reads, what it writes and which paper it follows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from .types import PseudoLabel, Sample

if TYPE_CHECKING:
    from .datasets import Dataset
    from .labelset import LabelSet


class Component:
    """Base of all components. Subclasses are ``@dataclass`` classes."""

    kind: ClassVar[str] = ""
    #: name under which the component was registered (set by the registry)
    name: ClassVar[str] = ""
    #: parameters naming files or folders another stage made: the CLI offers them as options
    inputs: ClassVar[tuple[str, ...]] = ()
    #: images handed to one ``predict`` call
    batch_size: ClassVar[int] = 1
    #: parameters that change how, not what, a component computes (workers, device): a
    #: label set may be resumed with other values of them
    runtime: ClassVar[tuple[str, ...]] = ()

    def config(self) -> dict:
        """The resolved parameters, JSON-able, as recorded in label-set manifests."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def close(self) -> None:
        """Release pools, GPU memory and files; the stage runner calls it when done."""

    def summary(self) -> dict:
        """What this run learned or counted (a combiner's table, fallbacks taken, ...),
        JSON-able; stored in the output manifest under ``summary``."""
        return {}


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class LabelSource(Component):
    """Makes pseudo labels from a dataset (image-level tags, annotations, other label sets)."""

    kind = "label_source"

    def fit(self, dataset: "Dataset", workdir: Path) -> None:
        """Train on ``dataset`` (trainable sources); ``workdir`` keeps checkpoints for resume."""

    def predict(self, samples: Sequence[Sample]) -> list[PseudoLabel]:
        raise NotImplementedError


class Refiner(Component):
    """Improves one pseudo label using its image (dense CRF, random walk)."""

    kind = "refiner"

    def fit(self, dataset: "Dataset", labels: "LabelSet", workdir: Path) -> None:
        """Train on the input label set (trainable refiners, e.g. AffinityNet)."""

    def refine(self, sample: Sample, pseudo: PseudoLabel) -> PseudoLabel:
        raise NotImplementedError

    def refine_batch(self, samples: Sequence[Sample], pseudos: Sequence[PseudoLabel]) -> list[PseudoLabel]:
        """``batch_size`` images at a time; override to use a process pool or a GPU batch."""
        return [self.refine(s, p) for s, p in zip(samples, pseudos, strict=True)]


class Combiner(Component):
    """Merges several label sets' pseudo labels of one image into one."""

    kind = "combiner"

    def fit(self, label_sets: Sequence["LabelSet"], labelled: "Dataset") -> None:
        """Learn from the label sets' agreement with ground truth on ``labelled`` (e.g. ISLE)."""

    def combine(self, sample: Sample, pseudos: Sequence[PseudoLabel]) -> PseudoLabel:
        raise NotImplementedError


class Embedder(Component):
    """Turns images into feature vectors (for sequencing similar images)."""

    kind = "embedder"

    def embed(self, samples: Sequence[Sample]) -> np.ndarray:
        """float32 [N, D], one row per sample."""
        raise NotImplementedError


class Affinity(Component):
    """Pixel-pair affinities on a random walk's grid: what the ``randomwalk`` refiner walks
    over (``--set affinity=NAME``). The walk grid has cells of ``stride`` x ``stride`` pixels;
    pairs are those of :func:`plabel_kit.toolkit.affinity.neighbour_offsets` (``radius``)."""

    kind = "affinity"

    def fit(self, dataset: "Dataset", labels: "LabelSet", workdir: Path) -> None:
        """Train on the refiner's input label set (trainable affinities, e.g. AffinityNet);
        ``workdir`` keeps checkpoints for resume. Nothing to do by default."""

    def walk_inputs(self, sample: Sample, scores: np.ndarray, stride: int,
                    radius: int) -> tuple[np.ndarray, np.ndarray]:
        """The two inputs of the walk for ``sample``: (affinity float [D, h, w] in 0..1, the
        score planes to walk float [K, h, w]). ``scores`` float [K, h, w] are the input's planes
        on the walk grid (h, w) = ``scores.shape[1:]``; return them unchanged unless the
        affinity reweighs them (IRN's boundary affinity multiplies them by 1 - boundary).
        Entry [d, y, x] links cell (y, x) with (y + dy_d, x + dx_d), (dy_d, dx_d) =
        ``neighbour_offsets(radius)[d]``; 0 where that cell lies off the grid."""
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    "label_source": LabelSource,
    "refiner": Refiner,
    "combiner": Combiner,
    "embedder": Embedder,
    "affinity": Affinity,
}
