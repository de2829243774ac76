"""CHRO-map: colour-coded high-resolution overlay of pixel embeddings (paper section 2.3, Fig. 2).

Pipeline (paper section 2.3): UMAP of the pixel embeddings to 2-D; minimum-volume enclosing
ellipse (MVEE, Khachiyan's algorithm) of the projected points; the affine map sending that
ellipse to the unit circle; HSV colour from polar coordinates (hue = angle, value = radius,
saturation = 1); overlay on the image. Close colours mean close embeddings.
"""
from __future__ import annotations

import warnings

import numpy as np

from cfcl.progress import tqdm


def mvee(points: np.ndarray, tol: float = 1e-4, max_iter: int = 10_000,
         use_hull: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-volume enclosing ellipse {x : (x - c)^T A (x - c) <= 1} of ``points`` (M, 2).

    Khachiyan's algorithm: weights u on the points (start uniform), lifted points q_i = (x_i, 1);
    each step moves weight towards the point of largest Mahalanobis-like distance
    q_j^T (Q diag(u) Q^T)^-1 q_j until the weights change by less than ``tol`` (L2 norm). Then
    c = sum u_i x_i and A = (1/d) (sum u_i x_i x_i^T - c c^T)^-1.

    Choices (not in the paper): the MVEE depends only on the convex hull, so with ``use_hull``
    the iterations run on the hull's vertices only (same result, much faster); and the returned
    A is rescaled, i.e. divided by max_i (x_i - c)^T A (x_i - c) when that exceeds 1, so
    every point is exactly inside (Khachiyan stops at a (1 + eps)-approximation).

    Returns ``center`` (2,) and ``A`` (2, 2), symmetric positive definite.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"mvee: points must be (M, 2), got shape {pts.shape}")
    if pts.shape[0] < 3 or not np.all(np.isfinite(pts)):
        raise ValueError(f"mvee: need at least 3 finite points, got {pts.shape[0]}")
    d = pts.shape[1]
    work = pts
    if use_hull:
        from scipy.spatial import ConvexHull, QhullError

        try:
            work = pts[ConvexHull(pts).vertices]
        except QhullError as err:  # collinear or coincident points
            raise ValueError("mvee: points are degenerate (collinear); no enclosing ellipse of positive area") from err
    m = work.shape[0]
    q = np.vstack([work.T, np.ones(m)])  # (d+1, m)
    u = np.full(m, 1.0 / m)
    for _ in range(max_iter):
        x = (q * u) @ q.T
        try:
            dist = np.einsum("ij,ij->j", q, np.linalg.solve(x, q))
        except np.linalg.LinAlgError as err:
            raise ValueError("mvee: points are degenerate (collinear); no enclosing ellipse of positive area") from err
        j = int(np.argmax(dist))
        step = (dist[j] - d - 1) / ((d + 1) * (dist[j] - 1))
        new_u = (1 - step) * u
        new_u[j] += step
        done = np.linalg.norm(new_u - u) < tol
        u = new_u
        if done:
            break
    center = work.T @ u
    cov = (work.T * u) @ work - np.outer(center, center)
    a = np.linalg.inv(cov) / d
    diff = pts - center
    worst = float(np.einsum("ij,jk,ik->i", diff, a, diff).max())
    if worst > 1:
        a = a / worst
    return center, (a + a.T) / 2


