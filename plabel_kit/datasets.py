"""Datasets: a CSV index for any collection, or a PASCAL VOC 2012 root.

CSV index: ``id,image,labels,mask,subject,time`` (UTF-8, with or without a byte order mark;
paths relative to the CSV; ``labels`` lists foreground class names separated by ``;``),
``classes.json`` beside it. Extra columns are kept as sample metadata. Image paths may lead
outside the CSV's folder unless ``confine=True``.

Images are decoded as a viewer shows them: the EXIF orientation is applied and 16-bit
samples are reduced to 8 bits. Images and masks whose header declares more than
:func:`max_pixels` pixels are refused before any pixel is decoded.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
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

DEFAULT_MAX_PIXELS = 50_000_000
# What load_image may have done to an image to decode it as it looks (see read_image).
SIXTEEN_BIT = "from 16-bit"
EXIF_ROTATED = "rotated by EXIF orientation"
CONVERSIONS = (SIXTEEN_BIT, EXIF_ROTATED)

# EXIF tag 0x0112 Orientation (EXIF 2.32, CIPA DC-008, section 4.6.4): value -> the Pillow
# transpose that makes the image upright, the table of Pillow's ImageOps.exif_transpose.
# Values 5..8 swap width and height.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def max_pixels() -> int:
    """The largest image (width x height) the loaders accept: the environment variable
    ``PLABEL_MAX_PIXELS`` when set, else 50 000 000 -- far above the images of common
    segmentation datasets (VOC, COCO: under 1 MP) and most camera and phone photos
    (12-50 MP); 60-100 MP camera or 200 MP phone photos need it raised.

    A few kilobytes of PNG can declare a canvas that takes gigabytes to decode (a
    "decompression bomb"). Pillow's own guard, ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 MP;
    see the Pillow docs of ``Image.open``), only warns up to twice that and refuses above;
    a ``PLABEL_MAX_PIXELS`` above it raises Pillow's limit to match, so one setting decides.
    """
    raw = os.environ.get("PLABEL_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(f"PLABEL_MAX_PIXELS must be a positive whole number, got {raw!r}")
    return value


def _open(path, image_id: str | None, what: str):
    """The lazily opened PIL image (header read, no pixel decoded), refused when its
    declared size exceeds :func:`max_pixels`: the check costs nothing, decoding may not."""
    from PIL import Image

    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # the user asked for larger images than Pillow's default
    try:
        with warnings.catch_warnings():
            # Our limit decides; Pillow's warning would only add a multi-line message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{what} file not found", path=path, image_id=image_id) from None
    except IsADirectoryError:
        raise DataError(f"{what} path is a folder, not a file", path=path, image_id=image_id) from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses at open above twice MAX_IMAGE_PIXELS (>= our limit), before we look
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        raise DataError(f"{what} has {size}, above the limit of {limit:,}; set PLABEL_MAX_PIXELS "
                        f"to allow it", path=path, image_id=image_id) from None
    except Exception as exc:  # PIL raises several types for truncated/corrupt files
        raise DataError(f"cannot decode {what} ({exc})", path=path, image_id=image_id) from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise DataError(f"{what} is {width}x{height} ({width * height:,} pixels), above the limit "
                        f"of {limit:,}; set PLABEL_MAX_PIXELS to allow it", path=path, image_id=image_id)
    return im


def _orientation(im) -> int:
    """EXIF orientation (1..8, 1 = upright) from the metadata Pillow read with the header:
    JPEG APP1, TIFF IFD0, WebP EXIF, PNG eXIf / text / XMP chunks before the pixel data.

    ``PngImageFile.getexif`` decodes the whole image to look for an eXIf chunk after the
    pixel data; the base ``Image.getexif`` does not, so :func:`image_size` need not decode
    and :func:`load_image` agrees with it. Pillow writes eXIf before the pixel data; a PNG
    whose eXIf chunk follows the pixel data is used as stored."""
    from PIL import Image

    try:
        value = Image.Image.getexif(im).get(_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block: viewers ignore it, and so do we
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _is_16_bit(im) -> bool:
    """Whether the file stores 16 bits per sample. Pillow gives 16-bit grayscale as mode
    I;16* but reduces 16-bit RGB(A) to 8 bits itself (raw mode RGB;16B), visible only in
    the decoder's raw mode, read here before decoding."""
    if im.mode.startswith("I;16"):
        return True
    for tile in im.tile:
        args = tile[3]
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def read_image(path, image_id: str | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`load_image`'s array and what was done to get it (a tuple of
    :data:`SIXTEEN_BIT`, :data:`EXIF_ROTATED`), for ``plabel check`` to report."""
    from PIL import Image

    im = _open(path, image_id, "image")
    with im:
        try:
            notes = [SIXTEEN_BIT] if _is_16_bit(im) else []
            orientation = _orientation(im)
            if im.mode == "F" or (im.mode == "I" and not notes):  # 32-bit samples: no agreed 8-bit view
                raise DataError(f"{'integer' if im.mode == 'I' else 'floating-point'} 32-bit images "
                                f"are not supported; save the image with 8 or 16 bits per sample",
                                path=path, image_id=image_id)
            if im.mode in _INT_MODES:  # 16-bit grayscale (older Pillow reads 16-bit PNGs as I)
                values = np.asarray(im)
                # Full-range scaling by the bit depth (keep the high byte, as Pillow does
                # for 16-bit RGB): the same stored value gives the same 8-bit value in every
                # image. Per-image min-max stretching would make brightness depend on each
                # image's content, so models would see a different scale per image.
                im8 = Image.fromarray((values >> 8).astype(np.uint8))
            else:
                im8 = im
            rgb = im8.convert("RGB")
            if orientation != 1:
                rgb = rgb.transpose(getattr(Image.Transpose, _UPRIGHT[orientation]))
                notes.append(EXIF_ROTATED)
            return np.asarray(rgb), tuple(notes)
        except DataError:
            raise
        except Exception as exc:  # truncated or corrupt pixel data
            raise DataError(f"cannot decode image ({exc})", path=path, image_id=image_id) from None


def load_image(path, image_id: str | None = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB, upright by the EXIF orientation, 16-bit samples reduced to 8 bits
    (see :func:`read_image`); a missing, undecodable or too large file raises DataError
    naming it (limit: :func:`max_pixels`, environment variable ``PLABEL_MAX_PIXELS``)."""
    return read_image(path, image_id)[0]


