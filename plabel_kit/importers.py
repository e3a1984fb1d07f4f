"""Readers for other implementations' score files, so their outputs join label sets.

- IRN ``<id>.npy``: ``{"keys": 0-based fg ids, "cam": [K, h, w], "high_res": [K, H, W]}``
- Puzzle-CAM / PNOC / CSRM: ``{"keys", "cam", "hr_cam"}`` or random-walk ``{"keys", "rw"}``
  (``rw`` has a background plane first, keys ``[0, ids+1...]``)
- PSA: ``{fg_class_index: [H, W]}``

All are pickled dicts saved with ``np.save``, some holding torch tensors. Unpickling can run
any code the file names, so they are read with a restricted unpickler (the "Restricting
Globals" recipe of the Python ``pickle`` docs) that builds only dicts, lists, numbers,
strings, numpy arrays and torch tensors and refuses every other class. Only
``--trust-pickle`` (``trust_pickle=True``) uses plain ``np.load(allow_pickle=True)`` and so
executes what the file says. Scores are checked like any other input: finite, one plane per
class key, planes of classes the image is not tagged with dropped (or refused, ``strict``).
"""
from __future__ import annotations

import io
import numbers
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .arrays import scores_to_labels
from .datasets import Dataset
from .errors import DataError
from .labelset import LabelSetWriter, dataset_record
from .progress import track
from .types import PseudoLabel, Sample

FORMATS = ("irn", "puzzle", "psa")
DEFAULT_THRESHOLDS = {"irn": 0.15, "puzzle": 0.15, "psa": 0.15}


# ---- reading .npy files without running code from them --------------------------------

