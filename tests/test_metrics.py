"""cfcl.metrics: hand-made masks with known DSC/HD95/ASD, empty policies, fold summary, latent metrics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from cfcl.metrics import (d_over_sigma, dice, format_pm, format_summary, kmeans_purity, purity,
                          segmentation_table, summarise_folds, surface_distances)


def square(h: int, w: int, top: int, left: int, size: int, label: int = 1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[top:top + size, left:left + size] = label
    return m


def reference_hd95_asd(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> tuple[float, float]:
    """Brute force: edges = mask minus its 4-connected erosion; all pairwise distances."""
    sp = np.asarray(spacing)
    ea = np.argwhere(a & ~binary_erosion(a)) * sp
    eb = np.argwhere(b & ~binary_erosion(b)) * sp
    d = cdist(ea, eb)
    ab, ba = d.min(1), d.min(0)
    return max(np.percentile(ab, 95), np.percentile(ba, 95)), np.concatenate([ab, ba]).mean()


# ------------------------------------------------------------------------------------- dice
def test_dice_offset_squares_and_empty_policy():
    gold = square(12, 12, 2, 2, 4, 1)[None]
    pred = square(12, 12, 2, 3, 4, 1)[None]  # shifted one column: overlap 12 of 16 + 16
    d = dice(pred, gold)
    assert d.shape == (1, 2)
    assert d[0, 0] == pytest.approx(24 / 32)
    assert d[0, 1] == 1.0  # label 2 empty in both
    pred2 = pred.copy()
    pred2[0, 10, 10] = 2  # label 2 only in pred
    assert dice(pred2, gold)[0, 1] == 0.0
    assert dice(gold, gold, labels=(1,))[0, 0] == 1.0


def test_dice_two_labels_per_image():
    gold = np.zeros((2, 8, 8), np.uint8)
    gold[:, :, :4] = 1
    gold[:, :, 4:] = 2
    pred = gold.copy()
    pred[1, :, 3] = 2  # image 1: one column of right lung predicted as left lung
    d = dice(pred, gold)
    np.testing.assert_allclose(d[0], [1, 1])
    np.testing.assert_allclose(d[1], [2 * 24 / (24 + 32), 2 * 32 / (40 + 32)])


def test_dice_bad_input():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


# ------------------------------------------------------------------------- surface distances
def test_surface_concentric_squares_by_hand():
    # Inner square side a, outer square side a+2 around it (k = 1). Every inner edge pixel is at
    # distance 1 from the outer edge; outer edge: 4a pixels at 1 and the 4 corners at sqrt(2).
    for a, hd_expected in ((10, np.sqrt(2)), (30, 1.0)):
        gold = square(50, 50, 10, 10, a)[None]
        pred = square(50, 50, 9, 9, a + 2)[None]
        hd, asd = surface_distances(pred, gold, labels=(1,))
        # 95th percentile of 4a ones and 4 sqrt(2): index 0.95 (4a+3) lands on a corner iff a = 10
        assert hd[0, 0] == pytest.approx(hd_expected, rel=1e-6)
        n_in, n_out = 4 * (a - 1), 4 * (a + 1)
        assert asd[0, 0] == pytest.approx((n_in + 4 * a + 4 * np.sqrt(2)) / (n_in + n_out), rel=1e-6)
        # spacing scales every distance
        hd2, asd2 = surface_distances(pred, gold, labels=(1,), spacing=2.0)
        assert hd2[0, 0] == pytest.approx(2 * hd[0, 0], rel=1e-6)
        assert asd2[0, 0] == pytest.approx(2 * asd[0, 0], rel=1e-6)


def test_surface_identical_and_shifted():
    gold = square(40, 40, 5, 5, 20)[None]
    hd, asd = surface_distances(gold, gold, labels=(1,))
    assert hd[0, 0] == 0 and asd[0, 0] == 0
    # shifted by 3 rows: the directed max is 3, the 95th percentile of both directions is 3
    hd, asd = surface_distances(np.roll(gold, 3, axis=1), gold, labels=(1,))
    assert hd[0, 0] == pytest.approx(3.0)


def test_surface_matches_bruteforce_reference():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :40]
    pred = np.zeros((3, 48, 40), np.uint8)
    gold = np.zeros_like(pred)
    for i in range(3):
        for lab, cx in ((1, 12), (2, 28)):
            for arr in (pred, gold):
                cy, c, ry, rx = 24 + rng.integers(-4, 5), cx + rng.integers(-3, 4), rng.integers(8, 16), rng.integers(4, 8)
                arr[i][((yy - cy) / ry) ** 2 + ((xx - c) / rx) ** 2 <= 1] = lab
    for spacing in (1.0, (2.0, 0.5)):
        hd, asd = surface_distances(pred, gold, spacing=spacing)
        sp = (spacing, spacing) if np.isscalar(spacing) else spacing
        for i in range(3):
            for j, lab in enumerate((1, 2)):
                ref_hd, ref_asd = reference_hd95_asd(pred[i] == lab, gold[i] == lab, sp)
                assert hd[i, j] == pytest.approx(ref_hd, rel=1e-5)
                assert asd[i, j] == pytest.approx(ref_asd, rel=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_surface_matches_monai_public_metrics():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    yy, xx = np.mgrid[:40, :40]
    gold = (((yy - 20) / 12) ** 2 + ((xx - 18) / 9) ** 2 <= 1).astype(np.uint8)[None]
    pred = (((yy - 19) / 10) ** 2 + ((xx - 21) / 10) ** 2 <= 1).astype(np.uint8)[None]
    hd, asd = surface_distances(pred, gold, labels=(1,), spacing=(1.5, 0.7))
    onehot = lambda m: m[:, None].astype(np.float32)  # noqa: E731
    kw = dict(include_background=True, spacing=(1.5, 0.7))
    assert hd[0, 0] == pytest.approx(float(compute_hausdorff_distance(onehot(pred), onehot(gold), percentile=95, **kw)), rel=1e-5)
    assert asd[0, 0] == pytest.approx(float(compute_average_surface_distance(onehot(pred), onehot(gold), symmetric=True, **kw)), rel=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("spacing", [1.0, (1.5, 0.7)])
def test_surface_matches_monai_on_random_lungs_touching_the_border(spacing):
    """The fast scipy path against MONAI's own metrics: blobs with holes, cut by the image border."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(3)
    masks = ndimage.gaussian_filter(rng.normal(size=(12, 48, 40)), (0, 3, 3)) > 0.05  # ragged, border-touching
    pred, gold = masks[:6].astype(np.uint8), masks[6:].astype(np.uint8)
    hd, asd = surface_distances(pred, gold, labels=(1,), spacing=spacing)
    onehot = lambda m: m[:, None].astype(np.float32)  # noqa: E731
    kw = dict(include_background=True, spacing=spacing)
    ref_hd = compute_hausdorff_distance(onehot(pred), onehot(gold), percentile=95, **kw).numpy()[:, 0]
    ref_asd = compute_average_surface_distance(onehot(pred), onehot(gold), symmetric=True, **kw).numpy()[:, 0]
    np.testing.assert_allclose(hd[:, 0], ref_hd, rtol=1e-5)
    np.testing.assert_allclose(asd[:, 0], ref_asd, rtol=1e-5)