def load_index_png(path, image_id: str | None = None, *, num_classes: int | None = None,
                   size: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """uint8 [H, W] class ids from a palette or grayscale PNG; checks size (H, W) and ids.
    Files larger than :func:`max_pixels` are refused from the header."""
    im = _open(path, image_id, what)
    with im:
        if im.mode not in ("P", "L", *_INT_MODES):
            raise DataError(f"{what} must hold class ids (palette or grayscale PNG), "
                            f"got mode {im.mode}", path=path, image_id=image_id)
        try:
            array = np.asarray(im)
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
    """(H, W) of the image as :func:`load_image` gives it (EXIF orientations 5..8 swap the
    stored width and height), read from the file header without decoding the pixels."""
    im = _open(path, image_id, "image")
    with im:
        width, height = im.size
        return (width, height) if _orientation(im) >= 5 else (height, width)


@dataclass
class CheckReport:
    """What :meth:`Dataset.validate` accepted but a user should hear about: images converted
    to decode as they look ({conversion: [ids]}) and paths outside the dataset's folder."""

    converted: dict[str, list[str]] = field(default_factory=dict)
    outside: list[tuple[str, str, str]] = field(default_factory=list)  # (image|mask, id, path)
    folder: str = ""

    def lines(self) -> list[str]:
        """One line per finding, e.g. "converted: 2 image(s) from 16-bit (e.g. id 'x')"."""
        lines = []
        parts = [f"{len(self.converted[note])} image(s) {note} (e.g. id {self.converted[note][0]!r})"
                 for note in CONVERSIONS if self.converted.get(note)]
        if parts:
            lines.append("converted: " + ", ".join(parts))
        for what in ("image", "mask"):
            hits = [(image_id, path) for kind, image_id, path in self.outside if kind == what]
            if hits:
                lines.append(f"{len(hits)} {what} path(s) outside {self.folder}, "
                             f"e.g. id {hits[0][0]!r}: {hits[0][1]}")
        return lines


class Dataset:
    """An ordered collection of samples with class names and a palette.

    ``source`` is the CSV file or VOC root it was read from; ids are unique. ``outside``
    lists the (``"image"`` or ``"mask"``, id, path) whose file lies outside the CSV's folder."""

    def __init__(self, samples: list[Sample], classes: list[str], palette: np.ndarray,
                 source: str, split: str | None = None, outside=()):
        self.samples = samples
        self.classes = list(classes)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.source = source
        self.split = split
        self.outside = list(outside)
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
                       self.source, self.split, [o for o in self.outside if o[1] in wanted])

    def fingerprint(self) -> str:
        """Hash of the class list and the ids, to tell datasets apart in manifests."""
        digest = hashlib.sha1(json.dumps([self.classes, self.ids]).encode())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        where = f"{self.source} (split {self.split})" if self.split else self.source
        return f"{len(self)} images, {self.num_classes} classes, from {where}"

    def validate(self, progress: bool = False) -> CheckReport:
        """Decode every image and mask (sizes, ids): the first problem raises DataError.
        Returns what was accepted but worth reporting (conversions, outside paths)."""
        from .progress import track

        report = CheckReport(outside=list(self.outside), folder=str(Path(self.source).parent))
        for sample in track(self.samples, "checking", enabled=progress):
            if sample._image is None and sample._load_image is _image_loader:
                sample._image, notes = read_image(sample.image_path, sample.id)
                for note in notes:
                    report.converted.setdefault(note, []).append(sample.id)
            image = sample.image
            if sample.mask is not None and sample.mask.shape != image.shape[:2]:
                raise DataError("mask and image differ in size", path=sample.mask_path,
                                image_id=sample.id)
            sample._image = sample._mask = None  # do not keep a whole dataset in memory
        return report


