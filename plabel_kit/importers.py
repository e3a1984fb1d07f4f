"""Readers for other implementations' score files, so their outputs join label sets.

- IRN ``<id>.npy``: ``{"keys": 0-based fg ids, "cam": [K, h, w], "high_res": [K, H, W]}``
- Puzzle-CAM / PNOC / CSRM: ``{"keys", "cam", "hr_cam"}`` or random-walk ``{"keys", "rw"}``
  (``rw`` has a background plane first, keys ``[0, ids+1...]``)
- PSA: ``{fg_class_index: [H, W]}``
All are pickled dicts saved with ``np.save``, some holding torch tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import scores_to_labels
from .datasets import Dataset
from .errors import DataError
from .labelset import LabelSetWriter
from .progress import track
from .types import PseudoLabel, Sample

FORMATS = ("irn", "puzzle", "psa")
DEFAULT_THRESHOLDS = {"irn": 0.15, "puzzle": 0.15, "psa": 0.15}


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def load_pickled(path: Path, image_id: str) -> dict:
    try:
        data = np.load(path, allow_pickle=True)
        data = data.item() if data.dtype == object and data.shape == () else data
    except ModuleNotFoundError as exc:
        raise DataError(f"the file holds {exc.name} objects; install {exc.name} to read it",
                        path=path, image_id=image_id) from None
    except Exception as exc:
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", path=path,
                        image_id=image_id) from None
    if not isinstance(data, dict):
        raise DataError(f"expected a pickled dict, got {type(data).__name__}", path=path,
                        image_id=image_id)
    return data


def _need(data: dict, names, path, image_id):
    for name in names:
        if name in data:
            return name
    raise DataError(f"none of the keys {list(names)} found (has {sorted(map(str, data))})",
                    path=path, image_id=image_id)


def convert(fmt: str, data: dict, sample: Sample, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (float32 scores [K, h, w], dataset class ids [K]); key 0 marks a background plane."""
    if fmt == "psa":
        keys = np.array(sorted(int(k) for k in data), dtype=np.int64)
        if len(keys) == 0:
            return np.zeros((0, 1, 1), np.float32), keys
        return np.stack([_array(data[k]) for k in sorted(data, key=int)]), keys + 1
    if fmt == "irn":
        field = _need(data, ("high_res", "cam"), path, sample.id)
        scores = _array(data[field])
        keys = np.asarray(data["keys"]).astype(np.int64).reshape(-1) + 1
    elif fmt == "puzzle":
        field = _need(data, ("rw", "hr_cam", "cam"), path, sample.id)
        scores = _array(data[field])
        keys = np.asarray(data["keys"]).astype(np.int64).reshape(-1)
        if field != "rw":
            keys = _puzzle_cam_keys(keys, len(scores), sample)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if scores.ndim == 2:
        scores = scores[None]
    if scores.shape[0] != len(keys):
        raise DataError(f"{len(keys)} keys for {scores.shape[0]} score planes", path=path,
                        image_id=sample.id)
    return scores, keys


def _puzzle_cam_keys(keys: np.ndarray, planes: int, sample: Sample) -> np.ndarray:
    """Puzzle-CAM saves 0-based foreground keys; PNOC/CSRM variants put background 0 first
    and shift ids by one. The image's own tags decide when the layout is ambiguous."""
    if len(keys) == planes + 1 and keys[0] == 0:
        return keys[1:]
    shifted = keys + 1
    if keys.size and keys[0] == 0 and set(keys[1:]) == set(sample.classes) \
            and set(shifted) != set(sample.classes):
        return np.concatenate([[0], keys[1:]])  # background plane first
    return shifted


def labels_from(scores: np.ndarray, keys: np.ndarray, size, threshold: float) -> np.ndarray:
    from .arrays import resize_scores

    scores = resize_scores(scores, size)
    if 0 in keys:  # the file brings its own background plane
        return np.asarray(keys, dtype=np.uint8)[np.argmax(scores, axis=0)]
    return scores_to_labels(scores, keys, threshold)


def import_scores(fmt: str, src, dataset: Dataset, out, *, threshold: float | None = None,
                  progress: bool = True) -> dict:
    """Write ``src/<id>.npy`` of every dataset image into label set ``out``; returns counts."""
    src = Path(src)
    if not src.is_dir():
        raise DataError("no such folder of .npy files", path=src)
    threshold = DEFAULT_THRESHOLDS[fmt] if threshold is None else threshold
    producer = {"kind": "import", "type": fmt,
                "config": {"src": str(src.resolve()), "threshold": threshold}}
    writer = LabelSetWriter(out, producer, dataset.classes, dataset.palette,
                            {"source": dataset.source, "split": dataset.split,
                             "fingerprint": dataset.fingerprint(), "images": len(dataset)})
    missing, imported = [], 0
    for sample in track(dataset.samples, f"importing {fmt}", enabled=progress):
        path = src / f"{sample.id}.npy"
        if not path.is_file():
            missing.append(sample.id)
            continue
        if writer.done(sample.id):
            imported += 1
            continue
        scores, keys = convert(fmt, load_pickled(path, sample.id), sample, path)
        size = sample.image.shape[:2]
        if scores.shape[1:] != size and not (scores.shape[1] < size[0] and scores.shape[2] < size[1]):
            raise DataError(f"scores are {scores.shape[2]}x{scores.shape[1]}, the image "
                            f"{size[1]}x{size[0]}", path=path, image_id=sample.id)
        bad = [int(k) for k in keys if not 0 <= k < dataset.num_classes]
        if bad:
            raise DataError(f"class id(s) {bad} outside the dataset's {dataset.num_classes} classes",
                            path=path, image_id=sample.id)
        label = labels_from(scores, keys, size, threshold)
        stride = 1 if scores.shape[1:] == size else max(1, round(size[0] / scores.shape[1]))
        writer.write(sample.id, PseudoLabel(label, scores, keys, stride))
        imported += 1
        sample._image = None
    manifest = writer.finish({"import": {"missing": len(missing)}})
    return {"imported": imported, "missing": missing, "manifest": manifest}
