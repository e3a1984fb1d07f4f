"""Label sets on disk, the contract between stages.

```
<set>/manifest.json     producer, classes, palette, dataset, counts, format version
<set>/labels/<id>.png   palette PNG of class ids, 255 = ignore
<set>/scores/<id>.npz   optional: float16 ``scores`` [K, h, w], ``keys`` [K], ``stride``
```
Every file is written to ``<set>/.tmp`` and renamed into place, so a killed run leaves no
partial file where readers look. An id is finished when its PNG exists (scores are
written first). Reopening a set with the same producer resumes; another producer is refused.
"""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError, LabelSetError
from .types import PseudoLabel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so equal arrays give byte-equal files


def write_atomic(target, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``target`` through a temp file and ``os.replace``: readers see the old
    file or the whole new one, never half. The temp file goes in ``tmp_dir`` (a label set's
    ``.tmp``, swept after a crash by the pid in its name) or beside ``target`` as a hidden file."""
    target = Path(target)
    pid = os.getpid()
    tmp = tmp_dir / f"{target.name}.{pid}" if tmp_dir is not None else target.with_name(f".{target.name}.{pid}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def encode_label_png(label: np.ndarray, palette: np.ndarray) -> bytes:
    """uint8 [H, W] -> palette PNG bytes."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    image.putpalette(np.asarray(palette, dtype=np.uint8)[:256].reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def encode_scores(scores: np.ndarray, keys: np.ndarray, stride: int) -> bytes:
    """A deterministic .npz: float16 scores [K, h, w], int16 keys [K], stride."""
    buffer = io.BytesIO()
    arrays = {"scores": np.asarray(scores, dtype=np.float16),
              "keys": np.asarray(keys, dtype=np.int16), "stride": np.asarray(stride, dtype=np.int16)}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def read_manifest(path: Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise LabelSetError(f"{path}: not a label set (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise LabelSetError(f"{manifest_path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LabelSetError(f"{manifest_path}: format version {manifest.get('format_version')!r}, "
                            f"this plabel-kit reads {FORMAT_VERSION}")
    return manifest


class LabelSet:
    """Reads a label set written by :class:`LabelSetWriter` (or by ``plabel import``)."""

    def __init__(self, path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.classes: list[str] = self.manifest["classes"]
        self.palette = np.asarray(self.manifest["palette"], dtype=np.uint8)

    def __repr__(self):
        return f"LabelSet({str(self.path)!r}, {len(self.ids())} labels)"

    @property
    def producer(self) -> dict:
        return self.manifest["producer"]

    def ids(self) -> list[str]:
        folder = self.path / "labels"
        return sorted(p.name[:-4] for p in folder.glob("*.png")) if folder.is_dir() else []

    def __contains__(self, image_id: str) -> bool:
        return (self.path / "labels" / f"{image_id}.png").is_file()

    def label_path(self, image_id: str) -> Path:
        return self.path / "labels" / f"{image_id}.png"

    def scores_path(self, image_id: str) -> Path:
        return self.path / "scores" / f"{image_id}.npz"

    def has_scores(self, image_id: str) -> bool:
        return self.scores_path(image_id).is_file()

    def read_label(self, image_id: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 [H, W]; ``size`` (H, W) is checked when given."""
        from .datasets import load_index_png

        return load_index_png(self.label_path(image_id), image_id, num_classes=len(self.classes),
                              size=size, what="label")

    def read_scores(self, image_id: str):
        """(float32 scores [K, h, w], int64 keys [K], stride) or None when the id has none."""
        path = self.scores_path(image_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return (data["scores"].astype(np.float32), data["keys"].astype(np.int64),
                        int(data["stride"]))
        except Exception as exc:
            raise DataError(f"cannot read scores ({exc})", path=path, image_id=image_id) from None

    def read(self, image_id: str, size: tuple[int, int] | None = None) -> PseudoLabel:
        label = self.read_label(image_id, size)
        scores = self.read_scores(image_id)
        if scores is None:
            return PseudoLabel(label)
        return PseudoLabel(label, scores[0], scores[1], scores[2])


class LabelSetWriter:
    """Writes labels (and scores) atomically; reopening with the same producer resumes.

    ``producer`` is a JSON-able dict naming the component and its configuration; it is
    compared, without its ``version`` and ``runtime`` entries, with an existing set's before anything is
    written, so two configurations never mix in one folder."""

    def __init__(self, path, producer: dict, classes: list[str], palette, dataset: dict | None = None):
        self.path = Path(path)
        self.producer = json.loads(json.dumps(producer))  # normalise tuples etc.
        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.tmp_dir = self.path / ".tmp"
        (self.path / "labels").mkdir(parents=True, exist_ok=True)
        (self.path / "scores").mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        if (self.path / MANIFEST).exists():
            self._check_same_producer(read_manifest(self.path))
            self._clear_own_tmp()
        else:
            self._write_manifest({
                "format_version": FORMAT_VERSION,
                "producer": self.producer,
                "classes": self.classes,
                "palette": self.palette[:256].tolist(),
                "dataset": dataset or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "complete": False,
            })

    def _check_same_producer(self, manifest: dict):
        def strip(producer):
            return {k: v for k, v in producer.items() if k not in ("version", "runtime")}

        if strip(manifest["producer"]) != strip(self.producer):
            raise LabelSetError(
                f"{self.path} holds labels of another producer ({json.dumps(strip(manifest['producer']), sort_keys=True)}); "
                f"refusing to mix in {json.dumps(strip(self.producer), sort_keys=True)}: "
                f"choose another --out or delete the folder")
        if manifest["classes"] != self.classes:
            raise LabelSetError(f"{self.path} was written for classes {manifest['classes']}, "
                                f"not {self.classes}")

    def _clear_own_tmp(self):
        # a killed writer leaves temp files only here; other live ranks' temps end in their pid
        for leftover in self.tmp_dir.iterdir():
            pid = leftover.suffix.lstrip(".")
            if not (pid.isdigit() and _process_alive(int(pid))):
                leftover.unlink(missing_ok=True)

    def _write_manifest(self, manifest: dict):
        write_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2).encode(), self.tmp_dir)

    def done(self, image_id: str) -> bool:
        return (self.path / "labels" / f"{image_id}.png").is_file()

    def write(self, image_id: str, pseudo: PseudoLabel):
        if pseudo.scores is not None:
            write_atomic(self.path / "scores" / f"{image_id}.npz",
                          encode_scores(pseudo.scores, pseudo.keys, pseudo.stride), self.tmp_dir)
        write_atomic(self.path / "labels" / f"{image_id}.png",
                      encode_label_png(pseudo.label, self.palette), self.tmp_dir)

    def finish(self, extra: dict | None = None) -> dict:
        """Record counts (and e.g. a combiner's learned table) in the manifest."""
        manifest = read_manifest(self.path)
        manifest["counts"] = {
            "labels": sum(1 for _ in (self.path / "labels").glob("*.png")),
            "scores": sum(1 for _ in (self.path / "scores").glob("*.npz")),
        }
        manifest["complete"] = True
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if extra:
            manifest.update(extra)
        self._write_manifest(manifest)
        if not any(self.tmp_dir.iterdir()):
            self.tmp_dir.rmdir()
        return manifest


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
