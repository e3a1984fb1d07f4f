"""Deterministic synthetic datasets with exact masks, for tests, demos and benchmarks.

- ``make_scenes``: 1 to 3 textured shapes (six classes) on cluttered backgrounds.
- ``make_evolving``: subjects photographed from a few views over many days while their
  colours drift and stains / mould grow; adds ``subject``, ``time`` and ``view`` columns.
- ``make_video``: clips of consecutive frames with real motion (panning camera; objects that
  move, turn, bend and occlude each other); adds ``subject`` (clip), ``time`` and ``frame``.

All write ``images/<id>.png`` (RGB), ``masks/<id>.png`` (palette PNG of class ids, never
255), ``classes.json`` and, last, ``index.csv``. Every file is written atomically, so a
killed run leaves no index pointing at missing or half-written files.

Drawing functions are pure numpy / cv2 on float32 RGB in [0, 1]; ``C`` below is the side
of the canvas they draw on.
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np
from PIL import Image

from .arrays import voc_palette
from .labelset import write_atomic

MIN_SIZE = 48


# ---------------------------------------------------------------- shared drawing helpers

def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """float32 [3] RGB in [0, 1] from hue in degrees (wraps) and saturation / value (clipped)."""
    rgb = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, min(max(sat, 0.0), 1.0), min(max(val, 0.0), 1.0))
    return np.asarray(rgb, dtype=np.float32)


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each float32 [side, side]."""
    ys, xs = np.mgrid[0:side, 0:side]
    return ys.astype(np.float32), xs.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """float32 [side, side] in [0, 1]: random values on a cells x cells grid, bicubic upsampled."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    field = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    return _normalise(field)


def _fine_noise(rng: np.random.Generator, side: int, sigma: float) -> np.ndarray:
    """float32 [side, side] in [0, 1]: white noise blurred with ``sigma`` px."""
    field = cv2.GaussianBlur(rng.random((side, side), dtype=np.float32), (0, 0), sigma)
    return _normalise(field)


def _normalise(field: np.ndarray) -> np.ndarray:
    low, high = float(field.min()), float(field.max())
    return ((field - low) / (high - low if high > low else 1.0)).astype(np.float32)


def _ramp(rng: np.random.Generator, side: int) -> np.ndarray:
    """float32 [side, side] in [-1, 1]: a linear gradient at a random angle."""
    ys, xs = _grid(side)
    theta = rng.uniform(0, 2 * math.pi)
    along = (xs - (side - 1) / 2) * math.cos(theta) + (ys - (side - 1) / 2) * math.sin(theta)
    return along / (side / math.sqrt(2))


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3]: colours (or images) a, b blended by t [H, W] in [0, 1]."""
    return a + (b - a) * t[..., None]


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """float [N, 2] (x, y) points rotated about the origin."""
    theta = math.radians(degrees)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return points @ rotation.T


def _polygon_mask(side: int, points: np.ndarray) -> np.ndarray:
    """bool [side, side]: the filled polygon with (x, y) vertices ``points`` [N, 2] (sub-pixel)."""
    canvas = np.zeros((side, side), dtype=np.uint8)
    shift = 4  # cv2 takes fixed-point vertices: 4 fractional bits
    cv2.fillPoly(canvas, [np.round(points * (1 << shift)).astype(np.int32)], 1, cv2.LINE_8, shift)
    return canvas.astype(bool)


