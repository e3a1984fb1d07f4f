"""pydensecrf's dense CRF in torch: the permutohedral lattice of Adams, Baek & Davis (2010)
built with torch ops, float32, on any device, many images per call sharing one lattice.

The arithmetic follows pydensecrf's C++ step by step (``densecrf/src/permutohedral.cpp`` of
github.com/lucasb-eyer/pydensecrf): features
(x, y[, R, G, B]) scaled by 1/sxy and 1/srgb, elevation, rounding to the nearest
0-coloured point, ranks with ties to the lower index, barycentric weights, splat /
blur / slice with alpha = 1 / (1 + 2^-d), symmetric normalisation with the pixel's own
term, Potts compatibility, exp-and-normalise with the maximum subtracted. Images of a
batch are told apart by an image index packed into the lattice keys above the
coordinates, so one sort builds every image's lattice and they never mix.

No matrix products are used (only element-wise ops, gathers and scatters), so TF32
settings cannot change the results. On GPU the scatter adds in an arbitrary order:
results match CPU to float rounding, not bit for bit.

Shapes: images uint8 [H, W, 3]; unaries float32 [n, H * W] (pydensecrf's layout);
inside, pixels of all images are stacked: values [P, L] with P the batch's pixels.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from plabel_kit.toolkit.crf import ITERATIONS, Kernels, check_image

#: float32 elements of one splat step's temporary (pixels x vertices x labels): bounds memory
SPLAT_CHUNK = 1 << 26


class Lattice(NamedTuple):
    """One kernel's lattice over a batch: P pixels, M lattice points, feature dim d."""

    vertices: "torch.Tensor"  # int64 [P, d + 1]: the lattice point of each enclosing vertex
    weights: "torch.Tensor"  # float32 [P, d + 1]: barycentric weights
    neighbours: "torch.Tensor"  # int64 [d + 1, 2, M + 1]: blur neighbours per axis; M = none
    size: int  # M
    alpha: float  # pydensecrf's slice scale 1 / (1 + 2^-d)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pixel_features(images: Sequence[np.ndarray], sxy: float, srgb: float | None, device) -> "torch.Tensor":
    """pydensecrf's kernel features, images stacked: (x/sxy, y/sxy) for the Gaussian,
    (x/sxy, y/sxy, R/srgb, G/srgb, B/srgb) for the bilateral (srgb given); raw 0..255
    colours, float32 divisions as in C++. Returns float32 [P, 2 or 5]."""
    import torch

    planes = []
    for image in images:
        height, width = image.shape[:2]
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
        columns = [xs.reshape(-1) / np.float32(sxy), ys.reshape(-1) / np.float32(sxy)]
        if srgb is not None:
            rgb = torch.from_numpy(image.copy()).to(device)  # a copy: decoded images are often read-only
            rgb = rgb.reshape(-1, 3).float()
            columns += [rgb[:, c] / np.float32(srgb) for c in range(3)]
        planes.append(torch.stack(columns, dim=1))
    return torch.cat(planes)


