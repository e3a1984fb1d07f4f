"""Dense CRF per image on pydensecrf (Krähenbühl & Koltun 2011), the recipes WSSS code uses.

Pure array functions, no I/O; other plugins import them (the CAM source builds IRN's IR
labels with ``crf_labels``). Every function validates its inputs with a clear
``ValueError`` before pydensecrf sees them, since pydensecrf only says "wrong type".

Shapes: image uint8 [H, W, 3] RGB, C-contiguous; labels int [H, W]; probabilities and
marginals float32 [n, H, W]; unaries float32 [n, H * W] (negative log probabilities).

Typical use, IRN's ``crf_inference_label`` on a class-id label map::

    refined = crf_label_map(image, labels, keys)   # label recipe, 10 iterations

The recipes' spatial widths (``sxy``, pixels) were tuned on PASCAL VOC images, whose
longer side is 500 px. ``scale`` multiplies both kernels' widths: ``"auto"`` (the default
of every function here that takes it) = the image's longer side / 500, so that a kernel
covers the same share of any image (1 on VOC-size images: the published values); a number
sets the factor; 1 gives the published absolute widths at any size. Colour widths (srgb)
and weights (compat) do not depend on the image size and are never scaled.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: a labels value meaning "could be any label": uniform unary (pydensecrf's ``zero_unsure``)
UNSURE = 255


class Kernels(NamedTuple):
    """The two pairwise terms: a Gaussian on position (smoothness) and a bilateral on
    position and colour (appearance). sxy in pixels, srgb in 0..255 colour units."""

    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


#: the published recipes: softmax (jiwoon-ahn/psa), label (jiwoon-ahn/irn, Puzzle-CAM, lucasdavid/CSRM),
#: deeplab (DeepLab-v2, Chen et al. 2017)
RECIPES = {
    "softmax": Kernels(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13,
                       bilateral_compat=10),
    "label": Kernels(gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=5,
                     bilateral_compat=10),
    "deeplab": Kernels(gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
                       bilateral_compat=4),
}
ITERATIONS = 10
GT_PROB = 0.7
#: longer side (px) of the images the recipes were tuned on: PASCAL VOC 2012 (at most 500x500)
REFERENCE_SIDE = 500


def kernel_scale(scale, size: tuple[int, int]) -> float:
    """The factor for the spatial widths of an image of ``size`` (H, W): ``"auto"`` = its
    longer side / ``REFERENCE_SIDE``; a positive number is returned as it is."""
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"scale must be 'auto' or a positive number, got {scale!r}")
        return max(size[0], size[1]) / REFERENCE_SIDE
    if not scale > 0:
        raise ValueError(f"scale must be 'auto' or a positive number, got {scale!r}")
    return float(scale)


def scaled(kernels: Kernels, factor: float) -> Kernels:
    """``kernels`` with both spatial widths (gaussian_sxy, bilateral_sxy) times ``factor``."""
    if factor == 1:
        return kernels
    return kernels._replace(gaussian_sxy=kernels.gaussian_sxy * factor, bilateral_sxy=kernels.bilateral_sxy * factor)


def check_image(image: np.ndarray) -> tuple[int, int]:
    """(H, W) of a uint8 [H, W, 3] C-contiguous image; ValueError otherwise."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {_describe(image)}")
    if not image.flags.c_contiguous:
        raise ValueError("image must be C-contiguous (use np.ascontiguousarray; flipped or "
                         "strided views are not)")
    return image.shape[0], image.shape[1]


def label_unary(labels: np.ndarray, n_labels: int, gt_prob: float = GT_PROB) -> np.ndarray:
    """IRN's unary: each pixel's label has probability ``gt_prob``, the others share the
    rest; ``UNSURE`` pixels get a uniform unary. labels int [H, W] in 0..n_labels-1 or
    UNSURE; returns float32 [n_labels, H * W].

    Without UNSURE pixels this is ``unary_from_labels(labels, n, gt_prob, zero_unsure=False)``;
    with them it is pydensecrf's own ``zero_unsure`` rule on labels shifted by one."""
    from pydensecrf.utils import unary_from_labels

    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array [H, W], got {_describe(labels)}")
    if not 1 <= n_labels < UNSURE:
        raise ValueError(f"n_labels must be in 1..{UNSURE - 1}, got {n_labels}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    bad = (labels < 0) | ((labels >= n_labels) & (labels != UNSURE))
    if bad.any():
        raise ValueError(f"labels hold {int(labels[bad][0])}, outside 0..{n_labels - 1} and not "
                         f"{UNSURE} (unsure)")
    if n_labels == 1:
        return np.zeros((1, labels.size), np.float32)
    shifted = labels.astype(np.int64) + 1
    shifted[labels == UNSURE] = 0
    return unary_from_labels(shifted, n_labels, gt_prob=gt_prob, zero_unsure=True)


def softmax_unary(probs: np.ndarray) -> np.ndarray:
    """-log(clip(p, 1e-5, 1)) per plane, as pydensecrf's ``unary_from_softmax`` (PSA passes
    unnormalised CAM-like planes; they are not renormalised here either).
    probs float [n, H, W]; returns float32 [n, H * W]."""
    from pydensecrf.utils import unary_from_softmax

    if not isinstance(probs, np.ndarray) or probs.ndim != 3 or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probabilities must be a float array [n, H, W], got {_describe(probs)}")
    if probs.shape[0] < 1:
        raise ValueError("probabilities need at least one plane")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities hold NaN or infinity")
    return unary_from_softmax(probs)


def psa_background(foreground: np.ndarray, alpha: float) -> np.ndarray:
    """PSA's background plane (1 - max over classes)^alpha: float [K, H, W] -> float32
    [1, H, W]; all ones when K = 0. PSA uses alpha 4 (low) and 32 (high)."""
    if foreground.shape[0] == 0:
        return np.ones((1, *foreground.shape[1:]), np.float32)
    top = np.max(foreground, axis=0, keepdims=True)
    return np.power(np.clip(1.0 - top, 0.0, None), alpha).astype(np.float32)


def dense_crf(image: np.ndarray, unary: np.ndarray, kernels: Kernels,
              iterations: int = ITERATIONS) -> np.ndarray:
    """Mean-field inference: image uint8 [H, W, 3] C-contiguous, unary float32 [n, H * W]
    C-contiguous; returns the marginals float32 [n, H, W]. One label: all ones."""
    import pydensecrf.densecrf as dcrf

    height, width = check_image(image)
    if (not isinstance(unary, np.ndarray) or unary.dtype != np.float32 or unary.ndim != 2
            or unary.shape[1] != height * width):
        raise ValueError(f"unary must be float32 [n, {height * width}] for a {height}x{width} "
                         f"image, got {_describe(unary)}")
    if not unary.flags.c_contiguous:
        raise ValueError("unary must be C-contiguous")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    n_labels = unary.shape[0]
    if n_labels == 1:
        return np.ones((1, height, width), np.float32)
    # pydensecrf takes writable buffers only; decoded images are often read-only
    image = image if image.flags.writeable else image.copy()
    unary = unary if unary.flags.writeable else unary.copy()
    crf = dcrf.DenseCRF2D(width, height, n_labels)  # width first
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=kernels.gaussian_sxy, compat=kernels.gaussian_compat)
    crf.addPairwiseBilateral(sxy=kernels.bilateral_sxy, srgb=kernels.bilateral_srgb, rgbim=image,
                             compat=kernels.bilateral_compat)
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(n_labels, height, width)