def _ellipse_mask(side: int, centre, axes: tuple[float, float], degrees: float) -> np.ndarray:
    """bool [side, side]: filled ellipse, semi-axes ``axes`` (along, across) rotated by degrees."""
    ys, xs = _grid(side)
    theta = math.radians(degrees)
    dx, dy = xs - centre[0], ys - centre[1]
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def _capsule_mask(side: int, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """bool [side, side]: pixels within ``radius`` of the segment p0-p1 ((x, y) points)."""
    ys, xs = _grid(side)
    d = p1 - p0
    t = ((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / max(float(d @ d), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return (xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2 <= radius ** 2


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] from float [H, W, 3]: mild camera blur and sensor noise, then quantise."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.9))
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.025), image.shape).astype(np.float32)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _min_pixels(size: int) -> int:
    """Fewest visible pixels a labelled object must keep: 40 at 128 px, scaled with area."""
    return max(4, round(40 * (size / 128) ** 2))


# ---------------------------------------------------------------- scenes

class _SceneClass(NamedTuple):
    name: str  # also the shape drawn
    hues: tuple[float, float]  # hue range in degrees; neighbours overlap a little
    texture: str


_SCENE_CLASSES = (
    _SceneClass("disc", (-15.0, 35.0), "shaded"),
    _SceneClass("square", (195.0, 250.0), "stripes"),
    _SceneClass("triangle", (70.0, 150.0), "dots"),
    _SceneClass("ring", (30.0, 75.0), "speckle"),
    _SceneClass("star", (265.0, 340.0), "checker"),
    _SceneClass("cross", (150.0, 210.0), "hatch"),
)
SCENE_CLASSES = ("background",) + tuple(c.name for c in _SCENE_CLASSES)


def _shape_mask(shape: str, rng: np.random.Generator, side: int, centre: np.ndarray,
                radius: float, degrees: float) -> np.ndarray:
    """bool [side, side]: one shape of family ``shape`` of about ``radius`` px, rotated."""
    if shape == "disc":
        return _ellipse_mask(side, centre, (radius, radius * rng.uniform(0.75, 1.0)), degrees)
    if shape == "ring":
        squash = rng.uniform(0.8, 1.0)
        hole = rng.uniform(0.45, 0.62)
        outer = _ellipse_mask(side, centre, (radius, radius * squash), degrees)
        return outer & ~_ellipse_mask(side, centre, (radius * hole, radius * squash * hole), degrees)
    if shape == "square":
        half = 0.8 * radius
        aspect = rng.uniform(0.8, 1.0)
        points = np.array([[-half, -half * aspect], [half, -half * aspect],
                           [half, half * aspect], [-half, half * aspect]])
    elif shape == "triangle":
        angles = np.radians(90.0 + 120.0 * np.arange(3) + rng.uniform(-8, 8, 3))
        points = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif shape == "star":
        angles = np.radians(90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.42, 0.52))
        points = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif shape == "cross":
        w, r = radius * rng.uniform(0.28, 0.38), radius
        points = np.array([[w, r], [w, w], [r, w], [r, -w], [w, -w], [w, -r],
                           [-w, -r], [-w, -w], [-r, -w], [-r, w], [-w, w], [-w, r]])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _polygon_mask(side, _rotate(points, degrees) + centre)


def _texture(kind: str, rng: np.random.Generator, side: int, centre: np.ndarray,
             radius: float) -> np.ndarray:
    """float32 [side, side] in [0, 1]: the class texture that blends an object's two colours."""
    ys, xs = _grid(side)
    theta = rng.uniform(0, math.pi)
    u = xs * math.cos(theta) + ys * math.sin(theta)  # texture axes at a random orientation
    v = -xs * math.sin(theta) + ys * math.cos(theta)
    period = rng.uniform(5.0, 9.0) * side / 128
    if kind == "shaded":  # lit sphere: bright spot off-centre, darker rim
        spot = centre + rng.uniform(-0.4, 0.4, 2) * radius
        return np.clip(np.hypot(xs - spot[0], ys - spot[1]) / (1.4 * radius), 0, 1)
    if kind == "stripes":
        return np.clip(0.5 + 1.5 * np.sin(2 * math.pi * u / period), 0, 1)
    if kind == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (du ** 2 + dv ** 2 > (0.3 * period) ** 2).astype(np.float32)
    if kind == "speckle":
        return _fine_noise(rng, side, 0.8)
    if kind == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2
    if kind == "hatch":
        hatch = np.maximum(np.sin(2 * math.pi * (u + v) / period), np.sin(2 * math.pi * (u - v) / period))
        return (hatch > 0.3).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _scene_background(rng: np.random.Generator, side: int) -> np.ndarray:
    """float32 [side, side, 3]: low-saturation smooth noise and gradient with faint irregular
    blobs (thresholded noise, so they resemble none of the class shapes)."""
    hue, sat, val = rng.uniform(0, 360), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.75)
    first = _hsv(hue, sat, val)
    second = _hsv(hue + rng.uniform(-60, 60), sat * rng.uniform(0.5, 1.5), val * rng.uniform(0.7, 1.2))
    blend = 0.6 * _smooth_noise(rng, side, int(rng.integers(2, 6))) + 0.2 * (_ramp(rng, side) + 1)
    image = _mix(np.broadcast_to(first, (side, side, 3)), second, blend)
    blobs = _smooth_noise(rng, side, int(rng.integers(5, 10))) > rng.uniform(0.6, 0.75)
    tint = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.3), val * rng.uniform(0.8, 1.2))
    image[blobs] = 0.7 * image[blobs] + 0.3 * tint
    return image


