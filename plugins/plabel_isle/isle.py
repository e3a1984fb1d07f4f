"""ISLE (seed 001, Ostrowski et al.): a class-wise ensemble of pseudo-label sets.

``fit`` scores every input label set per foreground class against ground truth on a
labelled subset and picks the best input for each class (background is never picked);
``combine`` copies each class's pixels from its chosen input. The public script's bugs
(hard-coded table, overlapping classes summed into a wrong id, no 255) are not repeated:
the table is learned, overlaps follow an explicit rule, uncertainty survives.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import Combiner, DataError, LabelSetError, PlabelError, PseudoLabel
from plabel_kit.progress import quiet, track

from .ensemble import OVERLAP_RULES, class_overlap, claims_of, merge_claims
from .inputs import check_thresholds, foreground_scores, input_label

SELECTIONS = ("image", "dataset")


class ConfidenceFallbackWarning(UserWarning):
    """``overlap='confidence'`` met an overlap it could not settle by scores."""


def selection_scores(inter: np.ndarray, union: np.ndarray, per_image_iou: np.ndarray,
                     images: np.ndarray, selection: str) -> np.ndarray:
    """float [S, C] class scores of each input: ``dataset`` = summed intersection over summed
    union; ``image`` = per-image IoU averaged over the images where the class is in the
    ground truth or the prediction. NaN where a class never occurred. All inputs [S, C]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if selection == "dataset":
            return np.where(union > 0, inter / union, np.nan)
        return np.where(images > 0, per_image_iou / images, np.nan)