def build_lattice(features: "torch.Tensor", image_index: "torch.Tensor") -> Lattice:
    """The permutohedral lattice of features float32 [P, d] whose pixels belong to images
    ``image_index`` int64 [P]; each image's points are its own (the index is part of the key)."""
    import torch

    device = features.device
    pixels, d = features.shape
    # 1. scale and elevate, element-wise in C++'s order (scale factors in double, stored as float)
    inv_std = float(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
    scale = torch.tensor([np.float32(1.0 / np.sqrt((i + 1) * (i + 2)) * inv_std) for i in range(d)],
                         dtype=torch.float32, device=device)
    scaled = features * scale
    elevated = torch.empty(pixels, d + 1, dtype=torch.float32, device=device)
    running = torch.zeros(pixels, dtype=torch.float32, device=device)
    for j in range(d, 0, -1):
        elevated[:, j] = running - j * scaled[:, j - 1]
        running = running + scaled[:, j - 1]
    elevated[:, 0] = running
    # 2. nearest 0-coloured point: the nearer multiple of d+1, ties down (C++ compares distances)
    down = np.float32(1.0 / (d + 1))
    ratio = elevated * down
    upper, lower = torch.ceil(ratio) * (d + 1), torch.floor(ratio) * (d + 1)
    rem0 = torch.where(upper - elevated < elevated - lower, upper, lower).to(torch.int64)
    total = (rem0 // (d + 1)).sum(dim=1, keepdim=True)
    # 3. rank in descending order of el - rem0, ties to the lower index; back onto the plane
    residual = elevated - rem0.to(torch.float32)
    before = torch.ones(d + 1, d + 1, dtype=torch.bool, device=device).tril(-1)  # [i, j]: j < i
    greater = residual[:, None, :] > residual[:, :, None]
    equal_before = (residual[:, None, :] == residual[:, :, None]) & before
    rank = (greater | equal_before).sum(dim=2) + total
    low, high = rank < 0, rank > d
    rank = rank + (d + 1) * low.long() - (d + 1) * high.long()
    rem0 = rem0 + (d + 1) * low.long() - (d + 1) * high.long()
    # 4. barycentric weights: each slot gets one + and one - term, so their order is immaterial
    v = (elevated - rem0.to(torch.float32)) * down
    bary = torch.zeros(pixels, d + 2, dtype=torch.float32, device=device)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    # C++: b[0] += 1.0 + b[d+1], the sum taken in double
    bary[:, 0] = (bary[:, 0].double() + (1.0 + bary[:, d + 1].double())).float()
    weights = bary[:, :d + 1].contiguous()
    # 5. the d+1 vertices' keys (first d coordinates), packed linearly: coordinate i of a
    # key, shifted to 0..radix_i-1 with a margin of d for the blur neighbours, then the image
    low_key = rem0[:, :d].min(dim=0).values - (d + 1) - d
    span = rem0[:, :d].max(dim=0).values + (d + 1) + d - low_key + 1
    radix = [int(s) for s in span.tolist()]
    multipliers, product = [], 1
    for r in radix:
        multipliers.append(product)
        product *= r
    images = int(image_index.max()) + 1 if pixels else 1
    if product * images >= 1 << 62:
        raise ValueError(f"lattice keys need {(product * images).bit_length()} bits, more than 62: "
                         f"pass fewer images per call or use larger sxy / srgb")
    mult = torch.tensor(multipliers, dtype=torch.int64, device=device)
    base = ((rem0[:, :d] - low_key) * mult).sum(dim=1) + image_index * product
    step = int(mult.sum())
    vertex_keys = torch.stack(
        [base + r * step - (d + 1) * ((rank[:, :d] > d - r).long() * mult).sum(dim=1) for r in range(d + 1)], dim=1)
    # 6. one sort gives the lattice points of every image
    keys, vertices = torch.unique(vertex_keys.reshape(-1), sorted=True, return_inverse=True)
    size = keys.numel()
    # 7. blur neighbours: key - 1 on every coordinate except + d on axis j (j = d: -1 only)
    neighbours = torch.full((d + 1, 2, size + 1), size, dtype=torch.int64, device=device)
    for j in range(d + 1):
        offset = -step + ((d + 1) * multipliers[j] if j < d else 0)
        for side, shift in enumerate((offset, -offset)):
            wanted = keys + shift
            at = torch.searchsorted(keys, wanted).clamp_(max=size - 1)
            neighbours[j, side, :size] = torch.where(keys[at] == wanted, at, size)
    return Lattice(vertices.reshape(pixels, d + 1), weights, neighbours, size, float(np.float32(1.0 / (1 + 2.0 ** -d))))


def lattice_filter(lattice: Lattice, values: "torch.Tensor") -> "torch.Tensor":
    """Splat, blur axis by axis, slice: values float32 [P, L] -> float32 [P, L]."""
    import torch

    pixels, labels = values.shape
    corners = lattice.weights.shape[1]
    grid = torch.zeros(lattice.size + 1, labels, dtype=values.dtype, device=values.device)
    # pixel-major, as C++ adds them (chunks keep the temporary bounded and the order)
    chunk = max(1, SPLAT_CHUNK // (corners * labels))
    for at in range(0, pixels, chunk):
        part = lattice.weights[at:at + chunk, :, None] * values[at:at + chunk, None, :]
        grid.index_add_(0, lattice.vertices[at:at + chunk].reshape(-1), part.reshape(-1, labels))
    for axis in range(corners):  # not in place: every point reads its neighbours' old values
        pair = grid[lattice.neighbours[axis, 0]]
        pair += grid[lattice.neighbours[axis, 1]]
        grid = torch.add(grid, pair, alpha=0.5)
    out = torch.zeros_like(values)
    for r in range(corners):
        out.addcmul_(lattice.weights[:, r, None], grid[lattice.vertices[:, r]])
    return out.mul_(lattice.alpha)


def exp_normalise(energy: "torch.Tensor") -> "torch.Tensor":
    """pydensecrf's expAndNormalize per pixel: float32 [P, L] -> probabilities [P, L]."""
    import torch

    shifted = torch.exp(energy - energy.max(dim=1, keepdim=True).values)
    return shifted / shifted.sum(dim=1, keepdim=True)


def mean_field(unary: "torch.Tensor", kernels: Sequence[tuple[Lattice, "torch.Tensor", float]],
               iterations: int) -> "torch.Tensor":
    """pydensecrf's inference: unary float32 [P, L] (+inf: no such label), kernels as
    (lattice, symmetric normaliser float32 [P, 1], Potts weight); returns Q [P, L]."""
    q = exp_normalise(-unary)
    for _ in range(iterations):
        energy = -unary
        for lattice, norm, weight in kernels:
            energy = energy + weight * (norm * lattice_filter(lattice, norm * q))
        q = exp_normalise(energy)
    return q


def symmetric_norm(lattice: Lattice) -> "torch.Tensor":
    """1 / sqrt(K·1 + 1e-20), in double as C++ computes it: float32 [P, 1]."""
    import torch

    ones = torch.ones(lattice.weights.shape[0], 1, dtype=torch.float32, device=lattice.weights.device)
    return (1.0 / torch.sqrt(lattice_filter(lattice, ones).double() + 1e-20)).float()


def dense_crf_batch(images: Sequence[np.ndarray], unaries: Sequence[np.ndarray], kernels: Kernels,
                    iterations: int = ITERATIONS, device=None) -> list[np.ndarray]:
    """``recipes.dense_crf`` for many images in one call: images uint8 [H, W, 3], unaries
    float32 [n, H * W] (sizes and label counts may differ); returns marginals float32
    [n, H, W] per image. device: a torch device (default: CUDA when available)."""
    import torch

    if len(images) != len(unaries):
        raise ValueError(f"{len(images)} images but {len(unaries)} unaries")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    sizes = []
    for image, unary in zip(images, unaries):
        height, width = check_image(image)
        if (not isinstance(unary, np.ndarray) or unary.dtype != np.float32 or unary.ndim != 2
                or unary.shape[1] != height * width or unary.shape[0] < 1):
            raise ValueError(f"unary must be float32 [n, {height * width}] for a {height}x{width} image")
        sizes.append((unary.shape[0], height, width))
    if not images:
        return []
    device = torch.device(device or default_device())
    labels = max(n for n, _, _ in sizes)
    # labels an image lacks get an infinite unary: probability 0, no effect on the others
    unary = torch.full((sum(h * w for _, h, w in sizes), labels), float("inf"), device=device)
    at = 0
    for (n, height, width), plane in zip(sizes, unaries):
        unary[at:at + height * width, :n] = torch.from_numpy(plane.T.copy()).to(device)
        at += height * width
    image_index = torch.cat([torch.full((h * w,), k, dtype=torch.int64, device=device)
                             for k, (_, h, w) in enumerate(sizes)])
    terms = []
    for sxy, srgb, weight in ((kernels.gaussian_sxy, None, kernels.gaussian_compat),
                              (kernels.bilateral_sxy, kernels.bilateral_srgb, kernels.bilateral_compat)):
        lattice = build_lattice(pixel_features(images, sxy, srgb, device), image_index)
        terms.append((lattice, symmetric_norm(lattice), float(np.float32(weight))))
    q = mean_field(unary, terms, iterations).cpu().numpy()
    out, at = [], 0
    for n, height, width in sizes:
        out.append(np.ascontiguousarray(q[at:at + height * width, :n].T).reshape(n, height, width))
        at += height * width
    return out