def _torch_storage_from_bytes(data: bytes):
    """Stands in for ``torch.storage._load_from_bytes``, which is how a tensor's storage
    pickles outside ``torch.save``: the original calls ``torch.load(weights_only=False)`` on
    the bytes, i.e. runs any pickle inside them; torch's own weights-only loader does not."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:  # names what it refused in a long message
            found = re.search(r"GLOBAL (\S+)", str(exc))
            raise _Refused(found.group(1) if found else "an object in a torch storage") from None


def _numpy_globals() -> dict:
    try:
        from numpy._core import multiarray  # numpy >= 2 (and 1.26's alias)
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core import multiarray
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("collections", "OrderedDict"): OrderedDict}
    # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core: same functions
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = multiarray._reconstruct
        found[(module, "scalar")] = multiarray.scalar
    return found


_TORCH_GLOBALS = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
                  ("torch.storage", "_load_from_bytes")}


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _ScoreUnpickler(pickle.Unpickler):
    """Resolves only the globals that numpy arrays and torch tensors pickle to."""

    allowed = _numpy_globals()

    def find_class(self, module, name):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if (module, name) in _TORCH_GLOBALS:
            if name == "_load_from_bytes":
                return _torch_storage_from_bytes
            import torch._utils  # ModuleNotFoundError: reported as "install torch"

            return getattr(torch._utils, name)
        raise _Refused(f"{module}.{name}")


def _load_npy(path: Path):
    """``np.load(path, allow_pickle=True)`` with the pickle read by ``_ScoreUnpickler``."""
    fmt = np.lib.format
    with open(path, "rb") as handle:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            _, _, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            _, _, dtype = fmt.read_array_header_2_0(handle)
        else:  # (3, 0) only for utf-8 field names, never an object array
            dtype = None
        if dtype is None or not dtype.hasobject:
            handle.seek(0)
            return np.load(handle, allow_pickle=False)
        # what np.load does for object arrays, with its default encoding
        return _ScoreUnpickler(handle, encoding="ASCII").load()


def load_pickled(path: Path, image_id: str, *, trust_pickle: bool = False) -> dict:
    """The dict in an ``np.save``-d ``.npy``; ``trust_pickle`` executes whatever it names."""
    try:
        data = np.load(path, allow_pickle=True) if trust_pickle else _load_npy(path)
        if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
            data = data.item()
    except _Refused as exc:
        raise DataError(f"refused to unpickle {exc.name}: only numpy arrays, torch tensors and "
                        f"plain values are read (--trust-pickle executes code in the file; only "
                        f"for files you made yourself)", path=path, image_id=image_id) from None
    except ModuleNotFoundError as exc:
        raise DataError(f"the file holds {exc.name} objects; install {exc.name} to read it",
                        path=path, image_id=image_id) from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"cannot read ({type(exc).__name__}: {first})", path=path,
                        image_id=image_id) from None
    if not isinstance(data, dict):
        raise DataError(f"expected a pickled dict, got {type(data).__name__}", path=path,
                        image_id=image_id)
    return data


# ---- from a file's dict to score planes and class ids ----------------------------------

def _need(data: dict, names, path, image_id):
    for name in names:
        if name in data:
            return name
    raise DataError(f"none of the keys {list(names)} found (has {sorted(map(str, data))})",
                    path=path, image_id=image_id)


def _numpy(value, what: str, path, image_id) -> np.ndarray:
    try:
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        return np.asarray(value)
    except Exception as exc:
        raise DataError(f"{what} is not an array ({type(exc).__name__})", path=path,
                        image_id=image_id) from None


def _scores(value, what: str, path, image_id) -> np.ndarray:
    array = _numpy(value, what, path, image_id)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} must hold numbers, got {type(value).__name__} of {array.dtype}",
                        path=path, image_id=image_id)
    return array.astype(np.float32)


def _keys(value, path, image_id) -> np.ndarray:
    array = _numpy(value, "'keys'", path, image_id)
    # an empty list saves as float64; anything else must be integer class indices (any
    # shape: torch.nonzero gives [K, 1])
    if array.size and array.dtype.kind not in "iu":
        raise DataError(f"'keys' must be integer class indices, got {array.dtype} "
                        f"{array.reshape(-1)[:5].tolist()}", path=path, image_id=image_id)
    return array.astype(np.int64).reshape(-1)


def convert(fmt: str, data: dict, sample: Sample, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (float32 scores [K, h, w], dataset class ids [K]); key 0 marks a background plane."""
    if fmt == "psa":
        return _convert_psa(data, sample, path)
    if fmt == "irn":
        field = _need(data, ("high_res", "cam"), path, sample.id)
    elif fmt == "puzzle":
        field = _need(data, ("rw", "hr_cam", "cam"), path, sample.id)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    _need(data, ("keys",), path, sample.id)
    scores = _scores(data[field], f"'{field}'", path, sample.id)
    keys = _keys(data["keys"], path, sample.id)
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise DataError(f"'{field}' is {scores.ndim}-D {list(scores.shape)}, expected [K, h, w]",
                        path=path, image_id=sample.id)
    if fmt == "irn":
        keys = keys + 1
    elif field != "rw":
        keys = _puzzle_cam_keys(keys, len(scores), sample)
    if scores.shape[0] != len(keys):
        raise DataError(f"{len(keys)} keys for {scores.shape[0]} score planes", path=path,
                        image_id=sample.id)
    return scores, keys


def _convert_psa(data: dict, sample: Sample, path: Path):
    for key in data:
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise DataError(f"key {key!r} is not an integer class index (a PSA file maps "
                            f"0-based class indices to [H, W] maps)", path=path, image_id=sample.id)
    order = sorted(data, key=int)
    planes = [_scores(data[k], f"map of key {int(k)}", path, sample.id) for k in order]
    for key, plane in zip(order, planes):
        if plane.ndim != 2:
            raise DataError(f"map of key {int(key)} is {plane.ndim}-D {list(plane.shape)}, "
                            f"expected [H, W]", path=path, image_id=sample.id)
    if len({plane.shape for plane in planes}) > 1:
        raise DataError(f"maps of different sizes {sorted({p.shape for p in planes})}", path=path,
                        image_id=sample.id)
    keys = np.array([int(k) for k in order], dtype=np.int64) + 1
    if not planes:
        return np.zeros((0, 1, 1), np.float32), keys
    return np.stack(planes), keys


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


