"""Datasets: a CSV index for any collection, or a PASCAL VOC 2012 root.

CSV index: ``id,image,labels,mask,subject,time`` (paths relative to the CSV; ``labels``
lists foreground class names separated by ``;``), ``classes.json`` beside it.
Extra columns are kept as sample metadata.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .arrays import voc_palette
from .errors import DataError
from .types import IGNORE, Sample

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
CSV_COLUMNS = ("id", "image", "labels", "mask", "subject", "time")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


def load_image(path, image_id: str | None = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB; a missing or undecodable file raises DataError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError("image file not found", path=path, image_id=image_id) from None
    except Exception as exc:  # PIL raises several types for truncated/corrupt files
        raise DataError(f"cannot decode image ({exc})", path=path, image_id=image_id) from None


def load_index_png(path, image_id: str | None = None, *, num_classes: int | None = None,
                   size: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """uint8 [H, W] class ids from a palette or grayscale PNG; checks size (H, W) and ids."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"{what} must hold class ids (palette or grayscale PNG), "
                                f"got mode {im.mode}", path=path, image_id=image_id)
            array = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{what} file not found", path=path, image_id=image_id) from None
    except Exception as exc:
        raise DataError(f"cannot decode {what} ({exc})", path=path, image_id=image_id) from None
    if size is not None and array.shape != tuple(size):
        raise DataError(f"{what} is {array.shape[1]}x{array.shape[0]} but the image is "
                        f"{size[1]}x{size[0]}", path=path, image_id=image_id)
    if array.dtype != np.uint8:
        if array.max(initial=0) > IGNORE or array.min(initial=0) < 0:
            raise DataError(f"{what} values outside 0..255", path=path, image_id=image_id)
        array = array.astype(np.uint8)
    if num_classes is not None:
        bad = (array >= num_classes) & (array != IGNORE)
        if bad.any():
            raise DataError(f"{what} holds class id {int(array[bad].max())} but there are only "
                            f"{num_classes} classes", path=path, image_id=image_id)
    return array