def to_unit_disc(points: np.ndarray, center: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Affine map sending the ellipse (x - c)^T A (x - c) = 1 to the unit circle: (M, 2) -> (M, 2).

    y = A^(1/2) (x - c) with the symmetric square root of A (eigendecomposition), so that
    ||y||^2 = (x - c)^T A (x - c). Of all such maps (any rotation of y works, e.g. Cholesky
    L^T (x - c)) the symmetric root only stretches along the ellipse's axes and does not rotate,
    so hues keep the directions of the UMAP plane. Points inside the ellipse land in the disc.
    """
    pts = np.asarray(points, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or A.shape != (2, 2) or np.shape(center) != (2,):
        raise ValueError(f"to_unit_disc: need points (M, 2), center (2,), A (2, 2); got "
                         f"{pts.shape}, {np.shape(center)}, {A.shape}")
    w, v = np.linalg.eigh((A + A.T) / 2)
    if np.any(w <= 0):
        raise ValueError(f"to_unit_disc: A must be positive definite, eigenvalues {w}")
    root = (v * np.sqrt(w)) @ v.T
    return (pts - np.asarray(center, dtype=np.float64)) @ root  # root is symmetric


def polar_hsv(points_in_disc: np.ndarray) -> np.ndarray:
    """RGB colours in [0, 1] (M, 3) from 2-D points (M, 2) in the unit disc (paper section 2.3).

    Hue = angle theta = atan2(y, x) mapped from [0, 2 pi) to [0, 1) (0 deg red, 120 deg green,
    240 deg blue), saturation = 1, value = radius r clipped to [0, 1] (the centre is black).
    """
    from matplotlib.colors import hsv_to_rgb

    pts = np.asarray(points_in_disc, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"polar_hsv: points must be (M, 2), got shape {pts.shape}")
    theta = np.mod(np.arctan2(pts[:, 1], pts[:, 0]), 2 * np.pi)
    hsv = np.stack([np.mod(theta / (2 * np.pi), 1.0), np.ones(len(pts)),
                    np.clip(np.hypot(pts[:, 0], pts[:, 1]), 0.0, 1.0)], axis=1)
    return hsv_to_rgb(hsv)


def import_umap():
    """``import umap`` with numba's on-disk cache on for the functions umap-learn compiles without it
    (``fast_knn_indices``, ``smooth_knn_dist``, ``compute_membership_strengths``, the layout epochs...).

    Compiling them took 45 of the 48 s of a small UMAP's first call in every new process (notebook 05, its
    nbval rerun, the tests); with the cache a later process loads them in a few seconds. The machine code
    is the same, so the embedding is bitwise the same (tests/test_chromap.py). The cache lives where numba
    puts it (``__pycache__`` beside umap's sources, else ``NUMBA_CACHE_DIR`` or the user's cache) and is
    keyed on umap's source files, so an upgrade recompiles. Once umap is imported this is plain ``import``.
    """
    import sys

    if "umap" in sys.modules:
        return sys.modules["umap"]
    import numba

    njit, jit = numba.njit, numba.jit

    def cached(decorator):
        def wrap(*args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @numba.njit
                return decorator(cache=True)(args[0])
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return wrap

    numba.njit, numba.jit = cached(njit), cached(jit)
    try:
        import umap
    finally:
        numba.njit, numba.jit = njit, jit
    return umap


#: umap-learn computes exact nearest neighbours below this many fitted points (``UMAP._small_data``).
UMAP_SMALL_DATA = 4096


def umap_2d(features: np.ndarray, n_fit: int = 5000, n_neighbors: int = 30, seed: int = 0,
            metric: str = "cosine", min_dist: float = 0.1, chunk: int = 50_000,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """UMAP of ``features`` (M, D) to 2-D: ``(coords (M, 2), fit_index (n,))``.

    When M > ``n_fit``, UMAP is fitted on ``n_fit`` pixels drawn without replacement with
    ``np.random.default_rng(seed)`` and the others are placed with ``transform`` (in chunks,
    with a progress bar); otherwise it is fitted on all of them. ``random_state=seed`` makes
    UMAP deterministic (and single-threaded). ``metric="cosine"`` by default because the
    contrastive losses compare pixels by cosine similarity (paper silent).
    """
    umap = import_umap()

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3 or not np.all(np.isfinite(x)):
        raise ValueError(f"umap_2d: features must be finite (M >= 3, D), got shape {x.shape}")
    m = x.shape[0]
    if m > n_fit:
        fit_index = np.sort(np.random.default_rng(seed).choice(m, size=n_fit, replace=False))
    else:
        fit_index = np.arange(m)
    # Below umap's small-data size it computes exact distances to the fitted points through a per-pair
    # Python callable (minutes for a few thousand pixels); the same distances from umap's compiled loop,
    # passed as metric="precomputed", give bitwise the same UMAP in seconds.
    exact = metric == "cosine" and len(fit_index) < UMAP_SMALL_DATA
    fitted = x[fit_index]
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(fit_index) - 1), min_dist=min_dist,
                        metric="precomputed" if exact else metric, random_state=seed)
    coords = np.empty((m, 2), dtype=np.float64)
    rest = np.setdiff1d(np.arange(m), fit_index)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state.*")
        warnings.filterwarnings("ignore", message=".*precomputed metric.*")
        coords[fit_index] = reducer.fit_transform(_cosine_distances(fitted, fitted) if exact else fitted)
        step = min(chunk, 8192) if exact else chunk  # a chunk's distance block stays under ~270 MB
        for start in tqdm(range(0, rest.size, step), desc="UMAP transform",
                          disable=not progress or rest.size == 0):
            idx = rest[start:start + step]
            coords[idx] = reducer.transform(_cosine_distances(x[idx], fitted) if exact else x[idx])
    return coords, fit_index


def _cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """umap's own cosine distances between the rows of ``a`` and ``b``, computed in one compiled loop
    (``umap.distances.pairwise_special_metric``) and cast to float32 as its per-pair path returns them:
    bitwise the matrix umap computes itself, so the embedding is identical (tests/test_chromap.py)."""
    from umap.distances import pairwise_special_metric

    return pairwise_special_metric(np.asarray(a, np.float32), np.asarray(b, np.float32), metric="cosine").astype(np.float32)


def colour_coords(coords: np.ndarray, fit_index: np.ndarray | None = None) -> np.ndarray:
    """RGB (M, 3) from 2-D coordinates (M, 2): MVEE of the fitted points ``coords[fit_index]``
    (all when None), map to the unit disc, :func:`polar_hsv`. Points outside the ellipse (only
    possible for transformed, not fitted, points) get radius clipped to 1."""
    coords = np.asarray(coords, dtype=np.float64)
    fitted = coords if fit_index is None else coords[np.asarray(fit_index)]
    center, a = mvee(fitted)
    return polar_hsv(to_unit_disc(coords, center, a))


def chromap(embeddings: np.ndarray, mask: np.ndarray | None = None, n_fit: int = 5000,
            n_neighbors: int = 30, seed: int = 0, metric: str = "cosine",
            progress: bool = True) -> np.ndarray:
    """CHRO-map colours ``(N, H, W, 3)`` in [0, 1] of pixel embeddings ``(N, D, H, W)`` (section 2.3).

    All images share one UMAP, one ellipse and so one colour code, so colours compare across
    images (e.g. an image and its counterfactuals). ``mask`` (N, H, W) bool restricts the map to
    some pixels (the others stay black); see :func:`umap_2d` for ``n_fit`` (subsampled fit plus
    ``transform``) and :func:`colour_coords` for the ellipse.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 4:
        raise ValueError(f"chromap: embeddings must be (N, D, H, W), got shape {emb.shape}")
    n, dim, h, w = emb.shape
    feats = np.moveaxis(emb, 1, -1).reshape(-1, dim)  # (N*H*W, D), pixel order n, y, x
    if mask is None:
        keep = np.ones(n * h * w, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n, h, w):
            raise ValueError(f"chromap: mask must be (N, H, W) = {(n, h, w)}, got {mask.shape}")
        keep = mask.reshape(-1)
    coords, fit_index = umap_2d(feats[keep], n_fit=n_fit, n_neighbors=n_neighbors, seed=seed,
                                metric=metric, progress=progress)
    rgb = np.zeros((n * h * w, 3))
    rgb[keep] = colour_coords(coords, fit_index)
    return rgb.reshape(n, h, w, 3)


