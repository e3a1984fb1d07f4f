"""The random walk with sparse operators (pure functions; torch sparse on CPU or GPU).

IRN / PSA build the dense transition T = A^beta / column sums ((h w)^2 entries, several GB
at stride 4) and square it log_steps times. A has at most 2 * 34 + 1 non-zeros per row
(radius 5), so here T is a sparse matrix and ``x T^(2^log_steps)`` is computed as
2^log_steps sparse products with the score planes: the same numbers, a few MB.

Shapes: scores float [K, h, w] on the walk grid; affinity float [D, h, w] as in
:mod:`plabel_kit.toolkit.affinity`; full-resolution planes float [K, H, W].
"""
from __future__ import annotations

import warnings

import numpy as np

from .affinity import neighbour_offsets


def walk_operator(affinity: np.ndarray, radius: int, beta: float):
    """The step ``x <- x T`` as a matrix acting on columns: M = D^-1 W, where W is the
    symmetric affinity A^beta with ones on the diagonal and D its row sums (so M^T is IRN's
    column-normalised T). affinity float [D, h, w] -> scipy CSR [h w, h w] float64."""
    import scipy.sparse as sp

    offsets = neighbour_offsets(radius)
    if affinity.ndim != 3 or affinity.shape[0] != len(offsets):
        raise ValueError(f"affinity must be [{len(offsets)}, h, w] for radius {radius}, got "
                         f"{list(affinity.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    height, width = affinity.shape[1:]
    index = np.arange(height * width).reshape(height, width)
    sources, targets, weights = [index.ravel()], [index.ravel()], [np.ones(height * width)]
    for d, (dy, dx) in enumerate(offsets):
        # cells whose partner (y + dy, x + dx) lies inside the grid
        rows, cols = slice(0, height - dy), slice(max(0, -dx), width - max(0, dx))
        src = index[rows, cols].ravel()
        dst = (index[rows, cols] + dy * width + dx).ravel()
        weight = np.power(np.clip(affinity[d, rows, cols], 0.0, None), beta).ravel()
        sources += [src, dst]
        targets += [dst, src]
        weights += [weight, weight]
    matrix = sp.csr_matrix((np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))),
                           shape=(height * width, height * width))
    return sp.diags(1.0 / np.asarray(matrix.sum(axis=1)).ravel()) @ matrix


def propagate(scores: np.ndarray, operator, steps: int, device: str = "cpu") -> np.ndarray:
    """``scores`` after ``steps`` walk steps (IRN: x T^steps): float [K, h, w] -> float64
    [K, h, w]. torch sparse CSR on ``device``: float64 on CPU, float32 on a GPU."""
    import torch

    planes, height, width = scores.shape
    if operator.shape != (height * width, height * width):
        raise ValueError(f"operator is {operator.shape} but the scores are {height}x{width}")
    if planes == 0:
        return np.zeros(scores.shape)
    dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        matrix = torch.sparse_csr_tensor(torch.from_numpy(operator.indptr.astype(np.int64)),
                                         torch.from_numpy(operator.indices.astype(np.int64)),
                                         torch.from_numpy(operator.data), size=operator.shape,
                                         dtype=dtype, device=device)
    state = torch.from_numpy(np.ascontiguousarray(scores.reshape(planes, -1).T)).to(device, dtype)
    threads = torch.get_num_threads()
    if matrix.device.type == "cpu":
        # products this small scale badly over threads: on 2 busy cores a 94x125 grid took
        # 0.2 s on one thread and 0.7-5.8 s on two
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(steps):
                state = matrix @ state
    finally:
        torch.set_num_threads(threads)
    return state.T.cpu().numpy().astype(np.float64).reshape(planes, height, width)


def grid_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(h, w) of the walk grid: ceil(H / stride), ceil(W / stride) (IRN's strided size)."""
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def pool_to_grid(planes: np.ndarray, stride: int) -> np.ndarray:
    """Mean over each stride x stride cell of the image: float [K, H, W] -> float64 [K, h, w].
    Border cells average the pixels they hold (PSA pads with zeros, which darkens them)."""
    planes = np.asarray(planes, dtype=np.float64)
    count, height, width = planes.shape
    h, w = grid_size((height, width), stride)
    pad = ((0, 0), (0, h * stride - height), (0, w * stride - width))
    sums = np.pad(planes, pad).reshape(count, h, stride, w, stride).sum(axis=(2, 4))
    area = np.pad(np.ones((height, width)), pad[1:]).reshape(h, stride, w, stride).sum(axis=(1, 3))
    return sums / area


def max_pool_to_grid(plane: np.ndarray, stride: int) -> np.ndarray:
    """Largest value in each stride x stride cell, so thin boundaries survive:
    float [H, W] -> float64 [h, w]."""
    height, width = plane.shape
    h, w = grid_size((height, width), stride)
    padded = np.pad(np.asarray(plane, dtype=np.float64), ((0, h * stride - height), (0, w * stride - width)),
                    constant_values=-np.inf)
    return padded.reshape(h, stride, w, stride).max(axis=(1, 3))


def upsample_from_grid(planes: np.ndarray, stride: int, size: tuple[int, int]) -> np.ndarray:
    """IRN's way back: bilinear x stride (align_corners=False), cropped to ``size`` (H, W).
    float [K, h, w] -> float32 [K, H, W]."""
    import torch
    import torch.nn.functional as F

    if planes.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    up = F.interpolate(tensor, scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return up[:, :size[0], :size[1]].numpy()


def walk_scores(planes: np.ndarray, keys: np.ndarray, affinity: np.ndarray, *, radius: int, beta: float,
                steps: int, stride: int, size: tuple[int, int], threshold: float,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """IRN's / PSA's walk of score planes, from the grid back to labels at image size: the
    walk operator of ``affinity`` (``radius``, ``beta``), ``steps`` walk steps, bilinear
    upsampling by ``stride`` cropped to ``size`` (H, W), then the labels.

    planes float [K, h, w] on the walk grid, keys int [K] (their class ids), affinity float
    [D, h, w] -> (labels uint8 [H, W], walked float64 [K, h, w]).

    With a background plane (a key 0: PSA) the label is the argmax. Without (IRN), the
    walked planes are divided by the global max of the upsampled ones (one max over classes
    and pixels, not per class) and thresholded as :func:`plabel_kit.arrays.scores_to_labels`
    does (background where no class exceeds ``threshold``); ``walked`` is returned divided."""
    from ..arrays import scores_to_labels

    keys = np.asarray(keys, np.int64)
    if affinity.shape[1:] != planes.shape[1:]:
        raise ValueError(f"affinity is on a {list(affinity.shape[1:])} grid but the scores on "
                         f"{list(planes.shape[1:])}")
    walked = propagate(planes, walk_operator(affinity, radius, beta), steps, device)
    up = upsample_from_grid(walked, stride, size)
    if (keys == 0).any():
        return keys.astype(np.uint8)[np.argmax(up, axis=0)], walked
    peak = float(up.max(initial=0.0))
    if peak > 0:
        walked, up = walked / peak, up / peak
    return scores_to_labels(up, keys, threshold), walked