def image_size(path, image_id: str | None = None) -> tuple[int, int]:
    """(H, W) read from the file header without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except FileNotFoundError:
        raise DataError("image file not found", path=path, image_id=image_id) from None
    except Exception as exc:
        raise DataError(f"cannot decode image ({exc})", path=path, image_id=image_id) from None


class Dataset:
    """An ordered collection of samples with class names and a palette.

    ``source`` is the CSV file or VOC root it was read from; ids are unique."""

    def __init__(self, samples: list[Sample], classes: list[str], palette: np.ndarray,
                 source: str, split: str | None = None):
        self.samples = samples
        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.source = source
        self.split = split
        self._by_id = {s.id: s for s in samples}

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, key) -> Sample:
        return self._by_id[key] if isinstance(key, str) else self.samples[key]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, ids) -> "Dataset":
        wanted = set(ids)
        return Dataset([s for s in self.samples if s.id in wanted], self.classes, self.palette,
                       self.source, self.split)

    def fingerprint(self) -> str:
        """Hash of the class list and the ids, to tell datasets apart in manifests."""
        digest = hashlib.sha1(json.dumps([self.classes, self.ids]).encode())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        where = f"{self.source} (split {self.split})" if self.split else self.source
        return f"{len(self)} images, {self.num_classes} classes, from {where}"

    def validate(self, progress: bool = False):
        """Decode every image and mask (sizes, ids): the first problem raises DataError."""
        from .progress import track

        for sample in track(self.samples, "checking", enabled=progress):
            image = sample.image
            if sample.mask is not None and sample.mask.shape != image.shape[:2]:
                raise DataError("mask and image differ in size", path=sample.mask_path,
                                image_id=sample.id)
            sample._image = sample._mask = None  # do not keep a whole dataset in memory


def _image_loader(sample: Sample) -> np.ndarray:
    return load_image(sample.image_path, sample.id)


def _mask_loader(num_classes: int):
    def load(sample: Sample) -> np.ndarray:
        size = sample._image.shape[:2] if sample._image is not None else image_size(
            sample.image_path, sample.id)
        return load_index_png(sample.mask_path, sample.id, num_classes=num_classes, size=size)

    return load


def read_classes(path: Path) -> tuple[list[str], np.ndarray]:
    """classes.json -> (names, palette uint8 [256, 3])."""
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("classes.json not found beside the index", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError('expected {"classes": ["background", ...]}', path=path)
    if len(set(classes)) != len(classes):
        raise DataError("class names repeat", path=path)
    if len(classes) > IGNORE:
        raise DataError(f"at most {IGNORE} classes fit in 8-bit labels", path=path)
    palette = voc_palette()
    if spec.get("palette") is not None:
        given = np.asarray(spec["palette"])
        if given.ndim != 2 or given.shape[1] != 3 or len(given) < len(classes):
            raise DataError("palette must list one [r, g, b] per class", path=path)
        palette[: len(given)] = given[:256]
    return classes, palette


def read_csv_index(path) -> Dataset:
    """Read a CSV index (see module docstring); every row is checked before returning."""
    path = Path(path)
    root = path.parent
    classes, palette = read_classes(root / "classes.json")
    class_ids = {name: i for i, name in enumerate(classes)}
    try:
        handle = path.open(newline="")
    except FileNotFoundError:
        raise DataError("index file not found", path=path) from None
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    load_mask = _mask_loader(len(classes))
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("id", "image", "labels") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"header lacks column(s) {', '.join(missing)}; expected "
                            f"{','.join(CSV_COLUMNS)}", path=path)
        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            image_id = (row.get("id") or "").strip()
            if not _SAFE_ID.match(image_id):
                raise DataError(f"id must start with a letter or digit and hold only letters, "
                                f"digits, '.', '_', '-', ' '", path=where, image_id=image_id)
            if image_id in seen:
                raise DataError(f"duplicate id (first on line {seen[image_id]})", path=where,
                                image_id=image_id)
            seen[image_id] = line
            names = [n.strip() for n in (row.get("labels") or "").split(";") if n.strip()]
            ids = []
            for name in names:
                if name not in class_ids:
                    raise DataError(f"class {name!r} is not in classes.json", path=where,
                                    image_id=image_id)
                if class_ids[name] == 0:
                    raise DataError(f"background ({name!r}) is implied and must not be listed",
                                    path=where, image_id=image_id)
                ids.append(class_ids[name])
            image_path = root / (row.get("image") or "").strip()
            if not row.get("image") or not image_path.is_file():
                raise DataError(f"image file {str(image_path)!r} not found", path=where,
                                image_id=image_id)
            mask_field = (row.get("mask") or "").strip()
            mask_path = root / mask_field if mask_field else None
            if mask_path is not None and not mask_path.is_file():
                raise DataError(f"mask file {str(mask_path)!r} not found", path=where,
                                image_id=image_id)
            meta = {k: v for k, v in row.items()
                    if k not in ("id", "image", "labels", "mask") and k is not None and v not in (None, "")}
            samples.append(Sample(image_id, tuple(sorted(set(ids))), str(image_path),
                                  str(mask_path) if mask_path else None, meta,
                                  _image_loader, load_mask))
    return Dataset(samples, classes, palette, str(path))


def read_voc(root, split: str = "train") -> Dataset:
    """A VOC 2012 root: JPEGImages, SegmentationClass (or SBD's SegmentationClassAug),
    ImageSets/Segmentation/<split>.txt. Image-level labels come from the masks, or from
    Annotations/<id>.xml for images without one."""
    root = Path(root)
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
        raise DataError(f"split {split!r} not found (available: {', '.join(available) or 'none'})",
                        path=split_file)
    class_ids = {name: i for i, name in enumerate(VOC_CLASSES)}
    load_mask = _mask_loader(len(VOC_CLASSES))
    samples = []
    from .progress import track

    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    for image_id in track(ids, f"reading VOC {split}", enabled=len(ids) > 500):
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        if not image_path.is_file():
            raise DataError(f"image file {str(image_path)!r} not found", path=split_file,
                            image_id=image_id)
        mask_path = None
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            candidate = root / folder / f"{image_id}.png"
            if candidate.is_file():
                mask_path = candidate
                break
        if mask_path is not None:
            mask = load_index_png(mask_path, image_id, num_classes=len(VOC_CLASSES))
            present = sorted(int(c) for c in np.unique(mask) if 0 < c < IGNORE)
        else:
            present = _voc_xml_classes(root / "Annotations" / f"{image_id}.xml", image_id, class_ids)
        samples.append(Sample(image_id, tuple(present), str(image_path),
                              str(mask_path) if mask_path else None, {}, _image_loader, load_mask))
    return Dataset(samples, list(VOC_CLASSES), voc_palette(), str(root), split)


def _voc_xml_classes(path: Path, image_id: str, class_ids: dict[str, int]) -> list[int]:
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError("no mask and no annotation XML for this image", path=path,
                        image_id=image_id) from None
    except ET.ParseError as exc:
        raise DataError(f"cannot parse annotation XML ({exc})", path=path, image_id=image_id) from None
    names = {(obj.findtext("name") or "").strip() for obj in tree.iter("object")}
    unknown = names - set(class_ids)
    if unknown:
        raise DataError(f"unknown VOC class(es) {sorted(unknown)}", path=path, image_id=image_id)
    return sorted(class_ids[n] for n in names)


def open_dataset(data, split: str | None = None) -> Dataset:
    """``data`` is a CSV index file or a VOC root folder (with ``split``, default 'train')."""
    data = Path(data)
    if data.is_dir():
        return read_voc(data, split or "train")
    if split is not None:
        raise DataError("--split applies to a VOC root, not to a CSV index", path=data)
    if not data.exists():
        raise DataError("no such dataset (expected a CSV index or a VOC root)", path=data)
    return read_csv_index(data)