def test_surface_empty_policy():
    h, w = 40, 30  # diagonal 50
    gold = np.zeros((3, h, w), np.uint8)
    pred = np.zeros_like(gold)
    gold[0] = square(h, w, 5, 5, 10, 1)  # image 0: label 1 in gold only; label 2 empty in both
    pred[1] = square(h, w, 5, 5, 10, 2)  # image 1: label 2 in pred only
    gold[2] = square(h, w, 5, 5, 10, 1)  # image 2: label 1 perfect, label 2 in pred only
    pred[2] = square(h, w, 5, 5, 10, 1)
    pred[2, 30:35, 20:25] = 2
    hd, asd = surface_distances(pred, gold)
    np.testing.assert_allclose(hd, [[50, 0], [0, 50], [0, 50]])
    np.testing.assert_allclose(asd, [[50, 0], [0, 50], [0, 50]])
    hd, _ = surface_distances(pred, gold, spacing=2.0)
    assert hd[0, 0] == pytest.approx(100.0)
    assert np.all(np.isfinite(hd))


# -------------------------------------------------------------------------------- tables
def test_segmentation_table():
    gold = np.zeros((2, 20, 20), np.uint8)
    gold[:, 4:14, 2:8] = 1
    gold[:, 4:14, 12:18] = 2
    pred = gold.copy()
    pred[1][pred[1] == 2] = 0  # image 1 misses the left lung
    t = segmentation_table(pred, gold, effusion=np.array([0, 1]))
    assert list(t.columns) == ["dsc", "dsc_right", "dsc_left", "hd95", "asd", "effusion"]
    np.testing.assert_allclose(t["dsc_right"], [1, 1])
    np.testing.assert_allclose(t["dsc_left"], [1, 0])
    np.testing.assert_allclose(t["dsc"], [1, 0.5])
    np.testing.assert_allclose(t["hd95"], [0, np.hypot(20, 20) / 2])
    assert t["effusion"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="effusion"):
        segmentation_table(pred, gold, effusion=np.array([0]))