def _render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 image [size, size, 3] and uint8 class-id mask [size, size].

    Objects are placed one by one on top of each other; a placement is redrawn (up to 20
    tries, else the object is dropped) unless every object keeps at least
    ``_min_pixels`` and 35 % of its in-frame area visible, so each listed class is seen."""
    image = _scene_background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the visible object per pixel
    areas: list[int] = []
    class_ids: list[int] = []
    min_px = _min_pixels(size)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(len(_SCENE_CLASSES)))
        spec = _SCENE_CLASSES[cls]
        for _try in range(20):
            radius = size * rng.uniform(0.11, 0.24)
            centre = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
            shape = _shape_mask(spec.name, rng, size, centre, radius, rng.uniform(0, 360))
            trial = owner.copy()
            trial[shape] = len(areas)
            visible = np.bincount(trial[trial >= 0], minlength=len(areas) + 1)
            needed = np.maximum(min_px, 0.35 * np.array(areas + [shape.sum()]))
            if (visible >= needed).all():
                break
        else:
            continue
        owner = trial
        areas.append(int(shape.sum()))
        class_ids.append(cls + 1)
        hue = rng.uniform(*spec.hues)
        sat, val = rng.uniform(0.45, 0.95), rng.uniform(0.5, 0.95)
        light = _hsv(hue, sat, val)
        dark = _hsv(hue + rng.uniform(-20, 20), sat * rng.uniform(0.4, 0.8), val * rng.uniform(0.35, 0.65))
        texture = _texture(spec.texture, rng, size, centre, radius)
        image[shape] = _mix(np.broadcast_to(light, (size, size, 3)), dark, texture)[shape]
    image *= rng.uniform(0.85, 1.1) * (1 + 0.1 * _ramp(rng, size))[..., None]  # scene lighting
    lut = np.array([0] + class_ids, dtype=np.uint8)
    return _finish(image, rng), lut[owner + 1]


# ---------------------------------------------------------------- evolving subjects

EVOLVING_CLASSES = ("background", "limb", "torso", "stain", "mould", "tag")
_LIMB, _TORSO, _STAIN, _MOULD, _TAG = 1, 2, 3, 4, 5
_START = datetime(2024, 5, 1)

# ground kinds, (hue, hue jitter, saturation range, value range): grass, soil, gravel, sand;
# subject s stands on kind s % 4 so that neighbouring subjects look clearly different
_GROUNDS = (
    (100.0, 15.0, (0.45, 0.7), (0.35, 0.55)),
    (28.0, 8.0, (0.4, 0.6), (0.25, 0.4)),
    (0.0, 180.0, (0.03, 0.1), (0.45, 0.6)),
    (45.0, 6.0, (0.25, 0.4), (0.6, 0.75)),
)


@dataclass(frozen=True)
class _Subject:
    """What stays fixed for one subject; colours are (hue degrees, saturation, value)."""

    ground: tuple[float, float, float]
    limb: tuple[float, float, float]
    torso: tuple[float, float, float]
    stain: tuple[float, float, float]
    mould: tuple[float, float, float]
    tag: tuple[float, float, float]
    hue_rate: float  # degrees of body hue drift per day
    tau: float  # days to 63 % of the final darkening / texture change
    darkening: float  # final loss of body brightness
    stain_max: float  # final fraction of the body under stain
    stain_tau: float
    mould_onset: float  # day the mould starts growing
    mould_max: float
    n_views: int


@dataclass(frozen=True)
class _View:
    """One photographed area of a subject, at the canonical pose on a C x C canvas."""

    parts: np.ndarray  # uint8 [C, C]: 0 ground, _LIMB, _TORSO, _TAG
    ground_texture: np.ndarray  # float32 [C, C] in [0, 1]
    mottle: np.ndarray  # float32 [C, C] in [0, 1], body skin texture
    speckle: np.ndarray  # float32 [C, C] in [0, 1], mould texture
    stain_field: np.ndarray  # float32 [C, C]; stain covers the body where it is highest
    mould_field: np.ndarray  # float32 [C, C]; likewise for mould


def _make_subject(rng: np.random.Generator, index: int) -> _Subject:
    hue, jitter, sats, vals = _GROUNDS[index % len(_GROUNDS)]
    skin = rng.uniform(0, 45)
    return _Subject(
        ground=(hue + rng.uniform(-jitter, jitter), rng.uniform(*sats), rng.uniform(*vals)),
        limb=(skin, rng.uniform(0.2, 0.5), rng.uniform(0.65, 0.9)),
        torso=(skin + rng.uniform(-25, 25), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.7)),
        stain=(rng.uniform(280, 340), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45)),
        mould=(rng.uniform(60, 160), rng.uniform(0.1, 0.3), rng.uniform(0.8, 0.95)),
        tag=(float(rng.choice([25.0, 50.0, 120.0, 210.0])), rng.uniform(0.8, 0.95), rng.uniform(0.85, 1.0)),
        hue_rate=rng.uniform(0.4, 1.0),
        tau=rng.uniform(15, 40),
        darkening=rng.uniform(0.3, 0.5),
        stain_max=rng.uniform(0.3, 0.6),
        stain_tau=rng.uniform(10, 30),
        mould_onset=rng.uniform(3, 15),
        mould_max=rng.uniform(0.15, 0.35),
        n_views=int(rng.integers(2, 4)),
    )


def _view_layout(rng: np.random.Generator, canvas: int, size: int, with_tag: bool,
                 min_px: int) -> np.ndarray:
    """uint8 [canvas, canvas] part ids: a torso with limbs (or a close-up of limbs) and maybe
    a tag. Everything stays within 0.33 * size of the centre, so it remains in frame under
    any camera change of ``_photograph`` (scale <= 1.15, shift <= 0.1 * size). Limbs left with
    fewer than 2 * min_px visible pixels in all (hidden under torso and tag) are dropped, as
    the photo may shrink them by a third."""
    centre = np.full(2, (canvas - 1) / 2)
    reach = 0.33 * size

    def inside(point: np.ndarray, margin: float) -> np.ndarray:
        offset = point - centre
        limit = reach - margin
        norm = float(np.hypot(*offset))
        return point if norm <= limit else centre + offset * (limit / norm)

    parts = np.zeros((canvas, canvas), dtype=np.uint8)
    torso = None
    limbs = []
    if rng.random() < 0.75:
        middle = centre + rng.uniform(-0.04, 0.04, 2) * size
        axes = (size * rng.uniform(0.19, 0.27), size * rng.uniform(0.1, 0.16))
        degrees = rng.uniform(0, 360)
        torso = (middle, axes, degrees)
        for _ in range(int(rng.integers(1, 4))):
            phi = rng.uniform(0, 2 * math.pi)  # limbs leave the torso outwards
            start = middle + _rotate(np.array([[0.7 * axes[0] * math.cos(phi), 0.7 * axes[1] * math.sin(phi)]]),
                                     degrees)[0]
            direction = math.radians(degrees) + phi + rng.uniform(-0.5, 0.5)
            end = start + size * rng.uniform(0.15, 0.28) * np.array([math.cos(direction), math.sin(direction)])
            limbs.append((start, end, size * rng.uniform(0.03, 0.05)))
    else:  # close-up of one or two limbs crossing the middle of the photo
        for _ in range(int(rng.integers(1, 3))):
            middle = centre + rng.uniform(-0.08, 0.08, 2) * size
            direction = rng.uniform(0, 2 * math.pi)
            half = size * rng.uniform(0.2, 0.3) * np.array([math.cos(direction), math.sin(direction)])
            limbs.append((middle - half, middle + half, size * rng.uniform(0.05, 0.08)))
    for start, end, radius in limbs:
        parts[_capsule_mask(canvas, inside(start, radius), inside(end, radius), radius)] = _LIMB
    if torso is not None:
        parts[_ellipse_mask(canvas, *torso)] = _TORSO
    if with_tag:  # a plastic label lying on the body, not too close to the edge of the reach
        ys, xs = np.nonzero(parts)
        near = np.hypot(xs - centre[0], ys - centre[1]) <= 0.25 * size
        pick = int(rng.integers(int(near.sum())))
        spot = np.array([xs[near][pick], ys[near][pick]], dtype=np.float64)
        half = size * rng.uniform(0.04, 0.05)
        square = np.array([[-half, -half * 0.7], [half, -half * 0.7], [half, half * 0.7], [-half, half * 0.7]])
        parts[_polygon_mask(canvas, _rotate(square, rng.uniform(0, 360)) + spot)] = _TAG
    if 0 < np.count_nonzero(parts == _LIMB) < 2 * min_px:
        parts[parts == _LIMB] = 0
    return parts


def _grass(rng: np.random.Generator, canvas: int, size: int) -> np.ndarray:
    """float32 [canvas, canvas] in [0, 1]: streaky texture (noise smeared along a direction)
    over low-frequency patches, read as grass / soil / gravel depending on its colours."""
    length = max(3, int(size * 0.06)) | 1
    kernel = np.zeros((length, length), dtype=np.float32)
    theta = rng.uniform(0, math.pi)
    dx, dy = (length // 2) * math.cos(theta), (length // 2) * math.sin(theta)
    mid = length // 2
    cv2.line(kernel, (round(mid - dx), round(mid - dy)), (round(mid + dx), round(mid + dy)), 1.0, 1)
    streaks = cv2.filter2D(rng.random((canvas, canvas), dtype=np.float32), -1, kernel / kernel.sum(),
                           borderType=cv2.BORDER_REFLECT)
    return 0.6 * _normalise(streaks) + 0.4 * _smooth_noise(rng, canvas, int(rng.integers(6, 12)))


def _make_view(rng: np.random.Generator, canvas: int, size: int, tag_chance: float) -> _View:
    return _View(
        parts=_view_layout(rng, canvas, size, rng.random() < tag_chance, _min_pixels(size)),
        ground_texture=_grass(rng, canvas, size),
        mottle=0.6 * _smooth_noise(rng, canvas, 16) + 0.4 * _fine_noise(rng, canvas, 1.5),
        speckle=_fine_noise(rng, canvas, 0.7),
        stain_field=_smooth_noise(rng, canvas, 8),
        mould_field=_smooth_noise(rng, canvas, 10),
    )


def _grown(field: np.ndarray, body: np.ndarray, fraction: float, min_px: int) -> np.ndarray:
    """bool [C, C]: the ``fraction`` of ``body`` where ``field`` is highest. A quantile of a
    fixed field, so the region grows monotonically with the fraction; empty when it would
    have fewer than 2 * min_px pixels (it may shrink by up to a third in the photo)."""
    values = field[body]
    if fraction <= 0 or values.size == 0:
        return np.zeros_like(body)
    region = body & (field > np.quantile(values, 1.0 - fraction))
    return region if region.sum() >= 2 * min_px else np.zeros_like(body)


def _render_day(subject: _Subject, view: _View, day: int, min_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The view on ``day`` at the canonical pose: float32 image [C, C, 3], uint8 labels [C, C].

    Body colours drift in hue and darken, skin mottling strengthens, the ground dries (duller,
    towards yellow), and stain then mould spread, all smoothly with the day."""
    age = 1.0 - math.exp(-day / subject.tau)
    drift = subject.hue_rate * day
    labels = view.parts.copy()
    body = (labels == _LIMB) | (labels == _TORSO)
    stain = _grown(view.stain_field, body, subject.stain_max * (1 - math.exp(-day / subject.stain_tau)), min_px)
    labels[stain] = _STAIN
    mould_age = max(0.0, day - subject.mould_onset)
    labels[_grown(view.mould_field, body, subject.mould_max * (1 - math.exp(-mould_age / 20)), min_px)] = _MOULD
    # decay swallows what little it leaves of a part, so no class shows as a few stray pixels
    for part, into in ((_LIMB, _STAIN), (_TORSO, _STAIN), (_STAIN, _MOULD)):
        left = labels == part
        if 0 < np.count_nonzero(left) < 2 * min_px:
            labels[left] = into

    hue, sat, val = subject.ground
    ground = _hsv(hue - 0.3 * drift, sat * (1 - 0.3 * age), val)
    image = _mix(np.broadcast_to(0.55 * ground, view.mottle.shape + (3,)), ground, view.ground_texture)
    mottling = (1 + (0.1 + 0.3 * age) * (2 * view.mottle - 1))[..., None]
    for part, (hue, sat, val) in ((_LIMB, subject.limb), (_TORSO, subject.torso)):
        where = view.parts == part
        image[where] = (_hsv(hue + drift, sat, val * (1 - subject.darkening * age)) * mottling)[where]
    where = labels == _STAIN
    hue, sat, val = subject.stain
    image[where] = (_hsv(hue + 0.5 * drift, sat, val * (1 - 0.3 * age)) * mottling)[where]
    where = labels == _MOULD
    fuzz = (0.45 + 0.55 * view.speckle)[where][:, None]  # fuzzy: the surface shows through the mould
    image[where] = image[where] * (1 - fuzz) + _hsv(*subject.mould) * fuzz
    hue, sat, val = subject.tag
    image[labels == _TAG] = _hsv(hue, sat, val * (1 - 0.15 * age))  # plastic only gets a little dirty
    return image, labels


