"""A static HTML report: overlays of label sets on a sample of images, per-class IoU, and
where each label set came from (``plabel report``, the pipelines' ``report`` stage)."""
from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .datasets import Dataset
from .errors import PlabelError
from .labelset import LabelSet
from .progress import track
from .types import IGNORE

THUMBNAIL = 192  # longest side of the pictures in the page, in pixels
ALPHA = 0.55  # weight of the label colour over the image


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: ``label`` [H, W] coloured by ``palette`` [256, 3] over ``image``;
    background (0) shows the image dimmed, ignore (255) is hatched white."""
    colours = palette[label].astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    background = label == 0
    out[background] = image[background].astype(np.float32) * 0.6
    ignore = label == IGNORE
    if ignore.any():
        rows, cols = np.indices(label.shape)
        hatch = ((rows + cols) // 4) % 2 == 0
        out[ignore & hatch] = 255
    return np.clip(out, 0, 255).astype(np.uint8)


def thumbnail(array: np.ndarray, longest: int = THUMBNAIL) -> np.ndarray:
    """Scaled so that its longest side is ``longest``: area-averaged down, nearest-neighbour
    up (small synthetic images stay crisp)."""
    import cv2

    height, width = array.shape[:2]
    scale = longest / max(height, width)
    if scale == 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def sample_ids(dataset: Dataset, n: int) -> list[str]:
    """``n`` ids spread evenly over the dataset's order (the same ones on every run)."""
    ids = dataset.ids
    if n >= len(ids):
        return list(ids)
    return [ids[round(i * (len(ids) - 1) / max(n - 1, 1))] for i in range(n)]


def _save_png(path: Path, array: np.ndarray):
    from PIL import Image

    Image.fromarray(array).save(path, optimize=True)


def write_report(dataset: Dataset, labels: dict, out, *, n: int = 12, provenance=None,
                 progress: bool = True, title: str = "plabel report") -> Path:
    """Write ``out/index.html`` and ``out/images/``; ``labels`` is {title: label set path}.
    Returns the page's path. The folder is replaced as a whole, so a page is never half-written."""
    from .evaluation import evaluate

    out = Path(out)
    sets = {name: LabelSet(path) for name, path in labels.items()}
    for name, label_set in sets.items():
        if label_set.classes != dataset.classes:
            raise PlabelError(f"{label_set.path}: classes {label_set.classes} differ from the dataset's "
                              f"{dataset.classes}")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    palette = np.asarray(dataset.palette, dtype=np.uint8)
    has_gt = any(s.mask_path is not None for s in dataset.samples)
    scores = {name: evaluate(dataset, s, progress=False) for name, s in sets.items()} if has_gt else {}
    rows = []
    for image_id in track(sample_ids(dataset, n), "report: drawing overlays", enabled=progress):
        sample = dataset[image_id]
        image = sample.image
        cells = [("image", _cell(tmp, f"{image_id}__image.png", thumbnail(image)))]
        if sample.mask_path is not None:
            cells.append(("ground truth", _cell(tmp, f"{image_id}__gt.png", thumbnail(overlay(image, sample.mask, palette)))))
        for k, (name, label_set) in enumerate(sets.items()):
            if image_id in label_set:
                label = label_set.read_label(image_id, size=image.shape[:2])
                cells.append((name, _cell(tmp, f"{image_id}__{k}.png", thumbnail(overlay(image, label, palette)))))
            else:
                cells.append((name, None))
        rows.append((image_id, sorted(dataset.classes[c] for c in sample.classes), cells))
        sample._image = sample._mask = None
    pipeline = None
    if provenance is not None and Path(provenance).is_file():
        pipeline = json.loads(Path(provenance).read_text())
    page = _page(title, dataset, sets, scores, rows, pipeline, palette)
    (tmp / "index.html").write_text(page, encoding="utf-8")
    (tmp / "report.json").write_text(json.dumps(
        {"data": str(dataset.source), "images": [r[0] for r in rows],
         "labels": {name: str(s.path) for name, s in sets.items()},
         "scores": {name: {"miou": r["miou"], "fwiou": r["fwiou"]} for name, r in scores.items()}}, indent=2))
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out / "index.html"


def _cell(folder: Path, name: str, array: np.ndarray) -> str:
    _save_png(folder / "images" / name, array)
    return f"images/{name}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { border: 1px solid #ccc; padding: .2rem .45rem; font-size: .85rem; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #e8f5e9; }
