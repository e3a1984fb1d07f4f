"""Sequencing after SChISM (saramsv/SChISM ``sequence.py``), as pure functions on arrays.

Per subject: observation days sorted; a window of ``window`` consecutive observed days
slides along them; every day pair (d1 < d2) inside a window not compared before is
compared in window order ((0,1), (0,2), (1,2), (1,3), (2,3), ...). For each image of d1
the cosine similarities to all images of d2 are computed; the running mean of the best
similarities (per subject) is updated with this best; every d2 image with similarity >=
max(ratio * best, running mean) is linked to the d1 image. Sequences are the transitive
closure of the links; images left alone stay unsequenced. Images of one day are never
compared with each other.

Two defects of the public code are fixed: a subject observed on fewer than ``window``
days got no window at all (here the window shrinks to the number of days), and a stray
extra comparison of the last day pair in reverse after the loop is dropped.
"""
from __future__ import annotations

import math
from datetime import datetime

import numpy as np


def parse_time(value) -> float | None:
    """Days as a float: ISO 8601 date/datetime (ordinal day + fraction of the day, as
    written, time zone ignored) or a plain number of days. None when it is neither."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) else None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    seconds = when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
    return when.toordinal() + seconds / 86400.0


def unit_rows(features: np.ndarray) -> np.ndarray:
    """float32 [N, D] rows scaled to unit L2 norm (zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def pca_project(features: np.ndarray, dims: int) -> np.ndarray:
    """float32 [N, D] -> [N, min(dims, N, D)]: centred and projected on the leading
    principal axes (SChISM reduces ResNet-50 features to 256). ``dims`` 0 = unchanged.
    The axes come from the D x D covariance, so memory does not grow with N beyond the input."""
    features = np.asarray(features, dtype=np.float32)
    if dims <= 0:
        return features
    n, d = features.shape
    dims = min(dims, n, d)
    mean = features.mean(axis=0, dtype=np.float64)
    centred = features - mean.astype(np.float32)
    covariance = centred.T.astype(np.float64) @ centred.astype(np.float64)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :dims].astype(np.float32)
    return centred @ axes


def window_pairs(n_days: int, window: int) -> list[tuple[int, int]]:
    """Day-index pairs (d1 < d2) in SChISM's order: each window of ``min(window, n_days)``
    consecutive days, its not-yet-seen pairs in order."""
    size = min(window, n_days)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for start in range(n_days - size + 1):
        for a in range(start, start + size):
            for b in range(a + 1, start + size):
                if (a, b) not in seen:
                    seen.add((a, b))
                    pairs.append((a, b))
    return pairs


def subject_links(features: np.ndarray, days: np.ndarray, window: int = 3, ratio: float = 0.99,
                  running_mean: bool = True) -> list[tuple[int, int]]:
    """Links between the images of ONE subject.

    features float [N, D] (any norm; cosine similarity is used), days int [N] observation
    day of each image, rows already in time order within a day. Returns (i, j) index
    pairs, i on the earlier day. ``running_mean=False`` drops the running-mean floor
    (threshold = ratio * best)."""
    unit = unit_rows(features)
    days = np.asarray(days)
    observed = np.unique(days)
    members = [np.flatnonzero(days == d) for d in observed]
    links: list[tuple[int, int]] = []
    mean, count = 0.0, 0
    for a, b in window_pairs(len(observed), window):
        targets = members[b]
        similarities = unit[members[a]] @ unit[targets].T  # [n_a, n_b]
        for row, i in zip(similarities, members[a]):
            best = float(row.max())
            count += 1
            mean += (best - mean) / count
            threshold = max(ratio * best, mean) if running_mean else ratio * best
            links.extend((int(i), int(j)) for j in targets[row >= threshold])
    return links


def connected_groups(n: int, links) -> list[list[int]]:
    """Transitive closure of ``links`` over items 0..n-1 (union-find): groups of two or
    more items, each sorted, ordered by their first item. Items never linked are left out."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in links:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def split_at_gaps(times: np.ndarray, factor: float) -> list[np.ndarray]:
    """Indices of ``times`` (float [N], sorted) in runs: a new run starts where the step
    from the previous time exceeds ``factor`` x the median step (a pause in a recording,
    e.g. two shots of one clip); ``factor`` 0 = one run. Returns int arrays, in order."""
    times = np.asarray(times, dtype=np.float64)
    if factor <= 0 or len(times) < 3:
        return [np.arange(len(times))]
    steps = np.diff(times)
    typical = float(np.median(steps))
    cuts = np.flatnonzero(steps > factor * typical) + 1 if typical > 0 else np.array([], dtype=np.int64)
    return [run for run in np.split(np.arange(len(times)), cuts) if len(run)]


def medoid(features: np.ndarray) -> int:
    """Index of the row with the highest summed cosine similarity to the others
    (features float [N, D], N >= 1); ties (to 1e-6, float32 noise) go to the earlier row."""
    unit = unit_rows(features).astype(np.float64)
    return int(np.argmax(np.round((unit @ unit.T).sum(axis=1), 6)))
