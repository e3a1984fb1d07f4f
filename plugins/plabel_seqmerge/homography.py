"""Homography between two photos of one subject: local features, Lowe's ratio test, RANSAC,
and sanity checks that reject fits no camera motion between photos of one area produces."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("sift", "orb")


@dataclass(frozen=True)
class HomographyParams:
    features: str = "sift"  # sift | orb (both in opencv-python-headless)
    max_features: int = 2000
    # OpenCV's SIFT default 0.04 suits sharp megapixel photos and leaves a few dozen
    # keypoints on small or soft ones; weak keypoints that match wrongly are rejected by
    # the ratio test, RANSAC and the sanity checks
    contrast_threshold: float = 0.01
    ratio_test: float = 0.75  # Lowe's ratio of best to second-best descriptor distance
    ransac_threshold: float = 3.0  # px, at the working resolution
    min_inliers: int = 8  # twice the 4 correspondences a homography needs
    max_scale: float = 2.0  # area scale within [1/max_scale^2, max_scale^2], anisotropy <= max_scale


def grey(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB (or already [H, W]) -> uint8 [H, W]."""
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _detector(params: HomographyParams):
    import cv2

    if params.features == "sift":
        return cv2.SIFT_create(nfeatures=params.max_features, contrastThreshold=params.contrast_threshold), cv2.NORM_L2
    if params.features == "orb":
        # small patches, so that small images keep features near their borders
        return cv2.ORB_create(nfeatures=params.max_features, edgeThreshold=15, patchSize=15), cv2.NORM_HAMMING
    raise ValueError(f"features must be one of {', '.join(FEATURES)}")


def plausible(matrix: np.ndarray, source_size: tuple[int, int], max_scale: float) -> bool:
    """Whether a 3x3 homography is a plausible camera change: finite, area scale of its
    linear part within [1/max_scale^2, max_scale^2], anisotropy (singular value ratio)
    <= max_scale, and the source frame ((H, W) = ``source_size``) mapped to a convex
    quadrilateral in front of the camera (no fold, no flip)."""
    if matrix is None or not np.all(np.isfinite(matrix)) or abs(matrix[2, 2]) < 1e-12:
        return False
    matrix = matrix / matrix[2, 2]
    linear = matrix[:2, :2]
    det = float(np.linalg.det(linear))
    if not (1 / max_scale ** 2 <= det <= max_scale ** 2):
        return False
    singular = np.linalg.svd(linear, compute_uv=False)
    if singular[0] > max_scale * singular[1]:
        return False
    height, width = source_size
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], dtype=np.float64)
    mapped = corners @ matrix.T
    if np.any(mapped[:, 2] <= 0):
        return False
    quad = mapped[:, :2] / mapped[:, 2:]
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    return bool(np.all(turns > 0))


def estimate_homography(source: np.ndarray, target: np.ndarray,
                        params: HomographyParams = HomographyParams()) -> np.ndarray | None:
    """3x3 float64 matrix mapping ``source`` pixel coordinates (x, y, 1) to ``target``'s,
    or None when too few features match or the fit is implausible. Images uint8
    [H, W, 3] RGB or [H, W] grey, sizes may differ."""
    import cv2

    detector, norm = _detector(params)
    keys_s, desc_s = detector.detectAndCompute(grey(source), None)
    keys_t, desc_t = detector.detectAndCompute(grey(target), None)
    if desc_s is None or desc_t is None or len(keys_s) < params.min_inliers or len(keys_t) < 2:
        return None
    matches = cv2.BFMatcher(norm).knnMatch(desc_s, desc_t, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < params.ratio_test * m[1].distance]
    if len(good) < params.min_inliers:
        return None
    points_s = np.float32([keys_s[m.queryIdx].pt for m in good])
    points_t = np.float32([keys_t[m.trainIdx].pt for m in good])
    matrix, inliers = cv2.findHomography(points_s, points_t, cv2.RANSAC, params.ransac_threshold)
    if matrix is None or inliers is None or int(inliers.sum()) < params.min_inliers:
        return None
    return matrix if plausible(matrix, source.shape[:2], params.max_scale) else None


def warp_mask(mask: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w] class ids warped by a source->target homography onto a target of
    ``size`` (H, W), nearest neighbour; target pixels from outside the source frame are 255."""
    import cv2

    height, width = size
    return cv2.warpPerspective(mask, matrix, (width, height), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=255)