def crf_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, *, gt_prob: float = GT_PROB,
               kernels: Kernels = RECIPES["label"], iterations: int = ITERATIONS, scale="auto") -> np.ndarray:
    """The label recipe (IRN's ``crf_inference_label``): labels int [H, W] (0..n_labels-1,
    or UNSURE) -> marginals float32 [n_labels, H, W]; argmax over axis 0 gives IRN's labels.
    Spatial widths scaled by ``scale`` (see the module docstring)."""
    height, width = check_image(image)
    if labels.shape != (height, width):
        raise ValueError(f"labels are {labels.shape[1]}x{labels.shape[0]} but the image is "
                         f"{width}x{height}")
    kernels = scaled(kernels, kernel_scale(scale, (height, width)))
    return dense_crf(image, label_unary(labels, n_labels, gt_prob), kernels, iterations)


def label_keys(labels: np.ndarray, keys=()) -> np.ndarray:
    """The CRF's labels for a class-id map: background, ``keys`` and every class in
    ``labels`` (255 excluded), sorted. labels uint8 [H, W]; returns int64 [n]."""
    present = np.unique(labels)
    return np.union1d(np.union1d([0], np.asarray(keys, np.int64)), present[present != UNSURE]).astype(np.int64)


def compact_labels(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Class ids -> positions in ``keys`` (int64 [n], sorted, from ``label_keys``); 255 stays
    UNSURE. labels uint8 [H, W]; returns int64 [H, W]."""
    lookup = np.full(256, UNSURE, np.int64)
    lookup[keys] = np.arange(len(keys))
    return lookup[labels]


def crf_label_map(image: np.ndarray, labels: np.ndarray, keys=(), *, gt_prob: float = GT_PROB,
                  kernels: Kernels = RECIPES["label"], iterations: int = ITERATIONS, scale="auto") -> np.ndarray:
    """IRN's ``crf_inference_label`` on class ids: labels uint8 [H, W] (255 = unsure) ->
    uint8 [H, W] class ids, every pixel decided. The CRF chooses among background, ``keys``
    (the image's classes, e.g. its CAM keys) and the classes present in ``labels``.
    Spatial widths scaled by ``scale``: on VOC-size images (longer side 500) ``"auto"`` is 1,
    IRN's own CRF."""
    if not isinstance(labels, np.ndarray) or labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 class ids [H, W], got {_describe(labels)}")
    all_keys = label_keys(labels, keys)
    marginals = crf_labels(image, compact_labels(labels, all_keys), len(all_keys), gt_prob=gt_prob,
                           kernels=kernels, iterations=iterations, scale=scale)
    return all_keys.astype(np.uint8)[np.argmax(marginals, axis=0)]


def crf_scores(image: np.ndarray, probs: np.ndarray, *, kernels: Kernels = RECIPES["softmax"],
               iterations: int = ITERATIONS, scale="auto") -> np.ndarray:
    """The softmax recipe (PSA's ``crf_inference``; DeepLab's with ``RECIPES["deeplab"]``):
    probs float [n, H, W], background plane included -> marginals float32 [n, H, W].
    Spatial widths scaled by ``scale`` (see the module docstring)."""
    height, width = check_image(image)
    if probs.ndim != 3 or probs.shape[1:] != (height, width):
        raise ValueError(f"probabilities must be [n, {height}, {width}] for this image, got "
                         f"{_describe(probs)}")
    return dense_crf(image, softmax_unary(probs), scaled(kernels, kernel_scale(scale, (height, width))), iterations)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__