def test_summarise_folds_hand_table():
    per_image = pd.DataFrame({
        "fold":     [0, 0, 0, 1, 1, 1],
        "dsc":      [0.9, 0.8, 0.7, 1.0, 0.6, 0.8],
        "effusion": [0, 1, 1, 0, 1, 1],
        "hd95":     [1.0, 2.0, 3.0, 3.0, 4.0, 5.0],
        "asd":      [0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
    })
    s = summarise_folds(per_image)
    assert len(s) == 1 and s["n_folds"].iloc[0] == 2
    # per-fold DSC: 80 and 80; NF: 90, 100; PE: 75, 70; HD95: 2, 4; ASD: 0.5, 1.0
    r = s.iloc[0]
    assert r["DSC_mean"] == pytest.approx(80) and r["DSC_std"] == pytest.approx(0)
    assert r["DSC_NF_mean"] == pytest.approx(95) and r["DSC_NF_std"] == pytest.approx(np.std([90, 100], ddof=1))
    assert r["DSC_PE_mean"] == pytest.approx(72.5) and r["DSC_PE_std"] == pytest.approx(np.std([75, 70], ddof=1))
    assert r["HD95_mean"] == pytest.approx(3) and r["HD95_std"] == pytest.approx(np.sqrt(2))
    assert r["ASD_mean"] == pytest.approx(0.75)
    assert summarise_folds(per_image, ddof=0).iloc[0]["HD95_std"] == pytest.approx(1.0)
    f = format_summary(s)
    assert f["DSC"] == "80.00 ± 0.00" and f["HD95"] == "3.0 ± 1.4"
    with pytest.raises(ValueError, match="fold 1"):
        summarise_folds(per_image.assign(effusion=[0, 1, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="lacks columns"):
        summarise_folds(per_image.drop(columns="fold"))


def test_format_pm():
    assert format_pm(93.934, 1.915, 2) == "93.93 ± 1.92"
    assert format_pm(7.26, 3.44, 1) == "7.3 ± 3.4"


# ------------------------------------------------------------------------------ latent space
def blobs(rng, n_per=100, dim=5, spread=0.05):
    centers = np.eye(dim)[:3] * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centers])
    return x, np.repeat(np.arange(3), n_per)


def test_purity_hand_case():
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    labels = np.array([5, 5, 7, 7, 7, 5, 7, 9, 9, 9])
    assert purity(clusters, labels) == pytest.approx((2 + 2 + 3) / 10)


def test_kmeans_purity_separated_and_mixed():
    rng = np.random.default_rng(1)
    x, y = blobs(rng)
    assert kmeans_purity(x, y) == 1.0
    # relabel 10 % of each blob with the next class: purity 0.9 exactly
    mixed = y.copy()
    for c in range(3):
        mixed[np.flatnonzero(y == c)[:10]] = (c + 1) % 3
    assert kmeans_purity(x, mixed) == pytest.approx(0.9)
    # deterministic for a seed
    assert kmeans_purity(x, mixed, seed=3) == kmeans_purity(x, mixed, seed=3)


def test_d_over_sigma_known_geometry():
    # centroids (0,0), (3,0), (0,4): pairwise distances 3, 4, 5 -> d = 4
    # mean squared distances to centroid: 1, 4, 1 -> sigma = sqrt(2)
    a = np.array([[1, 0], [-1, 0]])
    b = np.array([[3, 2], [3, -2]])
    c = np.array([[0, 5], [0, 3]])
    x = np.concatenate([a, b, c]).astype(float)
    y = np.repeat([0, 1, 2], 2)
    assert d_over_sigma(x, y, normalize=False) == pytest.approx(4 / np.sqrt(2))
    # two classes only: d = 3, sigma = sqrt((1 + 4) / 2)
    assert d_over_sigma(x[:4], y[:4], normalize=False) == pytest.approx(3 / np.sqrt(2.5))
    # normalize=True ignores each row's norm
    scale = np.random.default_rng(0).uniform(0.5, 3, size=(len(x), 1))
    assert d_over_sigma(x * scale, y) == pytest.approx(d_over_sigma(x, y))
    with pytest.raises(ValueError, match="two classes"):
        d_over_sigma(x, np.zeros(len(x)))
    with pytest.raises(ValueError, match="rows"):
        d_over_sigma(x, y[:3])


def test_hidden_lung_recall_on_hand_made_masks():
    from cfcl.metrics import hidden_lung_recall

    gold = np.zeros((3, 8, 8), np.uint8)
    gold[:, 1:7, 1:4], gold[:, 1:7, 5:8] = 1, 2
    hidden = np.zeros((3, 8, 8), bool)
    hidden[:2, 5:7, :] = True  # the bases of both lungs hidden in images 0 and 1; image 2 healthy
    pred = gold.copy()
    pred[1, 5:7, 1:4] = 0  # image 1: the hidden right base is missed (6 of 12 hidden lung pixels)
    r = hidden_lung_recall(pred, gold, hidden)
    assert r[0] == 1.0 and r[1] == 0.5 and np.isnan(r[2])
    wrong_side = gold.copy()
    wrong_side[0, 5:7, 5:8] = 1  # labelled, but as the other lung: not recovered
    assert hidden_lung_recall(wrong_side, gold, hidden)[0] == 0.5


def test_lower_field_dice_on_hand_made_masks():
    from cfcl.metrics import lower_field_dice

    gold = np.zeros((2, 9, 8), np.uint8)
    gold[:, 0:9, 0:3], gold[:, 0:9, 5:8] = 1, 2  # both lungs 9 rows tall: lower third = rows 6-8
    pred = gold.copy()
    pred[0, 0:3] = 0  # the apex missed: the lower field is untouched
    pred[1, 6:9, 0:3] = 0  # the right base missed entirely
    d = lower_field_dice(pred, gold)
    assert d[0] == 1.0 and d[1] == pytest.approx(0.5)
    assert np.isnan(lower_field_dice(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), np.uint8))[0])