def _photograph(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [size, size, 3] and mask [size, size] seen by a camera that moved a little:
    one affine warp (rotation <= 15 deg, scale 0.85-1.15, shift <= 10 %) of the canvas,
    bilinear for the image and nearest for the labels; then lighting, blur and noise."""
    middle = (image.shape[0] - 1) / 2
    matrix = cv2.getRotationMatrix2D((middle, middle), rng.uniform(-15, 15), rng.uniform(0.85, 1.15))
    matrix[:, 2] += (size - 1) / 2 - middle + rng.uniform(-0.1, 0.1, 2) * size
    # the canvas is twice the photo, so the border mode is never reached; reflect is a safe guard
    photo = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(labels, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    photo *= rng.uniform(0.9, 1.1) * (1 + 0.08 * _ramp(rng, size))[..., None]
    return _finish(photo, rng), mask


class _Shot(NamedTuple):
    view: int
    day: int
    photo: int  # index within the day
    minute: int  # minutes after midnight


def _schedule(rng: np.random.Generator, count: int, n_views: int) -> list[_Shot]:
    """``count`` photos of one subject: 1-3 photos a day (distinct views when it has enough)
    on most days, later photos later in the day. Random draws do not depend on ``count``
    except at the cut, so a shorter schedule is a prefix of a longer one."""
    shots: list[_Shot] = []
    day = 0
    while len(shots) < count:
        order = rng.permutation(n_views)
        minute = int(rng.integers(8 * 60, 11 * 60))
        for photo in range(min(int(rng.integers(1, 4)), count - len(shots))):
            shots.append(_Shot(int(order[photo % n_views]), day, photo, minute))
            minute += int(rng.integers(15, 121))
        day += 1 if rng.random() < 0.75 else 2
    return shots


def _evolving_samples(n: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict]]:
    """(id, image, mask, columns) for the n photos, subject by subject in time order."""
    n_subjects = max(2, n // 50)
    canvas = 2 * size
    min_px = _min_pixels(size)
    for s in range(n_subjects):
        count = n // n_subjects + (s < n % n_subjects)
        if count == 0:
            continue
        subject = _make_subject(np.random.default_rng([seed, 1, s]), s)
        # the first view always shows the subject's tag, the others sometimes
        views = [_make_view(np.random.default_rng([seed, 2, s, v]), canvas, size, 1.0 if v == 0 else 0.4)
                 for v in range(subject.n_views)]
        for shot in _schedule(np.random.default_rng([seed, 3, s]), count, subject.n_views):
            canvas_image, canvas_labels = _render_day(subject, views[shot.view], shot.day, min_px)
            rng = np.random.default_rng([seed, 4, s, shot.day, shot.photo])
            image, mask = _photograph(canvas_image, canvas_labels, rng, size)
            when = _START + timedelta(days=shot.day, minutes=shot.minute)
            columns = {"subject": f"s{s:02d}", "time": when.isoformat(timespec="seconds"),
                       "view": f"v{shot.view}"}
            yield f"s{s:02d}_v{shot.view}_d{shot.day:03d}_p{shot.photo}", image, mask, columns


# ---------------------------------------------------------------- video clips

VIDEO_CLASSES = SCENE_CLASSES  # the scene shapes and textures, now moving
VIDEO_FPS = 25
_ASPECT = 9 / 16  # frame height / width


class _Mover(NamedTuple):
    """One object of a clip: a sprite drawn once in its own frame, then moved, turned,
    scaled and bent frame by frame, so that its texture moves with it."""

    cls: int  # class id
    sprite: np.ndarray  # float32 [S, S, 3]
    shape: np.ndarray  # uint8 [S, S]: 1 on the object
    start: np.ndarray  # float [2] (x, y): centre at frame 0, frame pixels
    velocity: np.ndarray  # float [2]: px per frame; the centre bounces inside [low, high]
    low: np.ndarray
    high: np.ndarray
    degrees: float  # at frame 0
    spin: float  # degrees per frame
    pulse: tuple[float, float, float]  # scale 1 + a sin(2 pi t / period + phase): (a, period, phase)
    bend: tuple[float, float, float]  # sinusoidal bend (amplitude px, wavelength px, phase speed rad per frame)


def _bounce(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``x`` folded back into [low, high] as a ball bouncing between two walls (triangle wave)."""
    span = np.maximum(high - low, 1e-6)
    u = np.mod(x - low, 2 * span)
    return low + np.where(u <= span, u, 2 * span - u)


def _make_mover(rng: np.random.Generator, width: int, height: int) -> _Mover:
    cls = int(rng.integers(len(_SCENE_CLASSES)))
    spec = _SCENE_CLASSES[cls]
    radius = height * rng.uniform(0.18, 0.3)
    side = int(math.ceil(2.6 * radius)) | 1
    middle = np.full(2, (side - 1) / 2)
    shape = _shape_mask(spec.name, rng, side, middle, radius, 0.0)
    hue = rng.uniform(*spec.hues)
    sat, val = rng.uniform(0.45, 0.95), rng.uniform(0.5, 0.95)
    light = _hsv(hue, sat, val)
    dark = _hsv(hue + rng.uniform(-20, 20), sat * rng.uniform(0.4, 0.8), val * rng.uniform(0.35, 0.65))
    sprite = _mix(np.broadcast_to(light, (side, side, 3)), dark, _texture(spec.texture, rng, side, middle, radius))
    margin = 0.7 * radius  # the centre stays this far inside the frame: most of the object is seen
    low, high = np.array([margin, margin]), np.array([width - 1 - margin, height - 1 - margin])
    speed, heading = width * rng.uniform(0.005, 0.025), rng.uniform(0, 2 * math.pi)
    return _Mover(
        cls=cls + 1, sprite=np.ascontiguousarray(sprite, dtype=np.float32), shape=shape.astype(np.uint8),
        start=rng.uniform(low, high), velocity=speed * np.array([math.cos(heading), math.sin(heading)]),
        low=low, high=high, degrees=rng.uniform(0, 360), spin=rng.uniform(-3, 3),
        pulse=(rng.uniform(0.03, 0.12), rng.uniform(12, 40), rng.uniform(0, 2 * math.pi)),
        bend=(radius * rng.uniform(0.03, 0.08), radius * rng.uniform(1.2, 2.0), rng.uniform(0.1, 0.4)))


def _mover_maps(mover: _Mover, t: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps [H, W] (x, y): where each frame pixel reads the mover's sprite at frame ``t``
    (inverse of: bend, scale, rotate, move)."""
    centre = _bounce(mover.start + mover.velocity * t, mover.low, mover.high)
    theta = math.radians(mover.degrees + mover.spin * t)
    amplitude, period, phase = mover.pulse
    scale = 1 + amplitude * math.sin(2 * math.pi * t / period + phase)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    middle = (mover.sprite.shape[0] - 1) / 2
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / scale + middle
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / scale + middle
    bend, wavelength, speed = mover.bend
    u, v = (u + bend * np.sin(2 * math.pi * v / wavelength + speed * t),
            v + bend * np.sin(2 * math.pi * u / wavelength + speed * t + 1.0))
    return u.astype(np.float32), v.astype(np.float32)


def _video_clip(clip: int, frames: int, width: int, height: int,
                seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(frame index, uint8 image [H, W, 3], uint8 class-id mask [H, W]) of one clip.

    A panning, slowly zooming camera over a textured background twice the frame; 1-3
    objects that translate (bouncing inside the frame), turn, pulse in size and bend, drawn
    in a fixed depth order so that they occlude each other where their paths cross."""
    rng = np.random.default_rng([seed, 5, clip])
    side = 2 * max(width, height)
    world = _scene_background(rng, side)
    # clutter of irregular patches (thresholded noise: no class shape) and a fine grain, so
    # the background has edges and texture to follow, as real scenes do
    for cells in (int(rng.integers(6, 12)), int(rng.integers(14, 24))):
        patches = _smooth_noise(rng, side, cells) > rng.uniform(0.55, 0.7)
        tint = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.85))
        world[patches] = 0.4 * world[patches] + 0.6 * tint
    world *= (0.75 + 0.5 * _fine_noise(rng, side, 1.0))[..., None]
    movers = [_make_mover(rng, width, height) for _ in range(int(rng.integers(1, 4)))]
    # camera: the frame centre moves through the world at a constant velocity, bouncing
    # inside the canvas, while the zoom breathes by a few percent
    reach = np.array([side - width, side - height], dtype=np.float64) / 2
    pan_speed, pan_heading = width * rng.uniform(0.003, 0.015), rng.uniform(0, 2 * math.pi)
    pan = pan_speed * np.array([math.cos(pan_heading), math.sin(pan_heading)])
    origin = np.array([side / 2, side / 2]) + rng.uniform(-0.5, 0.5, 2) * reach
    zoom = (rng.uniform(0.0, 0.05), rng.uniform(30, 80), rng.uniform(0, 2 * math.pi))
    flicker = (rng.uniform(0.0, 0.04), rng.uniform(10, 30))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(frames):
        centre = _bounce(origin + pan * t, np.array([side / 2, side / 2]) - reach * 0.9,
                         np.array([side / 2, side / 2]) + reach * 0.9)
        factor = 1 + zoom[0] * math.sin(2 * math.pi * t / zoom[1] + zoom[2])
        map_x = ((xs - (width - 1) / 2) / factor + centre[0]).astype(np.float32)
        map_y = ((ys - (height - 1) / 2) / factor + centre[1]).astype(np.float32)
        image = cv2.remap(world, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((height, width), dtype=np.uint8)
        for mover in movers:  # back to front
            u, v = _mover_maps(mover, t, width, height)
            on = cv2.remap(mover.shape, u, v, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0).astype(bool)
            colour = cv2.remap(mover.sprite, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            image[on] = colour[on]
            mask[on] = mover.cls
        image *= 1 + flicker[0] * math.sin(2 * math.pi * t / flicker[1])
        yield t, _finish(image, np.random.default_rng([seed, 6, clip, t])), mask


def _video_size(size: int) -> tuple[int, int]:
    """(width, height) of a frame whose longer side is ``size``, 16:9."""
    return size, max(MIN_SIZE // 2, round(size * _ASPECT))


# ---------------------------------------------------------------- output

def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _DatasetWriter:
    """Writes one dataset folder: classes.json at once, samples as added, index.csv last."""

    def __init__(self, out: str | Path, classes: tuple[str, ...], extra_columns: tuple[str, ...] = ()):
        self.root = Path(out)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "masks").mkdir(parents=True, exist_ok=True)
        # an index from an earlier run would describe files this run is overwriting
        (self.root / "index.csv").unlink(missing_ok=True)
        self.classes = classes
        self.columns = ("id", "image", "labels", "mask", "subject", "time") + extra_columns
        self.rows: list[dict] = []
        palette = voc_palette(256)
        self.png_palette = palette.flatten().tolist()
        text = json.dumps({"classes": list(classes), "palette": palette[:len(classes)].tolist()})
        write_atomic(self.root / "classes.json", (text + "\n").encode())

    def add(self, sample_id: str, image: np.ndarray, mask: np.ndarray, **columns: str) -> None:
        """Write image (uint8 [H, W, 3]) and mask (uint8 [H, W] class ids) and record the row."""
        image_rel, mask_rel = f"images/{sample_id}.png", f"masks/{sample_id}.png"
        write_atomic(self.root / image_rel, _png(Image.fromarray(image)))
        mask_image = Image.fromarray(mask)  # mode L; putpalette turns it into P
        mask_image.putpalette(self.png_palette)
        write_atomic(self.root / mask_rel, _png(mask_image))
        present = [int(c) for c in np.unique(mask) if c != 0]
        labels = ";".join(self.classes[c] for c in present)
        self.rows.append({"id": sample_id, "image": image_rel, "labels": labels, "mask": mask_rel,
                          "subject": "", "time": "", **columns})

    def finish(self) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        path = self.root / "index.csv"
        write_atomic(path, buffer.getvalue().encode())
        return path


def _track(items: Iterable, total: int, description: str, progress: bool) -> Iterable:
    """``items``, behind a rich progress bar when asked for and rich is installed."""
    if not progress:
        return items
    try:
        from rich.progress import track
    except ImportError:
        return items
    return track(items, total=total, description=description)


def _check(n: int, size: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")


# ---------------------------------------------------------------- public

def make_scenes(out: str | Path, n: int = 200, size: int = 128, seed: int = 0,
                progress: bool = True) -> Path:
    """Write ``n`` scenes of 1-3 textured shapes (classes ``SCENE_CLASSES``) of ``size`` px
    into ``out``; returns the path of index.csv. Scene i depends only on (seed, i), so a
    smaller n gives a prefix of a larger one, byte for byte."""
    _check(n, size)
    writer = _DatasetWriter(out, SCENE_CLASSES)
    for i in _track(range(n), n, "scenes", progress):
        image, mask = _render_scene(np.random.default_rng([seed, i]), size)
        writer.add(f"scene_{i:05d}", image, mask)
    return writer.finish()


def make_evolving(out: str | Path, n: int = 300, size: int = 128, seed: int = 0,
                  progress: bool = True) -> Path:
    """Write ``n`` photos of max(2, n // 50) subjects (classes ``EVOLVING_CLASSES``), each
    seen from 2-3 views on many days while it changes, into ``out``; returns the path of
    index.csv, which adds ``subject``, ``time`` (ISO 8601, increasing within a subject) and
    ``view``. A subject's look depends only on (seed, subject), but how many subjects there
    are and how many photos each gets depends on n."""
    _check(n, size)
    writer = _DatasetWriter(out, EVOLVING_CLASSES, extra_columns=("view",))
    for sample_id, image, mask, columns in _track(_evolving_samples(n, size, seed), n, "evolving", progress):
        writer.add(sample_id, image, mask, **columns)
    return writer.finish()


def make_video(out: str | Path, clips: int = 8, frames: int = 32, size: int = 160, seed: int = 0,
               progress: bool = True) -> Path:
    """Write ``clips`` video clips of ``frames`` consecutive frames each (16:9, longer side
    ``size``; classes ``VIDEO_CLASSES``) into ``out``; returns the path of index.csv, which
    adds ``subject`` (the clip id), ``time`` (ISO 8601 with milliseconds, ``VIDEO_FPS``
    frames a second; clips an hour apart) and ``frame`` (index within the clip).

    Real motion with exact masks: a panning, zooming camera over a textured background and
    1-3 textured objects that translate, turn, pulse and bend and occlude each other. Clip
    c depends only on (seed, c) and its frame t only on (seed, c, t): fewer clips or frames
    give a prefix of more, byte for byte."""
    if clips < 0 or frames < 0:
        raise ValueError(f"clips and frames must be >= 0, got {clips} and {frames}")
    _check(0, size)
    width, height = _video_size(size)
    writer = _DatasetWriter(out, VIDEO_CLASSES, extra_columns=("frame",))

    def samples():
        for clip in range(clips):
            for t, image, mask in _video_clip(clip, frames, width, height, seed):
                when = _START + timedelta(hours=clip, seconds=t / VIDEO_FPS)
                yield f"clip{clip:03d}_f{t:04d}", image, mask, {
                    "subject": f"clip{clip:03d}", "time": when.isoformat(timespec="milliseconds"), "frame": str(t)}

    for sample_id, image, mask, columns in _track(samples(), clips * frames, "video", progress):
        writer.add(sample_id, image, mask, **columns)
    return writer.finish()