.grid td { vertical-align: top; border: none; padding: .25rem; }
.grid img { display: block; }
.grid .caption { font-size: .75rem; color: #555; max-width: 192px; }
.legend span { display: inline-block; margin: 0 .6rem .3rem 0; font-size: .85rem; }
.legend i { display: inline-block; width: .9rem; height: .9rem; vertical-align: middle; margin-right: .25rem;
            border: 1px solid #888; }
#broken { display: none; background: #fdecea; padding: .5rem; border: 1px solid #e57373; }
details pre { font-size: .75rem; background: #f7f7f7; padding: .5rem; overflow-x: auto; }
"""

# marks the page with how many pictures loaded, and warns when some did not (a moved folder)
_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.querySelectorAll('img'));
  var loaded = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', loaded + '/' + images.length);
  if (loaded < images.length) {
    var box = document.getElementById('broken');
    box.textContent = (images.length - loaded) + ' of ' + images.length +
      ' pictures did not load: keep index.html beside its images/ folder.';
    box.style.display = 'block';
  }
});
"""


def _page(title, dataset, sets, scores, rows, pipeline, palette) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>{e(title)}</h1><div id='broken'></div>",
             f"<p>{e(dataset.describe())}; {len(sets)} label set(s); {len(rows)} images shown.</p>"]
    parts.append("<div class='legend'>" + "".join(
        f"<span><i style='background: rgb{tuple(int(v) for v in palette[c])}'></i>{e(name)}</span>"
        for c, name in enumerate(dataset.classes)) + "<span><i style='background: #fff'></i>ignore (255)</span></div>")
    if scores:
        parts.append(_iou_table(dataset, scores))
    parts.append("<h2>Overlays</h2><table class='grid'>")
    for image_id, classes, cells in rows:
        parts.append("<tr>")
        for name, src in cells:
            picture = f"<img src='{e(src)}' alt='{e(name)} {e(image_id)}'>" if src else "<em>no label</em>"
            caption = f"{e(image_id)}<br>{e(', '.join(classes) or 'background only')}" if name == "image" else e(name)
            parts.append(f"<td>{picture}<div class='caption'>{caption}</div></td>")
        parts.append("</tr>")
    parts.append("</table>")
    parts.append(_provenance(sets, pipeline))
    parts.append("</body></html>")
    return "\n".join(parts)


def _iou_table(dataset, scores) -> str:
    e = html.escape
    names = list(scores)
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    lines = [f"<h2>Per-class IoU (%) on {e(str(dataset.source))}</h2><table><tr><th>class</th>{head}</tr>"]

    def row(label, values):
        finite = [v for v in values if v is not None and v == v]
        best = max(finite) if finite else None
        cells = "".join(
            f"<td class='num{' best' if v is not None and v == best and best > 0 and len(names) > 1 else ''}'>"
            + ("-" if v is None or v != v else f"{100 * v:.2f}") + "</td>" for v in values)
        return f"<tr><td>{e(label)}</td>{cells}</tr>"

    for c, name in enumerate(dataset.classes):
        lines.append(row(name, [scores[n]["classes"][c]["iou"] for n in names]))
    lines.append(row("mIoU", [scores[n]["miou"] for n in names]))
    lines.append(row("fwIoU", [scores[n]["fwiou"] for n in names]))
    lines.append("</table>")
    return "\n".join(lines)


def _provenance(sets, pipeline) -> str:
    e = html.escape
    parts = ["<h2>Provenance</h2><table><tr><th>label set</th><th>made by</th><th>folder</th></tr>"]
    for name, label_set in sets.items():
        producer = label_set.producer or {}
        made_by = f"{producer.get('kind', '?')} {producer.get('type', '?')}"
        parts.append(f"<tr><td>{e(name)}</td><td>{e(made_by)}</td><td>{e(str(label_set.path))}</td></tr>")
    parts.append("</table>")
    for name, label_set in sets.items():
        parts.append(f"<details><summary>{e(name)}: manifest producer</summary><pre>"
                     f"{e(json.dumps(label_set.producer, indent=2, default=str))}</pre></details>")
    if pipeline:
        parts.append(f"<h3>Pipeline {e(str(pipeline.get('pipeline', '')))}</h3>"
                     "<table><tr><th>stage</th><th>step</th><th>reads</th><th>status</th><th>seconds</th></tr>")
        for stage in pipeline.get("stages", []):
            parts.append(f"<tr><td>{e(stage['name'])}</td><td>{e(stage['step'])}</td>"
                         f"<td>{e(', '.join(stage.get('needs') or []))}</td><td>{e(str(stage.get('status')))}</td>"
                         f"<td class='num'>{e(str(stage.get('seconds') or ''))}</td></tr>")
        parts.append("</table><details><summary>stage parameters</summary><pre>"
                     f"{e(json.dumps(pipeline.get('stages'), indent=2, default=str))}</pre></details>")
    return "\n".join(parts)
