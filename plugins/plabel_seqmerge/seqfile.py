"""The sequences file (SEQ.json): building it from a dataset, reading it, describing it.

```
{"sequences": [{"id", "subject", "images": [ids in time order], "representative": medoid id
                (middle image with --by subject)}],
 "unsequenced": [ids],                      singletons and images that cannot be sequenced
 "not_sequenceable": {reason: [ids]},       no subject, no time, unreadable time
 "params": {...}, "embedder": {"type", "config"}, "dataset": {"source", "fingerprint", "images"}}
```
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from plabel_kit import DataError
from plabel_kit.progress import track

from .sequencing import connected_groups, medoid, parse_time, pca_project, split_at_gaps, subject_links

FORMAT_VERSION = 1
MISSING_SUBJECT, MISSING_TIME, BAD_TIME = "no subject", "no time", "unreadable time"
#: where PCA is fitted: on each subject's images alone (SChISM) or once on all images
PCA_FITS = ("subject", "all")
#: ``pca_fit`` of a params dict without one (sequences files written before it was recorded)
LEGACY_PCA_FIT = "all"


def sequence_params(pca: int, window: int, ratio: float, running_mean: bool, pca_fit: str = "subject") -> dict:
    if window < 2:
        raise ValueError(f"window must be >= 2 observed days, got {window}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if pca < 0:
        raise ValueError(f"pca must be >= 0 (0 = off), got {pca}")
    if pca_fit not in PCA_FITS:
        raise ValueError(f"pca_fit must be one of {', '.join(PCA_FITS)}, got {pca_fit!r}")
    return {"pca": int(pca), "pca_fit": pca_fit, "window": int(window), "ratio": float(ratio),
            "running_mean": bool(running_mean)}


def _timed(dataset) -> tuple[list[tuple[str, float, str]], dict[str, list[str]]]:
    """((subject, time in days, id) of every sequenceable image, {reason: [ids]} of the rest)."""
    usable, skipped = [], defaultdict(list)
    for sample in dataset.samples:
        subject, raw = sample.meta.get("subject"), sample.meta.get("time")
        if not subject:
            skipped[MISSING_SUBJECT].append(sample.id)
        elif raw is None or str(raw).strip() == "":
            skipped[MISSING_TIME].append(sample.id)
        elif (time := parse_time(raw)) is None:
            skipped[BAD_TIME].append(sample.id)
        else:
            usable.append((str(subject), time, sample.id))
    return usable, dict(skipped)


def embed_dataset(embedder, samples, batch: int = 32, progress: bool = True) -> np.ndarray:
    """float32 [N, D] features of ``samples``, ``batch`` images at a time (pixels released)."""
    chunks = []
    starts = range(0, len(samples), batch)
    for start in track(starts, f"{embedder.name}: embedding", total=len(starts), enabled=progress):
        chunk = samples[start:start + batch]
        chunks.append(np.asarray(embedder.embed(chunk), dtype=np.float32))
        for sample in chunk:
            sample._image = sample._mask = None
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def build_sequences(dataset, embedder, params: dict, progress: bool = True) -> dict:
    """The SEQ.json document for ``dataset`` (see module docstring)."""
    usable, skipped = _timed(dataset)
    usable.sort()
    by_id = {s.id: s for s in dataset.samples}
    features = embed_dataset(embedder, [by_id[i] for _, _, i in usable], progress=progress)
    if len(usable) and features.shape[0] != len(usable):
        raise DataError(f"embedder {embedder.name!r} returned {features.shape[0]} rows for "
                        f"{len(usable)} images", path=dataset.source)
    per_subject: dict[str, list[int]] = defaultdict(list)
    for row, (subject, _, _) in enumerate(usable):
        per_subject[subject].append(row)
    subjects = sorted(per_subject)
    row_sets = [np.asarray(per_subject[subject], dtype=np.int64) for subject in subjects]
    reduced = subject_features(features, row_sets, params["pca"], params.get("pca_fit", LEGACY_PCA_FIT))
    sequences, sequenced = [], set()
    for subject, rows, local in zip(subjects, row_sets, reduced):
        days = np.floor([usable[r][1] for r in rows]).astype(np.int64)
        links = subject_links(local, days, params["window"], params["ratio"], params["running_mean"])
        for k, group in enumerate(connected_groups(len(rows), links)):
            ids = [usable[r][2] for r in rows[group]]  # time order: rows are sorted by (subject, time, id)
            sequences.append({"id": f"{subject}-{k + 1:04d}", "subject": subject, "images": ids,
                              "representative": ids[medoid(local[group])]})
            sequenced.update(ids)
    return _document(dataset, sequences, sequenced, skipped, params,
                     {"type": embedder.name, "config": embedder.config()})


def subject_features(features: np.ndarray, row_sets: list[np.ndarray], dims: int, fit: str) -> list[np.ndarray]:
    """Each subject's rows of ``features`` reduced by PCA to ``dims`` (0 = off): fitted on
    the subject's rows alone (``fit`` "subject": SChISM runs its PCA one donor at a time;
    float32 [len(rows), min(dims, len(rows), D)] each) or once on all rows ("all")."""
    if fit not in PCA_FITS:
        raise ValueError(f"pca_fit must be one of {', '.join(PCA_FITS)}, got {fit!r}")
    if fit == "subject":
        return [pca_project(features[rows], dims) for rows in row_sets]
    projected = pca_project(features, dims) if len(features) else features
    return [projected[rows] for rows in row_sets]


def build_subject_sequences(dataset, split_gap: float = 0.0) -> dict:
    """The SEQ.json document with one sequence per subject (``--by subject``): for data whose
    subjects are clips of a video rather than things photographed over days. Images in time
    order; the representative is the middle one (``len // 2``), from which a mask carried
    both ways travels least. ``split_gap`` > 0 starts a new sequence where the time step
    exceeds ``split_gap`` x the subject's median step. Runs of one image stay unsequenced."""
    usable, skipped = _timed(dataset)
    usable.sort()
    per_subject: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for subject, time, image_id in usable:
        per_subject[subject].append((time, image_id))
    sequences, sequenced = [], set()
    for subject in sorted(per_subject):
        items = per_subject[subject]
        runs = split_at_gaps(np.array([t for t, _ in items]), split_gap)
        for k, run in enumerate(r for r in runs if len(r) > 1):
            ids = [items[i][1] for i in run]
            sequences.append({"id": f"{subject}-{k + 1:04d}", "subject": subject, "images": ids,
                              "representative": ids[len(ids) // 2]})
            sequenced.update(ids)
    return _document(dataset, sequences, sequenced, skipped, {"by": "subject", "split_gap": float(split_gap)}, None)


def _document(dataset, sequences: list, sequenced: set, skipped: list, params: dict, embedder: dict | None) -> dict:
    """The SEQ.json document (FORMAT_VERSION) of ``sequences`` over ``dataset``."""
    return {
        "format_version": FORMAT_VERSION,
        "sequences": sequences,
        "unsequenced": [s.id for s in dataset.samples if s.id not in sequenced],
        "not_sequenceable": skipped,
        "params": params,
        "embedder": embedder,
        "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint(), "images": len(dataset)},
    }


def write_json_atomic(path, document: dict):
    from plabel_kit.labelset import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(document, indent=1) + "\n").encode())


def read_sequences(path) -> dict:
    """A SEQ.json document, checked for shape; DataError naming the file otherwise."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("sequences file not found", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from None
    if not isinstance(document, dict) or not isinstance(document.get("sequences"), list):
        raise DataError('not a sequences file (expected {"sequences": [...], ...})', path=path)
    seen: set[str] = set()
    for sequence in document["sequences"]:
        images = sequence.get("images") if isinstance(sequence, dict) else None
        if not images or "id" not in sequence or sequence.get("representative") not in images:
            raise DataError(f"malformed sequence entry {json.dumps(sequence)[:120]}", path=path)
        for image_id in images:
            if image_id in seen:
                raise DataError(f"image is in two sequences (again in {sequence['id']!r})", path=path,
                                image_id=image_id)
            seen.add(image_id)
    document.setdefault("unsequenced", [])
    document.setdefault("not_sequenceable", {})
    return document


def check_against(document: dict, dataset, path) -> list[str]:
    """Ids of ``dataset`` that the sequences file does not mention. Raises DataError when a
    sequence names an image the dataset lacks (a file built for another dataset)."""
    mentioned = {i for s in document["sequences"] for i in s["images"]}
    for image_id in mentioned:
        if image_id not in dataset:
            raise DataError(f"the sequences file names an image that is not in {dataset.source} "
                            f"(built for another dataset?)", path=path, image_id=image_id)
    mentioned.update(document["unsequenced"])
    return [i for i in dataset.ids if i not in mentioned]


def size_histogram(sizes) -> dict[str, int]:
    """Sequence sizes in power-of-two buckets: '2', '3-4', '5-8', ..."""
    buckets: Counter = Counter()
    for size in sizes:
        upper = 2
        while upper < size:
            upper *= 2
        buckets[upper] += 1
    return {("2" if upper == 2 else f"{upper // 2 + 1}-{upper}"): buckets[upper] for upper in sorted(buckets)}


def purity(sequences, group_of: dict[str, str]) -> tuple[float, float]:
    """(purity, completeness) of sequences against a grouping of image ids (e.g. subject +
    view). Purity: share of each sequence's images from its majority group, size-weighted
    mean. Completeness: share of each group's sequenced images that lie in the group's
    largest sequence, size-weighted mean."""
    majority, total = 0, 0
    per_group: dict[str, Counter] = defaultdict(Counter)
    for sequence in sequences:
        groups = Counter(group_of[i] for i in sequence["images"])
        majority += groups.most_common(1)[0][1]
        total += len(sequence["images"])
        for group, count in groups.items():
            per_group[group][sequence["id"]] += count
    if total == 0:
        return float("nan"), float("nan")
    largest = sum(c.most_common(1)[0][1] for c in per_group.values())
    return majority / total, largest / total


def describe(document: dict, dataset=None) -> dict:
    """Counts for ``plabel sequence show``; purity when ``dataset`` has a ``view`` column."""
    sizes = [len(s["images"]) for s in document["sequences"]]
    sequenced = sum(sizes)
    images = sequenced + len(document["unsequenced"])
    needed = len(sizes)
    stats = {
        "images": images,
        "sequences": needed,
        "sequenced_images": sequenced,
        "unsequenced_images": len(document["unsequenced"]),
        "not_sequenceable": {k: len(v) for k, v in document["not_sequenceable"].items()},
        "mean_size": sequenced / needed if needed else 0.0,
        "size_histogram": size_histogram(sizes),
        "annotations_needed": needed,
        "effort_saved": 1 - needed / images if images else 0.0,
    }
    if dataset is not None and all(s.meta.get("view") for s in dataset.samples):
        group_of = {s.id: f"{s.meta.get('subject')}/{s.meta['view']}" for s in dataset.samples}
        stats["purity"], stats["completeness"] = purity(document["sequences"], group_of)
        stats["views"] = len({group_of[i] for s in document["sequences"] for i in s["images"]})
    return stats
