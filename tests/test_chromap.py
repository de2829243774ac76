"""cfcl.chromap (MVEE, unit-disc map, HSV colours, UMAP CHRO-map) and cfcl.plots.latent."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv

from cfcl.chromap import chromap, colour_coords, mvee, overlay, polar_hsv, to_unit_disc
from cfcl.plots.latent import plot_chromaps


def known_ellipse(rng, n=300):
    """Points on and inside an ellipse with centre (2, -1), semi-axes 3 and 1, rotated 0.5 rad."""
    c = np.array([2.0, -1.0])
    rot = np.array([[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]])
    axes = np.diag([3.0, 1.0])
    t = rng.uniform(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    inside = circle * np.sqrt(rng.uniform(0, 1, n))[:, None]
    a_true = np.linalg.inv(rot @ axes @ axes @ rot.T)
    return np.vstack([circle, inside]) @ axes @ rot.T + c, circle @ axes @ rot.T + c, c, a_true


def test_mvee_contains_points_and_recovers_known_ellipse():
    pts, boundary, c, a_true = known_ellipse(np.random.default_rng(0))
    center, a = mvee(pts)
    diff = pts - center
    assert np.einsum("ij,jk,ik->i", diff, a, diff).max() <= 1 + 1e-9
    np.testing.assert_allclose(center, c, atol=0.01)
    np.testing.assert_allclose(a, a_true, rtol=0.02, atol=0.01)
    # without the convex-hull shortcut: same ellipse
    c2, a2 = mvee(pts, use_hull=False)
    np.testing.assert_allclose(c2, center, atol=1e-3)
    np.testing.assert_allclose(a2, a, rtol=0.01, atol=1e-3)


def test_mvee_of_square_is_its_circumcircle():
    pts = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1]], float)
    center, a = mvee(pts, tol=1e-8)
    np.testing.assert_allclose(center, [1, 1], atol=1e-6)
    np.testing.assert_allclose(a, np.eye(2) / 2, atol=1e-6)  # radius sqrt(2)


def test_mvee_bad_input():
    with pytest.raises(ValueError, match="collinear"):
        mvee(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], float))
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        mvee(np.zeros((5, 3)))


def test_to_unit_disc_maps_boundary_to_radius_one():
    pts, boundary, c, a_true = known_ellipse(np.random.default_rng(1))
    r = np.linalg.norm(to_unit_disc(boundary, c, a_true), axis=1)
    np.testing.assert_allclose(r, 1.0, atol=1e-12)
    assert np.allclose(to_unit_disc(c[None], c, a_true), 0)
    # with the fitted ellipse: boundary within a few % of radius 1, everything inside <= 1
    center, a = mvee(pts)
    np.testing.assert_allclose(np.linalg.norm(to_unit_disc(boundary, center, a), axis=1), 1, atol=0.02)
    assert np.linalg.norm(to_unit_disc(pts, center, a), axis=1).max() <= 1 + 1e-9
    # the symmetric root does not rotate: a circle's map is a pure scaling
    np.testing.assert_allclose(to_unit_disc(np.array([[3.0, 4.0]]), np.zeros(2), np.eye(2) / 4), [[1.5, 2.0]])


def test_polar_hsv_colours():
    rgb = polar_hsv(np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0, 0], [0.5, 0], [3, 0]], float))
    np.testing.assert_allclose(rgb[0], [1, 0, 0])  # 0 deg: red
    np.testing.assert_allclose(rgb[1], [0.5, 1, 0])  # 90 deg: hue 0.25
    np.testing.assert_allclose(rgb[2], [0, 1, 1])  # 180 deg: cyan
    np.testing.assert_allclose(rgb[3], [0.5, 0, 1])  # 270 deg: hue 0.75
    np.testing.assert_allclose(rgb[4], [0, 0, 0])  # centre: black
    np.testing.assert_allclose(rgb[5], [0.5, 0, 0])  # value = radius
    np.testing.assert_allclose(rgb[6], [1, 0, 0])  # radius clipped to 1


def test_colour_coords_clips_points_outside_fitted_ellipse():
    rng = np.random.default_rng(2)
    coords = rng.normal(size=(200, 2))
    coords[-1] = [100.0, 0.0]  # far outside, not among the fitted points
    rgb = colour_coords(coords, fit_index=np.arange(199))
    assert rgb.shape == (200, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb_to_hsv(rgb[-1])[2] == pytest.approx(1.0)


def test_overlay():
    img = np.full((2, 2), 255, np.uint8)
    rgb = np.zeros((2, 2, 3))
    rgb[..., 0] = 1
    out = overlay(img, rgb, alpha=0.5, mask=np.array([[True, False], [True, True]]))
    np.testing.assert_allclose(out[0, 0], [1, 0.5, 0.5])
    np.testing.assert_allclose(out[0, 1], [1, 1, 1])
    np.testing.assert_allclose(overlay(img / 255.0, rgb, alpha=0.0), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="rgb"):
        overlay(img, rgb[:1])


# ---------------------------------------------------------------- UMAP (slow: numba compiles)
@pytest.fixture(scope="module")
def clustered_embeddings():
    """2 images 16x16, D=8, three well-separated clusters in vertical stripes."""
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 16, 16), int)
    labels[:, :, 5:10] = 1
    labels[:, :, 10:] = 2
    centers = rng.normal(size=(3, 8)) * 5
    emb = centers[labels].transpose(0, 3, 1, 2) + 0.3 * rng.normal(size=(2, 8, 16, 16))
    # n_fit below the 512 pixels: exercises the subsampled fit + transform path
    return emb, labels, chromap(emb, n_fit=300, n_neighbors=10, seed=0, progress=False)


@pytest.mark.slow  # UMAP's first call compiles with numba (~30 s)
def test_chromap_shape_deterministic_three_hues(clustered_embeddings):
    emb, labels, rgb = clustered_embeddings
    assert rgb.shape == (2, 16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    again = chromap(emb, n_fit=300, n_neighbors=10, seed=0, progress=False)
    np.testing.assert_array_equal(rgb, again)
    hsv = rgb_to_hsv(rgb)
    hues = [np.median(hsv[..., 0][labels == k]) for k in range(3)]
    for i in range(3):
        # each cluster has one colour: small circular spread of hue, bright (far from the centre)
        h = hsv[..., 0][labels == i]
        spread = np.abs((h - hues[i] + 0.5) % 1 - 0.5)
        assert np.percentile(spread, 90) < 0.05
        assert np.median(hsv[..., 2][labels == i]) > 0.5
        for j in range(i):
            assert abs((hues[i] - hues[j] + 0.5) % 1 - 0.5) > 0.15  # distinct hues


@pytest.mark.slow  # UMAP's first call compiles with numba (~30 s)
def test_chromap_mask_and_bad_input(clustered_embeddings):
    emb, _, _ = clustered_embeddings
    mask = np.zeros((2, 16, 16), bool)
    mask[:, 4:12, 4:12] = True
    rgb = chromap(emb, mask=mask, n_fit=1000, n_neighbors=10, progress=False)
    assert np.all(rgb[~mask] == 0)
    assert rgb[mask].max(1).min() > 0  # masked-in pixels away from the centre are coloured
    with pytest.raises(ValueError, match="mask"):
        chromap(emb, mask=mask[:1])
    with pytest.raises(ValueError, match=r"\(N, D, H, W\)"):
        chromap(emb[0])


# ------------------------------------------------------------------------------------ plots
@pytest.mark.slow  # UMAP's first call compiles with numba
def test_umap_fast_path_is_bitwise_umaps_own():
    """Below umap's small-data size, umap_2d passes umap's own cosine distances as a precomputed matrix
    (seconds instead of minutes): the fit and the transformed points equal umap run on the features."""
    import warnings

    from cfcl.chromap import import_umap, umap_2d

    umap = import_umap()
    # numba's cache is on for the functions umap compiles without it (not a new import: the first does it)
    from numba.core.caching import NullCache

    assert not isinstance(umap.umap_.smooth_knn_dist._cache, NullCache)
    assert not isinstance(umap.utils.fast_knn_indices._cache, NullCache)

    x = np.random.default_rng(0).normal(size=(240, 8)).astype(np.float32)
    x[5] = x[6]  # a duplicate pixel: its distance 0 must stay 0
    coords, fit = umap_2d(x, n_fit=120, n_neighbors=10, seed=0, progress=False)
    ref = umap.UMAP(n_components=2, n_neighbors=10, min_dist=0.1, metric="cosine", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = ref.fit_transform(x[fit])
        rest = np.setdiff1d(np.arange(len(x)), fit)
        placed = ref.transform(x[rest])
    np.testing.assert_array_equal(coords[fit], fitted)
    np.testing.assert_array_equal(coords[rest], placed)


@pytest.mark.slow
def test_latent_table_reads_the_pretrained_runs(tiny):
    from cfcl.latent import invariance, latent_table
    from cfcl.pretrain import pretrain

    prof = tiny({"pretrain.cf_source": "oracle"})
    for m in ("dvd_cl", "vader"):
        pretrain(prof, m, progress=False)
    t = latent_table(prof, ["dvd_cl", "vader"])
    assert list(t.columns) == ["d/σ", "purity", "NMI", "d/σ (paper)", "purity (paper)"]
    assert list(t.index) == ["DVD-CL", "VADeR"]
    assert t.loc["DVD-CL", "d/σ (paper)"] == 0.83 and np.isnan(t.loc["VADeR", "d/σ (paper)"])
    assert np.isfinite(t[["d/σ", "purity", "NMI"]].to_numpy()).all()
    assert (t["purity"] >= 1 / 3 - 1e-9).all()  # balanced classes: the floor is 1/3, not the background share
    inv = invariance(prof, "dvd_cl")
    assert inv["intervention"].tolist() == ["scanner", "effusion", "both"]
    assert inv.loc[0, "n_inside"] == 0 and np.isnan(inv.loc[0, "inside"])  # do(scanner) changes no anatomy
    assert inv[["outside"]].stack().between(-1, 1).all()


def test_balanced_pixel_sampling():
    from cfcl.latent import sample_pixels

    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :2, :2], labels[:, 6:, 6:] = 1, 2  # 4 pixels per lung, 56 background
    emb = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    z, y = sample_pixels(emb, labels, per_image=12)
    assert z.shape == (24, 3) and np.bincount(y).tolist() == [8, 8, 8]
    z, y = sample_pixels(emb, labels, per_image=30)  # a class with fewer pixels gives what it has
    assert np.bincount(y).tolist() == [20, 8, 8]
    _, y = sample_pixels(emb, labels, per_image=32, balanced=False)
    assert len(y) == 64 and np.bincount(y, minlength=3)[0] > 40


def test_plot_chromaps():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    maps = {"dvd_cl": np.zeros((3, 8, 8, 3)), "mvd_cl": np.ones((3, 8, 8, 3))}
    fig = plot_chromaps(images, maps, col_titles=["a", "b", "c"])
    assert len(fig.axes) == 6
    assert fig.axes[0].get_ylabel() == "DVD-CL" and fig.axes[3].get_ylabel() == "MVD-CL"
    with pytest.raises(ValueError, match="shape"):
        plot_chromaps(images, {"dvd_cl": np.zeros((2, 8, 8, 3))})
