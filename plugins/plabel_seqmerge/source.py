"""The ``seqmerge`` label source: one manual mask per sequence, carried onto the sequence's
other images and merged with their CAM labels (seed 000, sections 3.1-3.3)."""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from plabel_kit import DataError, LabelSet, LabelSetError, LabelSource, PseudoLabel
from plabel_kit.datasets import image_size, load_image
from plabel_kit.toolkit.runtime import shard

from .alignment import ALIGNMENTS, FALLBACK, FlowTracker, carry_homography, resize_nearest
from .annotations import annotation_path, read_annotation
from .homography import FEATURES, HomographyParams
from .merge import MERGES, class_thresholds, merge, precision_counts, score_of_label
from .records import Records
from .seqfile import check_against, read_sequences
from .sequencing import parse_time

UNSEQUENCED, NOT_IN_FILE = "unsequenced", "not in sequences file"
MISSING, BAD_SIZE = "annotation missing", "annotation size differs"


def _warn(message: str):
    import click

    click.echo(f"warning: seqmerge: {message}", err=True)


def _listing(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def nearest_annotated(position: int, annotated: list[int]) -> int:
    """The annotated position closest to ``position`` in time order (ties: the earlier)."""
    return min(annotated, key=lambda a: (abs(a - position), a))


class _Cache(OrderedDict):
    """A small least-recently-used store."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.capacity:
            self.popitem(last=False)
        return value


@dataclass
class SeqMerge(LabelSource):
    """Reads a sequences file (``plabel sequence build``), one manual annotation per
    sequence (``<id>.png`` or LabelMe ``<id>.json`` in ``annotations``) and a CAM label
    set (``cam``, e.g. from the ``cam`` source); writes labels (no scores). Seed 000
    (Mousavi et al.), sections 3.1-3.3.

    Every image of a sequence gets the manual mask of the sequence's annotated image,
    carried onto it (``align``: ``none`` = resize only, as the paper; ``homography`` =
    ``features`` + ratio test + RANSAC with sanity checks; ``flow`` = DIS optical flow
    chained along the time-ordered sequence from the annotated image, image by image, every
    pixel taking the label the chain carries to it (content entering the frame:
    background; ``flow_check``: pixels failing the forward-backward trust test keep the
    label carried at their position); ``auto`` = ``flow`` for dense
    sequences (between consecutive images the median pixel moves at most ``auto_motion`` of
    the longer side and at least ``auto_share`` of the pixels pass the trust test; medians
    over up to 16 steps; calendar times, where given, at most ``auto_max_gap`` seconds
    apart), else ``homography``). A flow chain breaks at
    a size change and, when ``min_consistent`` > 0, at a step where fewer than that share of
    the pixels pass the trust test (a scene cut; off by default: on real frames 1 s apart
    the share falls below 0.01 within a shot); a homography fails when none is plausible;
    each then falls back to the
    next simpler alignment, and pixels outside a warped frame take the resized mask's label.
    Then the carried mask is merged with the image's CAM labels (``merge``: ``paper`` =
    Equation 1: a pixel takes the CAM class where CAM assigns a class and the carried mask
    does not; ``confident`` = the same with only confident CAM pixels: normalised score >=
    the class's threshold, which starts at ``confidence`` (0.30, IRN's confident
    foreground) and is raised, per class, until CAM's pixels of that class were right at
    least ``min_precision`` of the time on the annotated images (never, if no threshold
    gets there; 0 = no calibration); ``none`` = the carried mask alone).
    Annotated images keep their manual masks. Unsequenced images, and the images of
    sequences without a usable annotation (missing, or not the size of its image:
    reported by id), get their CAM labels. A sequence with several annotated images
    carries each image's mask from the nearest one in time order."""

    inputs: ClassVar[tuple[str, ...]] = ("sequences", "annotations", "cam")
    batch_size: ClassVar[int] = 8

    sequences: str | None = None
    annotations: str | None = None
    cam: str | None = None
    align: str = "auto"
    merge: str = "confident"
    confidence: float = 0.30
    min_precision: float = 0.5
    features: str = "sift"
    max_features: int = 2000
    contrast_threshold: float = 0.01
    ratio_test: float = 0.75
    ransac_threshold: float = 3.0
    min_inliers: int = 8
    max_scale: float = 2.0
    flow_check: bool = False
    min_consistent: float = 0.0
    auto_motion: float = 0.05
    auto_share: float = 0.2
    auto_max_gap: float = 60.0
    work_size: int = 640
    flow_size: int = 1024

    def __post_init__(self):
        missing = [name for name in self.inputs if not getattr(self, name)]
        if missing:
            raise ValueError(f"needs {', '.join('--' + m for m in missing)}")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {', '.join(ALIGNMENTS)}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}")
        if not 0 <= self.confidence <= 1:
            raise ValueError("confidence must be in [0, 1] (CAM scores are normalised)")
        if not 0 <= self.min_precision <= 1:
            raise ValueError("min_precision must be in [0, 1] (0 = off)")
        if self.auto_max_gap < 0:
            raise ValueError("auto_max_gap must be >= 0 (seconds)")
        for name in ("min_consistent", "auto_share", "auto_motion"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1] (a share of pixels, of the image side)")
        self._homography = HomographyParams(self.features, self.max_features, self.contrast_threshold, self.ratio_test,
                                            self.ransac_threshold, self.min_inliers, self.max_scale)
        self._records = Records()  # per image and per sequence, on disk: the summary survives a resume
        self._tracker = None
        self._problems: dict[str, list] = {MISSING: [], BAD_SIZE: []}
        self._place: dict[str, tuple[dict, int]] = {}
        self._annotated: dict[str, list[tuple[int, Path]]] = {}
        self._unannotated: dict[str, str] = {}  # sequence id -> why it has no usable annotation
        self._not_in_file: set[str] = set()
        self._dataset = None
        self._thresholds = None
        self._calibration: dict = {}

    # ---- fit: read and check every input before anything is written -------------------

    def fit(self, dataset, workdir: Path) -> None:
        document = read_sequences(self.sequences)
        self._not_in_file = set(check_against(document, dataset, self.sequences))
        self._cam = LabelSet(self.cam)
        if self._cam.classes != dataset.classes:
            raise LabelSetError(f"{self.cam}: classes {self._cam.classes} differ from the dataset's {dataset.classes}")
        lacking = [i for i in dataset.ids if i not in self._cam]
        if lacking:
            raise DataError(f"{len(lacking)} image(s) have no CAM label, e.g. this one",
                            path=self._cam.label_path(lacking[0]), image_id=lacking[0])
        if not Path(self.annotations).is_dir():
            raise DataError("annotations folder not found", path=self.annotations)
        self._dataset = dataset
        self._sequences = {s["id"]: s for s in document["sequences"]}
        for sequence in document["sequences"]:
            found, usable = 0, []
            for position, image_id in enumerate(sequence["images"]):
                self._place[image_id] = (sequence, position)
                path = annotation_path(self.annotations, image_id)
                if path is not None:
                    found += 1
                    if self._check_size(path, image_id):
                        usable.append((position, path))
            if not found:
                self._problems[MISSING].append({"sequence": sequence["id"], "expected": sequence["representative"],
                                                "images": len(sequence["images"])})
            if not usable:
                self._unannotated[sequence["id"]] = BAD_SIZE if found else MISSING
            self._annotated[sequence["id"]] = usable
        self._report_problems()
        if self.merge == "confident":
            self._calibrate()
        self._images = _Cache(16)
        self._masks = _Cache(16)
        self._tracker = FlowTracker(self._sequence_image, self.flow_size, self.flow_check, self.min_consistent,
                                    on_break=self._record_break)
        self._records.open(workdir, shard()[0])

    def _record_break(self, sequence_id: str, anchor: int, position: int, reason: str):
        self._records.put(f"break:{sequence_id}:{anchor}:{position}", {"reason": reason})

    def _check_size(self, path: Path, image_id: str) -> bool:
        """Read (validate) one annotation; False, reported, when its size is not its image's."""
        mask = read_annotation(path, image_id, self._dataset.classes)
        size = image_size(self._dataset[image_id].image_path, image_id)
        if mask.shape == size:
            return True
        self._problems[BAD_SIZE].append({"id": image_id, "annotation": f"{mask.shape[1]}x{mask.shape[0]}",
                                         "image": f"{size[1]}x{size[0]}", "path": str(path)})
        return False

    def _calibrate(self):
        """Per class, the lowest CAM score threshold (from ``confidence`` up in steps of 0.05)
        at which the CAM's pixels of that class are right at least ``min_precision`` of the
        time on the annotated images, so that CAM pixels overwrite carried background only
        where they have been right at least that often."""
        grid = np.round(np.arange(self.confidence, 1.0 + 1e-9, 0.05), 4)
        labelled = np.zeros((self._dataset.num_classes, len(grid)), dtype=np.int64)
        correct = np.zeros_like(labelled)
        for image_id, path in ((self._sequences[s]["images"][p], path)
                               for s, usable in self._annotated.items() for p, path in usable):
            truth = read_annotation(path, image_id, self._dataset.classes)
            cam = self._cam.read(image_id, truth.shape)
            counts = precision_counts(cam.label, score_of_label(cam.label, cam.scores, cam.keys), truth, grid,
                                      self._dataset.num_classes)
            labelled += counts[0]
            correct += counts[1]
        thresholds = class_thresholds(labelled, correct, grid, self.min_precision)
        self._thresholds = thresholds
        names = self._dataset.classes
        self._calibration = {names[c]: {
            "threshold": None if np.isinf(thresholds[c]) else float(thresholds[c]),
            "cam_pixels": int(labelled[c, 0]),
            "precision_at_confidence": float(correct[c, 0] / labelled[c, 0]) if labelled[c, 0] else None}
            for c in range(1, len(names))}

    def _report_problems(self):
        missing, bad = self._problems[MISSING], self._problems[BAD_SIZE]
        if missing:
            _warn(f"{len(missing)} sequence(s) have no annotation in {self.annotations} (expected e.g. "
                  f"{_listing([m['expected'] for m in missing])}); their "
                  f"{sum(m['images'] for m in missing)} image(s) get CAM labels")
        if bad:
            _warn(f"{len(bad)} annotation(s) differ in size from their image and are not used: "
                  + _listing([f"{b['id']} ({b['annotation']} vs {b['image']})" for b in bad]))

    # ---- predict -------------------------------------------------------------------------

    def _sequence_image(self, sequence_id: str, position: int) -> np.ndarray:
        image_id = self._sequences[sequence_id]["images"][position]
        return self._images.get_or_make(image_id, lambda: load_image(self._dataset[image_id].image_path, image_id))

    def _mask(self, path: Path, image_id: str) -> np.ndarray:
        return self._masks.get_or_make(image_id, lambda: read_annotation(path, image_id, self._dataset.classes))

    def _align(self, method: str, sequence: dict, anchor: int, position: int, mask: np.ndarray,
               target: np.ndarray) -> np.ndarray | None:
        if method == "flow":
            carried = self._tracker.carry(sequence["id"], anchor, position, mask)
            return None if carried is None else carried.copy()  # the tracker keeps its own
        if method == "homography":
            return carry_homography(self._sequence_image(sequence["id"], anchor), mask, target,
                                    self._homography, self.work_size)
        return resize_nearest(mask, target.shape[:2])

    def _time_step(self, sequence: dict) -> float | None:
        """Median seconds between consecutive images when every image's ``time`` is a calendar
        time (ISO 8601); None when any is a plain number (days, or a frame number: the unit
        is not known) or missing."""
        times = []
        for image_id in sequence["images"]:
            raw = str(self._dataset[image_id].meta.get("time") or "").strip()
            try:
                float(raw)
            except ValueError:
                pass
            else:
                return None
            days = parse_time(raw)
            if days is None:
                return None
            times.append(days)
        return float(np.median(np.diff(times))) * 86400.0 if len(times) > 1 else None

    def _choose(self, sequence: dict) -> str:
        """``align=auto``: flow for dense sequences, homography for the rest. Dense: between
        consecutive images the typical pixel moves at most ``auto_motion`` (1/20) of the
        longer image side and at least ``auto_share`` (1/5) of the pixels pass the
        forward-backward trust test (medians over up to 16 evenly spread steps), and, where
        the images have calendar times, they were taken at most ``auto_max_gap`` seconds
        apart (median). Frames of a video, or photos seconds apart, move a few percent at
        most; photos taken days apart from a camera set up again usually move more, and
        their times say so even when two of them happen to line up."""
        key = f"sequence:{sequence['id']}"
        if self._records.get(key) is None:
            share, motion = self._tracker.typical(sequence["id"], len(sequence["images"]))
            gap = self._time_step(sequence)
            dense = (motion <= self.auto_motion and share >= self.auto_share
                     and (gap is None or gap <= self.auto_max_gap))
            self._records.put(key, {"align": "flow" if dense else "homography",
                                    "consistent_share": round(share, 4), "motion": round(motion, 4),
                                    "time_step_s": None if gap is None else round(gap, 3)})
        return self._records.get(key)["align"]

    def _carry(self, sequence: dict, anchor: int, position: int, mask: np.ndarray, target: np.ndarray,
               method: str | None = None, record: dict | None = None) -> np.ndarray:
        """The mask carried by ``method`` (default ``align``, resolved per sequence for
        ``auto``), falling back to the next simpler method when it fails; pixels outside a
        warped frame take the resized mask's label (a flow chain places every pixel). What
        was used goes into ``record`` (alignment, fallbacks, filled pixels) when given."""
        method = method or self.align
        if method == "auto":
            method = self._choose(sequence)
        fallbacks = []
        while True:
            carried = self._align(method, sequence, anchor, position, mask, target)
            if carried is not None:
                break
            fallbacks.append(f"{method}->{FALLBACK[method]}")
            method = FALLBACK[method]
        holes = carried == 255
        filled = 0
        if method == "homography" and holes.any():
            simpler = self._carry(sequence, anchor, position, mask, target, FALLBACK[method])
            carried[holes] = simpler[holes]
            filled = int(holes.sum())
        if record is not None:
            record.update(alignment=method, fallbacks=fallbacks, filled=filled)
        return carried

    def _label(self, sample, record: dict) -> np.ndarray:
        """The image's label; its outcome (and alignment) goes into ``record``."""
        size = sample.image.shape[:2]
        if sample.id not in self._place:
            record["outcome"] = NOT_IN_FILE if sample.id in self._not_in_file else UNSEQUENCED
            return self._cam.read_label(sample.id, size)
        sequence, position = self._place[sample.id]
        annotated = self._annotated[sequence["id"]]
        if not annotated:  # none found, or none the size of its image
            record["outcome"] = self._unannotated[sequence["id"]]
            return self._cam.read_label(sample.id, size)
        anchor = nearest_annotated(position, [p for p, _ in annotated])
        anchor_id = sequence["images"][anchor]
        mask = self._mask(dict(annotated)[anchor], anchor_id)
        if anchor == position:
            record["outcome"] = "annotated"
            return mask.copy()
        carried = self._carry(sequence, anchor, position, mask, sample.image, record=record)
        cam = self._cam.read(sample.id, size)
        record["outcome"] = "merged"
        record["cam_without_scores"] = self.merge == "confident" and cam.scores is None
        score = score_of_label(cam.label, cam.scores, cam.keys) if self.merge == "confident" else None
        return merge(carried, cam.label, self.merge, score, self._thresholds)

    def predict(self, samples):
        if self._dataset is None:
            raise RuntimeError("seqmerge: fit() must run before predict()")
        labels = []
        for sample in samples:
            record: dict = {}
            labels.append(PseudoLabel(self._label(sample, record)))
            self._records.put(f"image:{sample.id}", record)
        return labels

    def close(self) -> None:
        self._records.close()
        self._images = self._masks = self._tracker = None

    def summary(self) -> dict:
        """Images per outcome, alignments used, fallbacks taken, flow chains broken, the
        ``auto`` choice per sequence, problems by id: over every image of the set, including
        those an earlier (resumed) run or another torchrun rank labelled."""
        records = self._records.all()
        images = [r for k, r in records.items() if k.startswith("image:")]
        outcomes = Counter(r["outcome"] for r in images)
        outcomes.update({"cam without scores": sum(bool(r.get("cam_without_scores")) for r in images)})
        choices = {k.split(":", 1)[1]: r for k, r in sorted(records.items()) if k.startswith("sequence:")}
        filled = Counter()
        for r in images:
            if r.get("filled"):
                filled[r["alignment"]] += r["filled"]
        return {
            "images": {k: v for k, v in outcomes.items() if v},
            "alignment": dict(Counter(r["alignment"] for r in images if "alignment" in r)),
            "fallbacks": dict(Counter(f for r in images for f in r.get("fallbacks", ()))),
            "pixels_from_simpler_alignment": dict(filled),
            "flow_breaks": dict(Counter(r["reason"] for k, r in records.items() if k.startswith("break:"))),
            "auto": {"flow": sum(c["align"] == "flow" for c in choices.values()),
                     "homography": sum(c["align"] == "homography" for c in choices.values()),
                     "sequences": choices} if self.align == "auto" else {},
            "cam_thresholds": self._calibration,
            "missing_annotations": self._problems[MISSING],
            "annotation_size_differs": self._problems[BAD_SIZE],
            "not_in_sequences_file": sorted(self._not_in_file),
        }
