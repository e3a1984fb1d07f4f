"""Label sets on disk, the contract between stages.

```
<set>/manifest.json     producer, classes, palette, dataset, counts, format version
<set>/labels/<id>.png   palette PNG of class ids, 255 = ignore
<set>/scores/<id>.npz   optional: float16 ``scores`` [K, h, w], ``keys`` [K], ``stride``
<set>/.lock             while a writer runs: its pid (see :class:`FolderLock`)
```
Every file is written to ``<set>/.tmp`` and renamed into place, so a killed run leaves no
partial file where readers look. An id is finished when its PNG exists (scores are
written first). Reopening a set with the same producer and the same images resumes;
another producer, or other images under the same ids, is refused. One process writes a set
at a time (one torchrun job: its rank 0 holds the lock for all ranks).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
import weakref
import zipfile
from pathlib import Path

import numpy as np

from .errors import BusyError, DataError, LabelSetError, write_error
from .types import PseudoLabel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so equal arrays give byte-equal files


RESUME_HINT = "finished images are kept, rerun to resume"


def write_atomic(target, data: bytes, tmp_dir: Path | None = None, *, image_id: str | None = None,
                 hint: str = "") -> None:
    """Write ``data`` to ``target`` through a temp file and ``os.replace``: readers see the old
    file or the whole new one, never half. The temp file goes in ``tmp_dir`` (a label set's
    ``.tmp``, swept after a crash by the pid in its name) or beside ``target`` as a hidden file.

    A failed write (disk full, no permission, read-only) removes the temp file, leaves
    ``target`` as it was and raises :class:`~plabel_kit.errors.WriteError`, one line naming
    ``target`` (and ``image_id``, with ``hint`` on what to do)."""
    target = Path(target)
    pid = os.getpid()
    tmp = tmp_dir / f"{target.name}.{pid}" if tmp_dir is not None else target.with_name(f".{target.name}.{pid}.tmp")
    try:
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(exc, target, image_id, hint) from exc


# ---- one writer per output folder -------------------------------------------------------

_held: dict[str, list] = {}  # this process's locks: real path of the lock file -> [fd, holders]


def _drop_inherited_locks():
    """In a forked child (DataLoader workers, process pools): close the copies of the
    parent's lock descriptors. A flock lives while any copy is open, so a worker that
    outlives its killed parent would otherwise keep the folder locked."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class FolderLock:
    """An exclusive, non-blocking ``flock`` on a lock file (``<folder>/.lock`` for a folder).

    It guards an output that one command writes (a label set, a task or annotation folder, a
    sequences file) from a second, concurrent writer: two commands writing one label set
    would interleave their files, leave labels of two configurations in a set marked
    complete, or pull the temp folder from under each other. The holder checks what the
    output already holds (manifest, producer, images) and writes only while holding it;
    a second writer stops at once with one line naming the output and the holder's pid.

    The kernel drops the lock when its holder's process ends, however it ends, so a killed
    run never leaves a stale lock. The file is removed on release, while still locked: a
    process that locked a file meanwhile removed sees that (another inode at the path, or
    none) and locks again.

    Within one process it is counted, not exclusive: writers a process opens one after
    another on the same folder (a resume in a notebook, a failed writer not yet collected)
    never lock themselves out. Threads of one process are not kept apart by it."""

    def __init__(self, lock_file, target=None, what: str = "folder"):
        self.path = Path(lock_file)
        self.target = Path(target) if target is not None else self.path.parent
        self.what = what
        self._key: str | None = None

    @classmethod
    def for_folder(cls, folder, what: str = "folder") -> "FolderLock":
        return cls(Path(folder) / ".lock", folder, what)

    @classmethod
    def for_file(cls, path, what: str = "file") -> "FolderLock":
        path = Path(path)
        return cls(path.with_name(f".{path.name}.lock"), path, what)

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> "FolderLock":
        """Take the lock (the lock file's folder must exist); :class:`BusyError` when another
        process holds it."""
        if self._key is not None:
            return self
        key = os.path.realpath(self.path)
        if key in _held:
            _held[key][1] += 1
            self._key = key
            return self
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(exc, self.path) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise BusyError(f"{self.target}: another process (pid {holder}) is writing this "
                                f"{self.what}; wait for it to finish or write elsewhere") from None
            try:
                same = os.path.samestat(os.stat(self.path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if not same:  # its last holder removed the file before we locked it
                os.close(fd)
                continue
            with contextlib.suppress(OSError):  # the pid is for messages; a full disk still locks
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = [fd, 1]
            self._key = key
            return self
        raise BusyError(f"{self.target}: could not lock {self.path}")

    def release(self) -> None:
        """Drop this holder; the last one of the process removes the file and unlocks."""
        key, self._key = self._key, None
        if key is None or key not in _held:
            return
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            with contextlib.suppress(OSError):
                os.unlink(key)
            os.close(fd)  # closing the last descriptor drops the flock


def _lock_holder(fd: int) -> str:
    for _ in range(20):  # the holder writes its pid just after locking
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "?"


@contextlib.contextmanager
def exclusive_folder(folder, what: str = "folder"):
    """Hold ``<folder>/.lock`` (see :class:`FolderLock`) for the block; creates ``folder``.

    ``with exclusive_folder(out, "task folder"): write_tasks(...)``"""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, folder) from exc
    lock = FolderLock.for_folder(folder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def exclusive_file(path, what: str = "file"):
    """Hold ``.<name>.lock`` beside the file ``path`` for the block (for outputs that are one
    file, written with :func:`write_atomic`); creates the parent folder."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, Path(path).parent) from exc
    lock = FolderLock.for_file(path, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


# ---- which images a label set was made from ----------------------------------------------

HASH_SPAN = 64 * 1024


def file_identity(path) -> list:
    """``[bytes, hash]`` of a file: its size and a hash of its first and last 64 KiB.

    Cheap (at most 128 KiB read) and blind to mtimes, so copying, moving or touching a
    dataset keeps its identity, while another image under the same name (other size, or
    other bytes at either end: every re-encoded PNG or JPEG) does not. A same-size edit
    confined to the middle of a file over 128 KiB goes unseen."""
    size = os.stat(path).st_size
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        digest.update(handle.read(HASH_SPAN))
        if size > HASH_SPAN:
            handle.seek(max(HASH_SPAN, size - HASH_SPAN))
            digest.update(handle.read())
    return [size, digest.hexdigest()]


def dataset_identity(dataset, ids=None, *, missing_ok: bool = False) -> dict:
    """``{id: [bytes, hash, image path]}`` for ``ids`` (default: all) of a dataset; an image
    that cannot be read raises :class:`DataError`, or is left out with ``missing_ok``."""
    wanted = None if ids is None else set(ids)
    identity = {}
    for sample in dataset.samples:
        if wanted is not None and sample.id not in wanted:
            continue
        try:
            identity[sample.id] = [*file_identity(sample.image_path), os.path.abspath(sample.image_path)]
        except OSError as exc:
            if missing_ok:
                continue
            raise DataError(f"cannot read image ({exc.strerror or exc})", path=sample.image_path,
                            image_id=sample.id) from None
    return identity


def dataset_record(dataset) -> dict:
    """What a label set's manifest records of the dataset it was made from: source, split,
    ``fingerprint`` (classes and ids, as pipelines compare them) and ``identity`` (every
    image's size and hash, checked when the set is resumed or evaluated)."""
    return {"source": dataset.source, "split": dataset.split, "fingerprint": dataset.fingerprint(),
            "images": len(dataset), "identity": dataset_identity(dataset)}


def identity_differences(recorded: dict, current: dict) -> list[str]:
    """One line per id in both whose image differs in size or hash (a moved dataset, with
    other paths but the same files, does not differ)."""
    differences = []
    for image_id, (size, digest, path) in current.items():
        old = recorded.get(image_id)
        if old is None or [old[0], old[1]] == [size, digest]:
            continue
        if old[0] != size:
            differences.append(f"id {image_id!r} image {old[2]} ({old[0]} bytes) vs {path} ({size} bytes)")
        else:
            differences.append(f"id {image_id!r} image {old[2]} ({old[0]} bytes, hash {old[1]}) vs "
                               f"{path} (same size, hash {digest})")
    return differences


def _dump_manifest(manifest: dict) -> bytes:
    """Indented JSON, with one line per image of the dataset identity (thousands of them)."""
    identity = (manifest.get("dataset") or {}).get("identity")
    if not identity:
        return json.dumps(manifest, indent=2).encode()
    marker = "\u0000identity\u0000"
    text = json.dumps({**manifest, "dataset": {**manifest["dataset"], "identity": marker}}, indent=2)
    rows = ",\n".join(f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in identity.items())
    return text.replace(json.dumps(marker), "{\n" + rows + "\n    }", 1).encode()


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
    compared, without its ``version``, ``runtime`` and plugin version entries, with an
    existing set's before anything is written, so two configurations never mix in one folder.
    ``dataset`` (see :func:`dataset_record`) is recorded; when both it and the existing set
    carry an ``identity``, images of ids in both must be the same files.

    The writer holds the folder's :class:`FolderLock` from opening to :meth:`finish` (or
    :meth:`close`, or its process's end); ``lock=False`` is for the ranks of a torchrun job
    whose rank 0 holds it (see ``stages.open_writer``). A refused writer leaves the folder as
    it found it: nothing is created before the checks pass, and a folder it created itself
    is removed again."""

    def __init__(self, path, producer: dict, classes: list[str], palette, dataset: dict | None = None,
                 *, lock: bool = True):
        self.path = Path(path)
        self.producer = json.loads(json.dumps(producer))  # normalise tuples etc.
        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.tmp_dir = self.path / ".tmp"
        self._lock = FolderLock.for_folder(self.path, "label set") if lock else None
        self._closer = weakref.finalize(self, self._lock.release) if lock else None
        new_folders = _missing_folders(self.path)
        try:
            self._mkdir(self.path, parents=True)
            if self._lock is not None:
                self._lock.acquire()
            self._open(dataset)
        except BaseException:
            if new_folders and self._lock is not None and self._lock.held:
                shutil.rmtree(self.path, ignore_errors=True)  # ours alone: made by us, locked by us
            self.close()
            for folder in reversed(new_folders):  # deepest first; one another writer uses stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    def _open(self, dataset: dict | None):
        """Under the lock: check the existing manifest or write a new one, then make the folders."""
        if (self.path / MANIFEST).exists():
            manifest = read_manifest(self.path)
            self._check_same_producer(manifest)
            grown = self._check_same_images(manifest, dataset)
            self._mkdir(self.tmp_dir)
            if grown or manifest.get("complete"):
                # until finish() runs again the set is not complete: a resume that fails
                # half-way must not leave the earlier run's mark and counts behind
                manifest["complete"] = False
                self._write_manifest(manifest)
            self._clear_own_tmp()
        else:
            self._mkdir(self.tmp_dir)
            self._write_manifest({
                "format_version": FORMAT_VERSION,
                "producer": self.producer,
                "classes": self.classes,
                "palette": self.palette[:256].tolist(),
                "dataset": dataset or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "complete": False,
            })
        self._mkdir(self.path / "labels")
        self._mkdir(self.path / "scores")

    def _mkdir(self, folder: Path, parents: bool = False):
        try:
            folder.mkdir(parents=parents, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, folder) from exc

    def __enter__(self) -> "LabelSetWriter":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        """Release the folder's lock (:meth:`finish` does too); the set stays resumable."""
        if self._closer is not None:
            self._closer()

    def _check_same_producer(self, manifest: dict):
        old, new = _comparable(manifest["producer"]), _comparable(self.producer)
        if "plugin" not in old or "plugin" not in new:
            # sets written before producers named their plugin, and components built outside
            # the registry (tests, notebooks), compare without it
            old.pop("plugin", None)
            new.pop("plugin", None)
        if old != new:
            raise LabelSetError(
                f"{self.path} holds labels of another producer ({json.dumps(old, sort_keys=True)}); "
                f"refusing to mix in {json.dumps(new, sort_keys=True)}: "
                f"choose another --out or delete the folder")
        if manifest["classes"] != self.classes:
            raise LabelSetError(f"{self.path} was written for classes {manifest['classes']}, "
                                f"not {self.classes}")

    def _check_same_images(self, manifest: dict, dataset: dict | None) -> bool:
        """Refuse other images under ids the set was made from; record new ids' images.
        True when the manifest's identity grew (a resume with more images)."""
        recorded = (manifest.get("dataset") or {}).get("identity")
        current = (dataset or {}).get("identity")
        if recorded is None or current is None:
            # a set written before manifests recorded images (or a writer given none) resumes
            # unchecked, as it always did
            return False
        differences = identity_differences(recorded, current)
        if differences:
            more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
            raise LabelSetError(f"{self.path} was made from other images: {differences[0]}{more}; "
                                f"resume it with the dataset it was made from, or choose another --out")
        grown = {k: v for k, v in current.items() if k not in recorded}
        if not grown:
            return False
        manifest["dataset"]["identity"] = {**recorded, **grown}
        return True

    def _clear_own_tmp(self):
        # a killed writer leaves temp files only here; other live ranks' temps end in their pid
        for leftover in self.tmp_dir.iterdir():
            pid = leftover.suffix.lstrip(".")
            if not (pid.isdigit() and _process_alive(int(pid))):
                leftover.unlink(missing_ok=True)

    def _write_manifest(self, manifest: dict):
        write_atomic(self.path / MANIFEST, _dump_manifest(manifest), self.tmp_dir, hint=RESUME_HINT)

    def done(self, image_id: str) -> bool:
        return (self.path / "labels" / f"{image_id}.png").is_file()

    def write(self, image_id: str, pseudo: PseudoLabel):
        if pseudo.scores is not None:
            write_atomic(self.path / "scores" / f"{image_id}.npz",
                         encode_scores(pseudo.scores, pseudo.keys, pseudo.stride), self.tmp_dir,
                         image_id=image_id, hint=RESUME_HINT)
        write_atomic(self.path / "labels" / f"{image_id}.png",
                     encode_label_png(pseudo.label, self.palette), self.tmp_dir,
                     image_id=image_id, hint=RESUME_HINT)

    def finish(self, extra: dict | None = None) -> dict:
        """Record counts (and e.g. a combiner's learned table) in the manifest; release the lock."""
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
        if self.tmp_dir.is_dir() and not any(self.tmp_dir.iterdir()):
            self.tmp_dir.rmdir()
        self.close()
        return manifest


def _comparable(producer: dict) -> dict:
    """A producer without what may change between resumes: plabel-kit's and the plugin's
    versions (an upgrade does not block a resume) and runtime parameters."""
    kept = {k: v for k, v in producer.items() if k not in ("version", "runtime")}
    if isinstance(kept.get("plugin"), dict):
        kept["plugin"] = {k: v for k, v in kept["plugin"].items() if k != "version"}
    return kept


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing[::-1]


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