def choose_sources(scores: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best input per class: scores float [S, C], seen bool [C] (class in the labelled ground
    truth). Returns (chosen int [C], -1 for background; priority int [C], a permutation,
    higher = higher selection score). Ties go to the earlier input. A class never seen falls
    back to the input with the best mean score over the seen classes (the first input if
    none was seen) and has the lowest priority; priority ties go to the lower class id."""
    n_sources, n_classes = scores.shape
    chosen = np.full(n_classes, -1, dtype=np.int64)
    known = seen.copy()
    known[0] = False
    means = np.nanmean(np.where(known[None], scores, np.nan), axis=1) if known.any() else np.zeros(n_sources)
    fallback = int(np.nanargmax(means)) if not np.isnan(means).all() else 0
    best = np.full(n_classes, -np.inf)
    for c in range(1, n_classes):
        if known[c]:
            chosen[c] = int(np.nanargmax(scores[:, c]))
            best[c] = scores[chosen[c], c]
        else:
            chosen[c] = fallback
    order = np.lexsort((-np.arange(n_classes), best))  # ascending score, then descending id
    priority = np.empty(n_classes, dtype=np.int64)
    priority[order] = np.arange(n_classes)
    return chosen, priority


@dataclass
class Isle(Combiner):
    """ISLE (seed 001): each class's pixels come from the input that scored best on it.

    Reads the input label sets, their score maps where ``thresholds`` or
    ``overlap=confidence`` need them, and the ground truth of the labelled subset
    (``--select-on``) on which ``fit`` scores every input per foreground class. Writes
    labels: each class copied from its chosen input; unclaimed pixels background, or 255
    where every input is 255.

    selection: ``dataset`` (the default) = dataset-level class IoU, the paper's Table 3
    measure; ``image`` = per-image class IoU averaged over images. overlap: a pixel two chosen inputs claim for different
    classes goes to the class with the higher selection ``score``, to the higher
    normalised ``confidence`` (score maps; else by score, counted), or is ``ignore``d
    (255). thresholds: one background threshold per input (none = its labels as they
    are), applied to its normalised score maps. tags: classes outside the image-level
    tags are dropped from every input.
    """

    selection: str = "dataset"
    overlap: str = "score"
    thresholds: tuple[float | None, ...] | None = None
    tags: bool = True

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {self.selection!r}")
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"overlap must be one of {OVERLAP_RULES}, not {self.overlap!r}")
        if self.thresholds is not None:
            self.thresholds = tuple(None if t is None else float(t) for t in self.thresholds)
        self._table: dict | None = None
        self._labelled_ids: set[str] = set()
        self._counts = {"images": 0, "contested_pixels": 0, "contested_images": 0,
                        "confidence_fallback_images": 0, "labelled_images_combined": 0}

    # ---- learning the class -> source table ----------------------------------------

    def fit(self, label_sets, labelled):
        if not label_sets:
            raise PlabelError("isle needs at least one input label set (--in)")
        if len(labelled) == 0:
            raise DataError("the labelled subset (--select-on) lists no images", path=labelled.source)
        for label_set in label_sets:
            if label_set.classes != labelled.classes:
                raise LabelSetError(f"{label_set.path}: classes {label_set.classes} differ from "
                                    f"those of the labelled subset {labelled.source}: {labelled.classes}")
        names = [str(s.path.resolve()) for s in label_sets]
        thresholds = check_thresholds(self.thresholds, len(label_sets), "isle")
        n_sources, n_classes = len(label_sets), labelled.num_classes
        inter = np.zeros((n_sources, n_classes), np.int64)
        union = np.zeros((n_sources, n_classes), np.int64)
        per_image = np.zeros((n_sources, n_classes))
        images = np.zeros((n_sources, n_classes), np.int64)
        gt_images = np.zeros(n_classes, np.int64)
        for sample in track(labelled.samples, "isle: scoring inputs"):
            gt = sample.mask
            if gt is None:
                raise DataError("--select-on images need ground-truth masks; this one has none",
                                path=sample.image_path, image_id=sample.id)
            gt_images[np.unique(gt[gt < n_classes])] += 1
            for s, label_set in enumerate(label_sets):
                if sample.id not in label_set:
                    raise DataError("no label for this --select-on image", path=label_set.label_path(sample.id),
                                    image_id=sample.id)
                label = input_label(label_set.read(sample.id, size=gt.shape), sample, n_classes,
                                    thresholds[s], self.tags, names[s])
                i, u = class_overlap(label, gt, n_classes)
                inter[s] += i
                union[s] += u
                occurs = u > 0
                per_image[s, occurs] += i[occurs] / u[occurs]
                images[s] += occurs
            sample._image = sample._mask = None
        scores = selection_scores(inter, union, per_image, images, self.selection)
        seen = gt_images > 0
        chosen, priority = choose_sources(scores, seen)
        self._labelled_ids = set(labelled.ids)
        self._table = {"sources": names, "classes": labelled.classes, "scores": scores,
                       "seen": seen, "gt_images": gt_images, "chosen": chosen,
                       "priority": priority, "thresholds": thresholds,
                       "labelled": {"source": labelled.source, "images": len(labelled),
                                    "ids": labelled.ids}}
        if not quiet() and _is_rank_zero():
            from rich.console import Console

            Console().print(render_table(self.summary()))

    # ---- combining -----------------------------------------------------------------

    def combine(self, sample, pseudos):
        table = self._table
        if table is None:
            raise PlabelError("isle learns which input to trust for each class from ground truth: "
                              "pass a labelled subset with --select-on")
        if len(pseudos) != len(table["sources"]):
            raise PlabelError(f"isle was fitted on {len(table['sources'])} inputs, got {len(pseudos)}")
        n_classes = len(table["classes"])
        labels = np.stack([input_label(p, sample, n_classes, t, self.tags, name) for p, t, name
                           in zip(pseudos, table["thresholds"], table["sources"])])
        rule, confidence = self.overlap, None
        if rule == "confidence":
            confidence = self._confidence(sample, pseudos, labels)
            if confidence is None:
                rule = "score"
        label, contested = merge_claims(labels, table["chosen"], table["priority"], rule, confidence)
        counts = self._counts
        counts["images"] += 1
        counts["contested_pixels"] += contested
        counts["contested_images"] += contested > 0
        counts["labelled_images_combined"] += sample.id in self._labelled_ids
        return PseudoLabel(label)

    def _confidence(self, sample, pseudos, labels) -> np.ndarray | None:
        """float32 [C, H, W]: each contested class's normalised score in its chosen input, or
        None (counted, warned once) when an input involved in an overlap lacks that score."""
        chosen = self._table["chosen"]
        claims = claims_of(labels, chosen)
        contested = claims.sum(axis=0) > 1
        confidence = np.full(claims.shape, -np.inf, np.float32)
        sources = self._table["sources"]
        planes = {}
        for c in np.flatnonzero(claims[:, contested].any(axis=1)):
            source = chosen[c]
            if source not in planes:
                planes[source] = foreground_scores(pseudos[source], sample, len(chosen), False,
                                                   sources[source])
            scored = planes[source]
            if scored is None or c not in scored[1]:
                self._fall_back(sample.id, sources[source], int(c))
                return None
            confidence[c] = scored[0][list(scored[1]).index(c)]
        return confidence

    def _fall_back(self, image_id: str, source: str, class_id: int):
        self._counts["confidence_fallback_images"] += 1
        if self._counts["confidence_fallback_images"] == 1:
            warnings.warn(ConfidenceFallbackWarning(
                f"isle overlap=confidence: {source} has no score map for class "
                f"{self._table['classes'][class_id]!r} in image {image_id!r}; such images settle "
                f"overlaps by selection score (counted in the manifest's "
                f"summary.combined.confidence_fallback_images)"), stacklevel=3)

    # ---- reporting -----------------------------------------------------------------

    def summary(self) -> dict:
        """The learned table: every input's per-class selection score, the chosen input,
        and what combining met (overlaps, fallbacks, labelled images among the combined)."""
        table = self._table
        if table is None:
            return {}
        classes = []
        for c in range(1, len(table["classes"])):
            classes.append({
                "id": c, "name": table["classes"][c],
                "scores": [_number(x) for x in table["scores"][:, c]],
                "source": int(table["chosen"][c]),
                "seen": bool(table["seen"][c]),
                "gt_images": int(table["gt_images"][c]),
            })
        seen = table["seen"].copy()
        seen[0] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no class seen
            means = np.nanmean(table["scores"][:, seen], axis=1) if seen.any() else \
                np.full(len(table["sources"]), np.nan)
        picked = [table["scores"][table["chosen"][c], c] for c in np.flatnonzero(seen)]
        return {
            "method": "isle",
            "selection": self.selection,
            "metric": ("dataset-level class IoU" if self.selection == "dataset" else
                       "per-image class IoU, averaged over images"),
            "sources": [{"index": i, "path": p, "threshold": t, "mean": _number(m)}
                        for i, (p, t, m) in enumerate(zip(table["sources"], table["thresholds"], means))],
            "classes": classes,
            "selected_mean": _number(np.mean(picked)) if picked else None,
            "overlap": self.overlap,
            "labelled": table["labelled"],
            "combined": dict(self._counts),
        }


def _number(x) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 6)


def _is_rank_zero() -> bool:
    from plabel_kit.stages import shard

    return shard()[0] == 0


def _short_names(paths: list[str]) -> list[str]:
    names = [Path(p).name or p for p in paths]
    return names if len(set(names)) == len(names) else [f"{i}:{n}" for i, n in enumerate(names)]


def render_table(summary: dict):
    """ISLE's Table 3, transposed: classes x inputs, selection scores in %, each class's
    chosen input marked (bold, *); unseen classes show their fallback input."""
    from rich.table import Table

    sources = summary["sources"]
    names = _short_names([s["path"] for s in sources])
    metric = "dataset" if summary["selection"] == "dataset" else "per-image"
    table = Table(title=f"isle: {metric} class IoU (%) on {summary['labelled']['images']} "
                        f"labelled image(s), * = chosen", title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("chosen")
    for row in summary["classes"]:
        cells = []
        for s, score in enumerate(row["scores"]):
            text = "-" if score is None else f"{100 * score:.1f}"
            cells.append(f"[bold]{text} *[/bold]" if s == row["source"] and row["seen"] else text)
        chosen = names[row["source"]] if row["seen"] else f"{names[row['source']]} (unseen: best mean)"
        table.add_row(row["name"], *cells, chosen)
    table.add_section()
    table.add_row("mean", *["-" if s["mean"] is None else f"{100 * s['mean']:.1f}" for s in sources],
                  "-" if summary["selected_mean"] is None else f"{100 * summary['selected_mean']:.1f}")
    return table