def check_scores(scores: np.ndarray, keys: np.ndarray, sample: Sample, dataset: Dataset,
                 path: Path, *, strict: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Refuse what no label can come from; -> (scores, keys, planes dropped) where the
    dropped planes are of classes the image is not tagged with (``strict``: refused)."""
    size = sample.image.shape[:2]
    if len(keys) and 0 in scores.shape[1:]:
        raise DataError(f"empty score maps {list(scores.shape)}", path=path, image_id=sample.id)
    if scores.shape[1:] != size and not (scores.shape[1] < size[0] and scores.shape[2] < size[1]):
        raise DataError(f"scores are {scores.shape[2]}x{scores.shape[1]}, the image "
                        f"{size[1]}x{size[0]}", path=path, image_id=sample.id)
    if not np.isfinite(scores).all():
        raise DataError(f"{int(np.size(scores) - np.isfinite(scores).sum())} score value(s) "
                        f"are NaN or infinite", path=path, image_id=sample.id)
    bad = [int(k) for k in keys if not 0 <= k < dataset.num_classes]
    if bad:
        raise DataError(f"class id(s) {bad} outside the dataset's {dataset.num_classes} classes",
                        path=path, image_id=sample.id)
    if len(set(keys.tolist())) != len(keys):
        raise DataError(f"class ids {keys.tolist()} repeat", path=path, image_id=sample.id)
    tagged = [k == 0 or k in sample.classes for k in keys.tolist()]
    if strict and not all(tagged):
        key = int(keys[tagged.index(False)])
        raise DataError(f"scores for class {key} ({dataset.classes[key]}), which the image is "
                        f"not tagged with", path=path, image_id=sample.id)
    keep = np.array(tagged, dtype=bool)
    scores, keys = scores[keep], keys[keep]
    if len(keys) == 0:
        scores = np.zeros((0, *size), np.float32)
    return scores, keys, tagged.count(False)


def labels_from(scores: np.ndarray, keys: np.ndarray, size, threshold: float) -> np.ndarray:
    from .arrays import resize_scores

    if len(keys) == 0:
        return np.zeros(size, np.uint8)
    scores = resize_scores(scores, size)
    if 0 in keys:  # the file brings its own background plane
        return np.asarray(keys, dtype=np.uint8)[np.argmax(scores, axis=0)]
    return scores_to_labels(scores, keys, threshold)


def import_scores(fmt: str, src, dataset: Dataset, out, *, threshold: float | None = None,
                  progress: bool = True, strict: bool = False, trust_pickle: bool = False) -> dict:
    """Write ``src/<id>.npy`` of every dataset image into label set ``out``; returns counts,
    with ``dropped``: {"planes", "images": ids} of score planes for untagged classes."""
    src = Path(src)
    if not src.is_dir():
        raise DataError("no such folder of .npy files", path=src)
    threshold = DEFAULT_THRESHOLDS[fmt] if threshold is None else threshold
    producer = {"kind": "import", "type": fmt,
                "config": {"src": str(src.resolve()), "threshold": threshold}}
    with LabelSetWriter(out, producer, dataset.classes, dataset.palette, dataset_record(dataset)) as writer:
        return _import_all(fmt, src, dataset, writer, threshold, progress, strict, trust_pickle)


def _import_all(fmt, src, dataset, writer, threshold, progress, strict, trust_pickle) -> dict:
    missing, imported, dropped = [], 0, {"planes": 0, "images": []}
    for sample in track(dataset.samples, f"importing {fmt}", enabled=progress):
        path = src / f"{sample.id}.npy"
        if not path.is_file():
            missing.append(sample.id)
            continue
        if writer.done(sample.id):
            imported += 1
            continue
        data = load_pickled(path, sample.id, trust_pickle=trust_pickle)
        scores, keys = convert(fmt, data, sample, path)
        scores, keys, n_dropped = check_scores(scores, keys, sample, dataset, path, strict=strict)
        if n_dropped:
            dropped["planes"] += n_dropped
            dropped["images"].append(sample.id)
        size = sample.image.shape[:2]
        label = labels_from(scores, keys, size, threshold)
        stride = 1 if scores.shape[1:] == size else max(1, round(size[0] / scores.shape[1]))
        writer.write(sample.id, PseudoLabel(label, scores, keys, stride))
        imported += 1
        sample._image = None
    manifest = writer.finish({"import": {"missing": len(missing)}})
    return {"imported": imported, "missing": missing, "dropped": dropped, "manifest": manifest}
