"""Annotation round trip: task lists out, manual masks back in.

Annotations live in one folder as ``<id>.png`` (palette or grayscale PNG of class ids,
255 = ignore) or ``<id>.json`` (LabelMe: ``shapes`` with ``label`` = class name,
``points``, ``shape_type`` polygon or rectangle, plus ``imageHeight`` / ``imageWidth``;
rasterised in file order, later shapes on top; the label ``__ignore__`` paints 255, as
LabelMe's own converter does).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

from plabel_kit import DataError
from plabel_kit.datasets import load_index_png
from plabel_kit.labelset import write_atomic
from plabel_kit.types import IGNORE

IGNORE_LABEL = "__ignore__"
TASKS_CSV = "tasks.csv"
GROUND_TRUTH = "ground-truth"  # the simulated annotator
PICKS = ("medoid", "first", "middle")
_SUBPIXEL_BITS = 4  # cv2.fillPoly takes fixed-point vertices


# ---- LabelMe, pure -------------------------------------------------------------------

def rasterise_shapes(shapes: list[tuple[int, str, np.ndarray]], size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] (``size`` = (H, W)) from (value, shape_type, points float [N, 2] (x, y))
    triples, in order, later on top; unpainted pixels are 0 (background)."""
    import cv2

    label = np.zeros(size, dtype=np.uint8)
    for value, kind, points in shapes:
        if kind == "rectangle":
            (x0, y0), (x1, y1) = points[0], points[1]
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        fixed = np.round(np.asarray(points, np.float64) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillPoly(label, [fixed], int(value), cv2.LINE_8, _SUBPIXEL_BITS)
    return label


def mask_to_polygons(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(value, points int [N, 2] (x, y)) outer contours of every connected region of every
    value of ``mask`` uint8 [H, W], largest first, so that painting them in order (later on
    top) rebuilds the mask: a region inside another's hole is smaller and painted later.
    Background regions are listed only where they are enclosed (holes)."""
    import cv2

    regions = []
    height, width = mask.shape
    for value in np.unique(mask):
        binary = (mask == value).astype(np.uint8)
        # two-level hierarchy: outer boundaries (parent -1) and their holes; regions inside a
        # hole are outer boundaries again
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        outer = [c for c, h in zip(contours, hierarchy[0] if hierarchy is not None else []) if h[3] == -1]
        for contour in outer:
            points = contour.reshape(-1, 2)
            x, y, w, h = cv2.boundingRect(contour)
            touches_border = x == 0 or y == 0 or x + w == width or y + h == height
            if value == 0 and touches_border:
                continue
            filled = np.zeros_like(binary)
            cv2.fillPoly(filled, [points.astype(np.int32)], 1)
            regions.append((int(filled.sum()), int(value), points))
    regions.sort(key=lambda r: -r[0])
    return [(value, points) for _, value, points in regions]


# ---- reading -------------------------------------------------------------------------

def annotation_path(folder, image_id: str) -> Path | None:
    """The annotation file of ``image_id`` in ``folder`` (PNG or LabelMe JSON), None when
    there is none; DataError when there are both."""
    folder = Path(folder)
    found = [p for p in (folder / f"{image_id}.png", folder / f"{image_id}.json") if p.is_file()]
    if len(found) > 1:
        raise DataError("both a PNG and a LabelMe JSON annotation; keep one", path=found[0],
                        image_id=image_id)
    return found[0] if found else None


def read_labelme(path, image_id: str, classes: list[str]) -> np.ndarray:
    """uint8 [H, W] class ids from a LabelMe JSON file (see module docstring)."""
    try:
        document = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path, image_id=image_id) from None
    try:
        size = (int(document["imageHeight"]), int(document["imageWidth"]))
        raw_shapes = document["shapes"]
    except (KeyError, TypeError, ValueError):
        raise DataError("LabelMe file needs imageHeight, imageWidth and shapes", path=path,
                        image_id=image_id) from None
    values = {name: i for i, name in enumerate(classes)} | {IGNORE_LABEL: IGNORE}
    shapes = []
    for k, shape in enumerate(raw_shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        if label not in values:
            raise DataError(f"shape {k}: label {label!r} is not a class (classes: {', '.join(classes)}; "
                            f"{IGNORE_LABEL} for ignore)", path=path, image_id=image_id)
        kind = shape.get("shape_type") or "polygon"
        points = np.asarray(shape.get("points", []), dtype=np.float64)
        if kind not in ("polygon", "rectangle"):
            raise DataError(f"shape {k} ({label!r}): shape_type {kind!r} is not supported "
                            f"(polygon, rectangle)", path=path, image_id=image_id)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < (2 if kind == "rectangle" else 1):
            raise DataError(f"shape {k} ({label!r}): too few or malformed points", path=path,
                            image_id=image_id)
        shapes.append((values[label], kind, points))
    return rasterise_shapes(shapes, size)


def read_annotation(path, image_id: str, classes: list[str]) -> np.ndarray:
    """uint8 [H, W] class ids (255 = ignore) from a PNG or LabelMe annotation file."""
    path = Path(path)
    if path.suffix == ".json":
        return read_labelme(path, image_id, classes)
    return load_index_png(path, image_id, num_classes=len(classes), what="annotation")


# ---- writing -------------------------------------------------------------------------

def labelme_document(mask: np.ndarray, classes: list[str], image_name: str) -> dict:
    """A LabelMe document whose shapes rebuild ``mask`` uint8 [H, W] (255 as __ignore__)."""
    names = {i: name for i, name in enumerate(classes)} | {IGNORE: IGNORE_LABEL}
    shapes = [{"label": names[value], "points": points.astype(float).tolist(), "group_id": None,
               "shape_type": "polygon", "flags": {}} for value, points in mask_to_polygons(mask)]
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_name,
            "imageData": None, "imageHeight": int(mask.shape[0]), "imageWidth": int(mask.shape[1])}


def pick_representative(sequence: dict, pick: str) -> str:
    if pick == "medoid":
        return sequence["representative"]
    if pick == "first":
        return sequence["images"][0]
    if pick == "middle":
        return sequence["images"][len(sequence["images"]) // 2]
    raise ValueError(f"pick must be one of {', '.join(PICKS)}")


def write_tasks(document: dict, dataset, out, pick: str = "medoid") -> Path:
    """``out/tasks.csv`` (sequence, id, image) and ``out/images/`` with the images to annotate."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for sequence in document["sequences"]:
        image_id = pick_representative(sequence, pick)
        source = Path(dataset[image_id].image_path)
        target = out / "images" / f"{image_id}{source.suffix}"
        shutil.copyfile(source, target)
        rows.append({"sequence": sequence["id"], "id": image_id, "image": f"images/{target.name}"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("sequence", "id", "image"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / TASKS_CSV, buffer.getvalue().encode())
    return out / TASKS_CSV


def read_tasks(folder) -> list[dict]:
    path = Path(folder) / TASKS_CSV
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError("no task list here (make one with `plabel sequence tasks`)", path=path) from None
    if rows and not {"sequence", "id", "image"} <= set(rows[0]):
        raise DataError("expected columns sequence,id,image", path=path)
    return rows


def simulate_annotations(tasks_folder, dataset, out, fmt: str = "png") -> int:
    """Write the ground-truth masks of the task images as annotations (a simulated
    annotator for demos and tests); returns how many were written."""
    from plabel_kit.labelset import encode_label_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_tasks(tasks_folder)
    for row in rows:
        image_id = row["id"]
        if image_id not in dataset:
            raise DataError("task image is not in the dataset", path=Path(tasks_folder) / TASKS_CSV,
                            image_id=image_id)
        sample = dataset[image_id]
        if sample.mask is None:
            raise DataError("no ground-truth mask to simulate an annotation from", path=sample.image_path,
                            image_id=image_id)
        if fmt == "png":
            data = encode_label_png(sample.mask, dataset.palette)
            write_atomic(out / f"{image_id}.png", data)
        elif fmt == "labelme":
            document = labelme_document(sample.mask, dataset.classes, Path(row["image"]).name)
            write_atomic(out / f"{image_id}.json", json.dumps(document).encode())
        else:
            raise ValueError("format must be png or labelme")
        sample._image = sample._mask = None
    return len(rows)


def _write_index(path: Path, rows: list[dict]):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("id", "image", "labels", "mask"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


def write_annotated_dataset(tasks_folder, annotations, dataset, out) -> tuple[Path, list[str]]:
    """Write ``out/index.csv`` (the task images, their annotations as ``out/masks/<id>.png``,
    checked against the image size), ``out/others.csv`` (every other image of ``dataset``,
    with its own mask when it has one) and ``classes.json``. ``annotations``: a folder (PNG
    or LabelMe) or GROUND_TRUTH (the simulated annotator). Image paths are absolute, images
    stay where they are. Returns (index path, ids of tasks without an annotation)."""
    from plabel_kit.labelset import encode_label_png

    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    write_atomic(out / "classes.json", json.dumps(
        {"classes": dataset.classes, "palette": dataset.palette[:dataset.num_classes].tolist()}).encode())
    rows, missing = [], []
    for row in read_tasks(tasks_folder):
        image_id = row["id"]
        if image_id not in dataset:
            raise DataError("task image is not in the dataset", path=Path(tasks_folder) / TASKS_CSV,
                            image_id=image_id)
        sample = dataset[image_id]
        if annotations == GROUND_TRUTH:
            if sample.mask is None:
                raise DataError("no ground-truth mask to simulate an annotation from", path=sample.image_path,
                                image_id=image_id)
            mask = sample.mask
        else:
            path = annotation_path(annotations, image_id)
            if path is None:
                missing.append(image_id)
                continue
            mask = read_annotation(path, image_id, dataset.classes)
            height, width = sample.image.shape[:2]
            if mask.shape != (height, width):
                raise DataError(f"annotation is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}",
                                path=path, image_id=image_id)
        write_atomic(out / "masks" / f"{image_id}.png", encode_label_png(mask, dataset.palette))
        present = [dataset.classes[c] for c in np.unique(mask) if 0 < c < len(dataset.classes)]
        rows.append({"id": image_id, "image": str(Path(sample.image_path).resolve()), "labels": ";".join(present),
                     "mask": f"masks/{image_id}.png"})
        sample._image = sample._mask = None
    annotated = {r["id"] for r in rows}
    others = [{"id": s.id, "image": str(Path(s.image_path).resolve()),
               "labels": ";".join(dataset.classes[c] for c in s.classes),
               "mask": str(Path(s.mask_path).resolve()) if s.mask_path else ""}
              for s in dataset.samples if s.id not in annotated]
    _write_index(out / "others.csv", others)
    _write_index(out / "index.csv", rows)  # last: its presence means the folder is complete
    return out / "index.csv", missing