def overlay(image: np.ndarray, rgb: np.ndarray, alpha: float = 0.6,
            mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a CHRO-map over a grey image: ``(1 - alpha) * image + alpha * rgb``, (H, W, 3) in [0, 1].

    ``image`` (H, W) is uint8 (0..255) or float in [0, 1]; ``rgb`` (H, W, 3) in [0, 1]. Where
    ``mask`` (H, W) is False the image is shown unchanged.
    """
    img = np.asarray(image)
    rgb = np.asarray(rgb, dtype=np.float64)
    if img.ndim != 2 or rgb.shape != img.shape + (3,):
        raise ValueError(f"overlay: image must be (H, W) and rgb (H, W, 3); got {img.shape} and {rgb.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    grey = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    if grey.size and (grey.min() < 0 or grey.max() > 1):
        raise ValueError("overlay: a float image must lie in [0, 1] (pass uint8 for 0..255)")
    out = (1 - alpha) * grey[..., None] + alpha * rgb
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        out = np.where(mask[..., None], out, grey[..., None])
    return np.clip(out, 0.0, 1.0)


def warm() -> None:
    """Compile umap-learn's numba functions into this environment's cache (:func:`import_umap`) with one
    small fit and transform on the paths :func:`umap_2d` takes (precomputed cosine distances), so that no
    notebook pays the compilation (`make install` runs it: ``python -m cfcl.chromap --warm``)."""
    features = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    umap_2d(features, n_fit=200, n_neighbors=10, progress=False)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cfcl.chromap", description="CHRO-map utilities")
    ap.add_argument("--warm", action="store_true", help=warm.__doc__.splitlines()[0])
    if ap.parse_args().warm:
        warm()
