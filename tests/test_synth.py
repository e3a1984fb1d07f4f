"""Synthetic datasets: determinism, exact masks and labels, the evolving time series."""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from plabel_kit import synth

SIZE = 64


def read_index(index: Path) -> list[dict]:
    with open(index, newline="") as f:
        return list(csv.DictReader(f))


def load_image(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.make_scenes(tmp_path_factory.mktemp("scenes"), n=10, size=SIZE, seed=3, progress=False)


@pytest.fixture(scope="module")
def evolving(tmp_path_factory) -> Path:
    return synth.make_evolving(tmp_path_factory.mktemp("evolving"), n=120, size=SIZE, seed=1, progress=False)


def check_masks_and_labels(index: Path) -> None:
    """Shared checks: image / mask formats, labels == mask's foreground ids, and every
    labelled class visible on at least ``_min_pixels``."""
    root = index.parent
    meta = json.loads((root / "classes.json").read_text())
    classes = meta["classes"]
    assert classes[0] == "background"
    assert len(meta["palette"]) == len(classes) and meta["palette"][0] == [0, 0, 0]
    rows = read_index(index)
    assert rows
    for row in rows:
        image = load_image(root, row["image"])
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        mask_image = Image.open(root / row["mask"])
        assert mask_image.mode == "P"
        assert mask_image.getpalette()[:3 * len(classes)] == sum(meta["palette"], [])
        mask = np.asarray(mask_image)
        assert mask.shape == (SIZE, SIZE)
        assert mask.max() < len(classes)  # no ignore (255) either
        present = [classes[c] for c in np.unique(mask) if c != 0]
        assert row["labels"] == ";".join(present), row["id"]
        counts = np.bincount(mask.ravel())[1:]
        assert counts[counts > 0].min(initial=SIZE * SIZE) >= synth._min_pixels(SIZE), row["id"]


def test_scenes_masks_labels_and_format(scenes):
    check_masks_and_labels(scenes)
    assert scenes.read_text().splitlines()[0] == "id,image,labels,mask,subject,time"
    rows = read_index(scenes)
    assert [r["id"] for r in rows] == [f"scene_{i:05d}" for i in range(10)]
    assert all(r["image"] == f"images/{r['id']}.png" and r["mask"] == f"masks/{r['id']}.png" for r in rows)
    assert all(r["subject"] == "" and r["time"] == "" for r in rows)
    assert all(1 <= len(r["labels"].split(";")) <= 3 for r in rows)


def test_scenes_cover_all_classes_and_vary(tmp_path):
    index = synth.make_scenes(tmp_path, n=40, size=SIZE, seed=0, progress=False)
    rows = read_index(index)
    seen = {name for r in rows for name in r["labels"].split(";")}
    assert seen == set(synth.SCENE_CLASSES[1:])
    images = [load_image(tmp_path, r["image"]).astype(float) for r in rows[:2]]
    assert np.abs(images[0] - images[1]).mean() > 5


def test_scenes_deterministic_and_prefix(tmp_path):
    first = synth.make_scenes(tmp_path / "a", n=5, size=SIZE, seed=7, progress=False).parent
    again = synth.make_scenes(tmp_path / "b", n=5, size=SIZE, seed=7, progress=False).parent
    longer = synth.make_scenes(tmp_path / "c", n=10, size=SIZE, seed=7, progress=False).parent
    other_seed = synth.make_scenes(tmp_path / "d", n=5, size=SIZE, seed=8, progress=False).parent
    files = all_files(first)
    assert files == all_files(again)
    longer_files = all_files(longer)
    for rel, data in files.items():
        if rel != "index.csv":
            assert longer_files[rel] == data, rel
    assert longer_files["index.csv"].decode().splitlines()[:6] == files["index.csv"].decode().splitlines()
    assert (other_seed / "images/scene_00000.png").read_bytes() != files["images/scene_00000.png"]


def test_index_is_written_last_and_atomically(tmp_path, monkeypatch):
    written = []
    write = synth.write_atomic
    monkeypatch.setattr(synth, "write_atomic", lambda path, data: (written.append(path.name), write(path, data)))
    (tmp_path / "index.csv").write_text("stale\n")
    synth.make_evolving(tmp_path, n=3, size=SIZE, progress=False)
    assert written[-1] == "index.csv" and written.count("index.csv") == 1
    assert len(written) == 1 + 2 * 3 + 1  # classes.json, image + mask per photo, index
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_rejects_small_size(tmp_path):
    with pytest.raises(ValueError):
        synth.make_scenes(tmp_path, n=1, size=32, progress=False)


def test_evolving_masks_labels_and_format(evolving):
    check_masks_and_labels(evolving)
    assert evolving.read_text().splitlines()[0] == "id,image,labels,mask,subject,time,view"
    rows = read_index(evolving)
    assert len(rows) == 120
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert all(re.fullmatch(r"v\d+", r["view"]) for r in rows)


def test_evolving_subjects_days_and_times(evolving):
    by_subject = defaultdict(list)
    for row in read_index(evolving):
        by_subject[row["subject"]].append(row)
    assert len(by_subject) >= 2
    for subject, rows in by_subject.items():
        times = [datetime.fromisoformat(r["time"]) for r in rows]
        assert all(a < b for a, b in zip(times, times[1:])), subject
        assert len({t.date() for t in times}) >= 10
        assert len({r["view"] for r in rows}) >= 2
        # 1-3 photos a day
        per_day = defaultdict(int)
        for t in times:
            per_day[t.date()] += 1
        assert max(per_day.values()) <= 3


def test_evolving_deterministic(tmp_path):
    first = synth.make_evolving(tmp_path / "a", n=12, size=SIZE, seed=2, progress=False).parent
    again = synth.make_evolving(tmp_path / "b", n=12, size=SIZE, seed=2, progress=False).parent
    assert all_files(first) == all_files(again)


def test_evolving_nearby_days_alike_subjects_differ(evolving):
    """Same subject and view on adjacent photo days looks closer than different subjects."""
    root = evolving.parent
    rows = read_index(evolving)
    small = {r["id"]: cv2.resize(load_image(root, r["image"]), (16, 16), interpolation=cv2.INTER_AREA)
             .astype(np.float32) for r in rows}
    day = {r["id"]: datetime.fromisoformat(r["time"]).toordinal() for r in rows}
    near, apart = [], []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            diff = float(np.abs(small[a["id"]] - small[b["id"]]).mean())
            if a["subject"] != b["subject"]:
                apart.append(diff)
            elif a["view"] == b["view"] and 1 <= abs(day[a["id"]] - day[b["id"]]) <= 2:
                near.append(diff)
    assert len(near) >= 20
    assert np.mean(near) < 0.75 * np.mean(apart)


def test_evolving_stains_grow(evolving):
    """Stain and mould cover more of the subject late than early."""
    root = evolving.parent
    ids = {name: i for i, name in enumerate(synth.EVOLVING_CLASSES)}
    decay = [ids["stain"], ids["mould"]]
    by_subject = defaultdict(list)
    for row in read_index(evolving):
        mask = load_image(root, row["mask"])
        body = np.isin(mask, [ids["limb"], ids["torso"]] + decay).sum()
        by_subject[row["subject"]].append(np.isin(mask, decay).sum() / max(body, 1))
    for subject, fractions in by_subject.items():
        third = len(fractions) // 3
        assert np.mean(fractions[-third:]) > np.mean(fractions[:third]) + 0.1, subject