def _image_loader(sample: Sample) -> np.ndarray:
    return load_image(sample.image_path, sample.id)


def _mask_loader(num_classes: int):
    def load(sample: Sample) -> np.ndarray:
        size = sample._image.shape[:2] if sample._image is not None else image_size(
            sample.image_path, sample.id)
        return load_index_png(sample.mask_path, sample.id, num_classes=num_classes, size=size)

    return load


def _read_text(path: Path, what: str, missing: str) -> str:
    """A whole UTF-8 text file (a byte order mark, as Excel writes, is dropped); every
    failure is one DataError naming the file (and the line of a byte that is not UTF-8)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(missing, path=path) from None
    except IsADirectoryError:
        raise DataError(f"is a folder, not a {what}", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read {what} ({exc.strerror or exc})", path=path) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"UTF-16 text; save the {what} as UTF-8", path=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                        f"save the {what} as UTF-8", path=path) from None


def read_classes(path: Path) -> tuple[list[str], np.ndarray]:
    """classes.json -> (names, palette uint8 [256, 3])."""
    text = _read_text(path, "classes.json", "classes.json not found beside the index")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path) from None
    except RecursionError:
        raise DataError("not valid JSON (nested too deeply)", path=path) from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError('expected {"classes": ["background", ...]}', path=path)
    for name in classes:
        # labels are ';'-separated and stripped in the index: such names could never be listed
        if not name.strip() or name != name.strip() or ";" in name:
            raise DataError(f"class name {name!r} must be non-empty, without ';' or surrounding "
                            f"spaces", path=path)
    if len(set(classes)) != len(classes):
        raise DataError("class names repeat", path=path)
    if len(classes) > IGNORE:
        raise DataError(f"at most {IGNORE} classes fit in 8-bit labels", path=path)
    palette = voc_palette()
    given = spec.get("palette")
    if given is not None:
        if not isinstance(given, list) or len(given) < len(classes):
            raise DataError("palette must list one [r, g, b] per class", path=path)
        for k, color in enumerate(given[:256]):
            if not (isinstance(color, list) and len(color) == 3
                    and all(type(v) is int and 0 <= v <= 255 for v in color)):
                raise DataError(f"palette entry {k} is {json.dumps(color)[:40]}, not [r, g, b] with "
                                f"whole numbers 0..255", path=path)
        palette[: min(len(given), 256)] = np.asarray(given[:256], dtype=np.uint8)
    return classes, palette


class _Folder:
    """Tells whether paths lie inside a folder once symbolic links are followed (a link
    inside the folder may lead anywhere). String paths and a cache of resolved parent
    folders keep this cheap: most rows of an index share a handful of folders."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self._prefix = os.path.join(self.root, "")
        self._real: dict[str, str] = {}

    def holds(self, path: str) -> bool:
        head, tail = os.path.split(path)
        try:
            if tail in ("", ".", ".."):
                real = os.path.realpath(path)
            else:
                parent = self._real.get(head)
                if parent is None:
                    parent = self._real[head] = os.path.realpath(head)
                real = os.path.join(parent, tail)
                if os.path.islink(real):
                    real = os.path.realpath(real)
        except (OSError, ValueError):
            return False
        return real == self.root or real.startswith(self._prefix)


def _row_file(folder: _Folder, root: Path, value: str, what: str, where: str, image_id: str,
              confine: bool) -> tuple[Path, bool]:
    """The file an index row names (relative to ``root``) and whether it lies outside."""
    if "\x00" in value:
        raise DataError(f"{what} path holds a NUL character", path=where, image_id=image_id)
    path = root / value
    outside = not folder.holds(str(path))
    if outside and confine:
        raise DataError(f"{what} path {value!r} leads outside {root} (refused: confine)",
                        path=where, image_id=image_id)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{what} file {str(path)!r} not found", path=where, image_id=image_id) from None
    except OSError as exc:  # e.g. a name too long, a permission denied
        raise DataError(f"{what} path {value[:80]!r} cannot be read ({exc.strerror or exc})",
                        path=where, image_id=image_id) from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{what} path {str(path)!r} is a folder, not a file", path=where,
                        image_id=image_id)
    if not stat.S_ISREG(mode):
        raise DataError(f"{what} path {str(path)!r} is not a regular file", path=where,
                        image_id=image_id)
    return path, outside


def read_csv_index(path, confine: bool = False) -> Dataset:
    """Read a CSV index (see module docstring); every row is checked before returning.

    Image and mask paths may lead outside the CSV's folder (absolute, ``..``, symbolic
    links): they are listed in ``Dataset.outside``, or refused with ``confine=True``."""
    path = Path(path)
    root = path.parent
    classes, palette = read_classes(root / "classes.json")
    class_ids = {name: i for i, name in enumerate(classes)}
    text = _read_text(path, "CSV", "index file not found")
    reader = csv.reader(io.StringIO(text, newline=""))
    folder = _Folder(root)
    samples: list[Sample] = []
    outside: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    load_mask = _mask_loader(len(classes))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"empty file: no images (expected a header {','.join(CSV_COLUMNS)} "
                            f"and one row per image)", path=path)
        header = [name.strip() for name in header]
        missing = [c for c in ("id", "image", "labels") if c not in header]
        if missing:
            raise DataError(f"header lacks column(s) {', '.join(missing)}; expected "
                            f"{','.join(CSV_COLUMNS)}", path=path)
        repeated = sorted({name for name in header if name and header.count(name) > 1})
        if repeated:
            raise DataError(f"header repeats column(s) {', '.join(repeated)}", path=path)
        for fields in reader:
            if not fields:
                continue  # a blank line
            line = reader.line_num
            where = f"{path}:{line}"
            row = {name: value for name, value in zip(header, fields) if name}
            image_id = (row.get("id") or "").strip()
            if len(fields) > len(header):  # the values would not be under their columns
                raise DataError(f"row has {len(fields)} fields but the header has {len(header)} "
                                f"(a value holding ',' needs quotes)", path=where,
                                image_id=image_id or None)
            if not _SAFE_ID.match(image_id):
                raise DataError("id must start with a letter or digit and hold only letters, "
                                "digits, '.', '_', '-', ' '", path=where, image_id=image_id)
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
            image_field = (row.get("image") or "").strip()
            if not image_field:
                raise DataError("no image path", path=where, image_id=image_id)
            image_path, away = _row_file(folder, root, image_field, "image", where, image_id, confine)
            if away:
                outside.append(("image", image_id, str(image_path)))
            mask_field = (row.get("mask") or "").strip()
            mask_path = None
            if mask_field:
                mask_path, away = _row_file(folder, root, mask_field, "mask", where, image_id, confine)
                if away:
                    outside.append(("mask", image_id, str(mask_path)))
            meta = {k: v for k, v in row.items()
                    if k not in ("id", "image", "labels", "mask") and v not in (None, "")}
            samples.append(Sample(image_id, tuple(sorted(set(ids))), str(image_path),
                                  str(mask_path) if mask_path else None, meta,
                                  _image_loader, load_mask))
    except csv.Error as exc:  # e.g. a NUL byte, a field above csv.field_size_limit()
        raise DataError(f"not a readable CSV ({exc})", path=f"{path}:{reader.line_num}") from None
    if not samples:
        raise DataError("no images: the index has a header but no rows", path=path)
    return Dataset(samples, classes, palette, str(path), outside=outside)


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

    lines = _read_text(split_file, "split file", "split file not found").splitlines()
    ids = [line.split()[0] for line in lines if line.strip()]
    for image_id in track(ids, f"reading VOC {split}", enabled=len(ids) > 500):
        # ids become file names: one holding '/' or '..' would lead outside the root
        if not _SAFE_ID.match(image_id):
            raise DataError("id must start with a letter or digit and hold only letters, "
                            "digits, '.', '_', '-', ' '", path=split_file, image_id=image_id)
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


def open_dataset(data, split: str | None = None, *, confine: bool = False) -> Dataset:
    """``data`` is a CSV index file or a VOC root folder (with ``split``, default 'train').
    ``confine``: refuse CSV image and mask paths that lead outside the CSV's folder."""
    data = Path(data)
    if data.is_dir():
        return read_voc(data, split or "train")
    if split is not None:
        raise DataError("--split applies to a VOC root, not to a CSV index", path=data)
    if not data.exists():
        raise DataError("no such dataset (expected a CSV index or a VOC root)", path=data)
    return read_csv_index(data, confine=confine)
