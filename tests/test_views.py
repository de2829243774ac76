"""cfcl.views: matrices, one-resampling rendering, exact pixel tracking, sampling, intensity."""
from __future__ import annotations

import math

import pytest
import torch

from cfcl import views as V

S = 48


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _coords(b, size=S):
    """Coordinate-coded images (B, 2, H, W): channel 0 = x + 1, channel 1 = y + 1 (never 0)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs + 1, ys + 1])[None].expand(b, -1, -1, -1).contiguous()


def _blocks(b, size=S, block=8, seed=0):
    """Piecewise-constant label maps (B, H, W) with values 0..2 on block x block tiles."""
    g = _gen(seed)
    small = torch.randint(0, 3, (b, size // block, size // block), generator=g)
    return small.repeat_interleave(block, 1).repeat_interleave(block, 2)


# ----------------------------------------------------------------------------- matrices
def test_compose_invert_apply_map_points():
    g = _gen(1)
    A = V.random_geometry(5, S, V.AugmentConfig(), g).double()
    B = V.random_geometry(5, S, V.AugmentConfig(), g).double()
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(V.compose(A, V.invert(A)), eye)
    pts = torch.rand(5, 7, 2, generator=g, dtype=torch.float64) * (S - 1)
    torch.testing.assert_close(V.apply(V.compose(A, B), pts), V.apply(B, V.apply(A, pts)))
    torch.testing.assert_close(V.apply(V.compose(A, B), pts), V.apply(B @ A, pts))
    # view A -> view B equals original -> B of the original point
    torch.testing.assert_close(V.map_points(V.apply(A, pts), A, B), V.apply(B, pts))
    # broadcasting: one matrix per (batch, view), points shared over views
    Ms = torch.stack([A, B], 1)  # (5, 2, 3, 3)
    out = V.apply(Ms, pts[:, None])
    assert out.shape == (5, 2, 7, 2)
    torch.testing.assert_close(out[:, 1], V.apply(B, pts))


def test_random_geometry_ranges_and_identity():
    cfg = V.AugmentConfig(rotation_deg=20, scale=(1.2, 1.5))
    M = V.random_geometry(200, S, cfg, _gen(2)).double()
    lin = M[:, :2, :2]
    det = torch.linalg.det(lin)
    assert det.min() >= 1.2 ** 2 - 1e-4 and det.max() <= 1.5 ** 2 + 1e-4
    angle = torch.rad2deg(torch.atan2(lin[:, 1, 0], lin[:, 0, 0]))
    assert angle.abs().max() <= 20 + 1e-3 and angle.abs().max() > 15
    torch.testing.assert_close(M[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(200, 3))
    ident = V.AugmentConfig(rotation_deg=0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(V.random_geometry(3, S, ident, _gen(3)), torch.eye(3).expand(3, 3, 3))
    # deterministic for a seed
    torch.testing.assert_close(V.random_geometry(4, S, cfg, _gen(9)), V.random_geometry(4, S, cfg, _gen(9)))


def test_flip_only_when_asked():
    no_flip = V.random_geometry(100, S, V.AugmentConfig(), _gen(4))
    assert (torch.linalg.det(no_flip[:, :2, :2]) > 0).all()
    flip = V.random_geometry(100, S, V.AugmentConfig(flip_p=1.0), _gen(4))
    assert (torch.linalg.det(flip[:, :2, :2]) < 0).all()


# ----------------------------------------------------------------------------- rendering
def test_warp_hand_made_cases():
    img = torch.arange(S * S, dtype=torch.float32).view(1, 1, S, S)
    # integer translation by (+3, -2): view(x, y) = orig(x - 3, y + 2), zeros outside
    T = torch.tensor([[[1.0, 0, 3], [0, 1, -2], [0, 0, 1]]])
    out = V.warp(img, T, mode="nearest")[0, 0]
    torch.testing.assert_close(out[:S - 2, 3:], img[0, 0, 2:, :S - 3])
    assert (out[:, :3] == 0).all() and (out[S - 2:] == 0).all()
    torch.testing.assert_close(V.warp(img, T)[0, 0], out, atol=1e-3, rtol=0)  # exact up to round-off
    # rotation by 90 degrees about the centre: view(x', y') with x' = c - (y - c), y' = x
    c = (S - 1) / 2
    R = torch.tensor([[[0.0, -1, 2 * c], [1, 0, 0], [0, 0, 1]]])
    rot = V.warp(img, R)[0, 0]
    r, col = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    torch.testing.assert_close(rot, img[0, 0][S - 1 - col, r], atol=1e-3, rtol=0)


def test_one_sampling_grid_renders_images_and_label_maps_alike():
    """sampling_grid + resample is warp (fine-tuning renders an image and its mask with one grid)."""
    g = _gen(19)
    M = V.random_geometry(3, S, V.AugmentConfig(), g)
    img, lab = torch.rand(3, 1, S, S, generator=g), _blocks(3)[:, None].float()
    grid = V.sampling_grid(M, S, S)
    assert grid.shape == (3, S, S, 2)
    assert torch.equal(V.resample(img, grid), V.warp(img, M))
    assert torch.equal(V.resample(lab, grid, "nearest"), V.warp(lab, M, mode="nearest"))
    with pytest.raises(ValueError, match="mode"):
        V.resample(img, grid, "bicubic")


def test_pixel_tracking_recovers_points():
    """Render coordinate-coded images through random matrices; gather at the mapped view points."""
    b = 6
    g = _gen(5)
    M = V.random_geometry(b, S, V.AugmentConfig(), g)
    views = V.warp(_coords(b), M)
    # sub-pixel original points, 1.5 px clear of the original border (whose bilinear reads would
    # blend in the zero padding)
    pts = V.sample_points(M[:, None], S, 400, g, jitter=0.5, margin=1.5)
    assert not torch.equal(pts, pts.round())
    assert ((pts >= 1.5) & (pts <= S - 2.5)).all()
    got = V.gather(views, V.apply(M, pts)) - 1  # (B, N, 2) original (x, y) read from the view
    err = (got - pts).norm(dim=-1)
    assert err.max() < 0.5
    assert err.max() < 1e-3  # in fact exact up to float round-off


def test_gather_reads_warp_pixels_exactly_and_other_resolution():
    g = _gen(6)
    feats = torch.rand(2, 3, S, S, generator=g)
    q = torch.randint(0, S, (2, 10, 2), generator=g).float()
    out = V.gather(feats, q)
    expected = feats.permute(0, 2, 3, 1)[torch.arange(2)[:, None], q[..., 1].long(), q[..., 0].long()]
    torch.testing.assert_close(out, expected)
    # a half-resolution map of the coordinate image (corners aligned) reads view points correctly
    half = torch.nn.functional.interpolate(_coords(1), size=(S // 2, S // 2), mode="bilinear",
                                           align_corners=True)
    p = torch.rand(1, 20, 2, generator=g) * (S - 1)
    torch.testing.assert_close(V.gather(half, p, size=S) - 1, p, atol=1e-3, rtol=0)


def test_labels_follow_the_matrices():
    b = 4
    g = _gen(7)
    M = V.random_geometry(b, S, V.AugmentConfig(), g)
    lab = _blocks(b)
    warped = V.warp(lab[:, None].float(), M, mode="nearest")[:, 0].long()
    # every view pixel centre q whose source lies in the image carries the label of its source
    q = V._pixel_grid(S, S, "cpu").expand(b, -1, -1)
    src = V.apply(V.invert(M), q)
    inside = ((src > -0.49) & (src < S - 0.51)).all(-1)
    view_labels = warped.reshape(b, -1)
    src_labels = V.labels_at(lab, src.clamp(0, S - 1))
    assert (view_labels[inside] == src_labels[inside]).all()
    assert (view_labels[~((src > -0.5001) & (src < S - 0.4999)).all(-1)] == 0).all()
    # sampled original points, away from label boundaries: view label at the nearest view pixel
    pts = V.sample_points(M[:, None], S, 300, g)
    qv = torch.round(V.apply(M, pts)).long()
    at_view = warped[torch.arange(b)[:, None], qv[..., 1], qv[..., 0]]
    x, y = pts[..., 0].long(), pts[..., 1].long()
    interior = ((x % 8 >= 1) & (x % 8 <= 6) & (y % 8 >= 1) & (y % 8 <= 6))
    assert interior.float().mean() > 0.4
    assert (at_view[interior] == V.labels_at(lab, pts)[interior]).all()


def test_labels_at_rounding_and_errors():
    lab = torch.arange(12).view(1, 3, 4)
    pts = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.4, 0.6], [2.5, 1.5]]])
    assert V.labels_at(lab, pts).tolist() == [[0, 11, 5, 10]]  # 2.5 -> 2, 1.5 -> 2 (half to even)
    with pytest.raises(ValueError, match="outside"):
        V.labels_at(lab, torch.tensor([[[4.0, 0.0]]]))


# ----------------------------------------------------------------------------- visibility, sampling
def test_visible_hand_case():
    T = torch.tensor([[[1.0, 0, 10], [0, 1, 0], [0, 0, 1]]])
    pts = torch.tensor([[[0.0, 0.0], [S - 11.0, 5.0], [S - 10.0, 5.0], [3.0, S - 1.0]]])
    assert V.visible(pts, T, S).tolist() == [[True, True, False, True]]


def test_sample_points_only_inside_active_views():
    g = _gen(8)
    b, v = 8, 4
    Ms = V.random_geometry(b * v, S, V.AugmentConfig(), g).view(b, v, 3, 3)
    for active in ([0, 2], None):
        pts = V.sample_points(Ms, S, 500, g, active=active, jitter=0.5)
        assert pts.shape == (b, 500, 2)
        assert ((pts >= 0) & (pts <= S - 1)).all()
        for k in (active or range(v)):
            assert V.visible(pts, Ms[:, k], S).all()
    pts = V.sample_points(Ms, S, 500, g, active=[0, 2])
    assert not all(bool(V.visible(pts, Ms[:, k], S).all()) for k in (1, 3))  # inactive views may miss
    assert torch.equal(pts, pts.round())  # no jitter: pixel centres


def test_sample_points_distinct_when_enough_candidates_and_replacement_otherwise():
    g = _gen(10)
    Ms = torch.eye(3).expand(2, 1, 3, 3)
    pts = V.sample_points(Ms, 8, 64, g)  # exactly all 64 pixels, each once
    assert sorted((pts[0, :, 1] * 8 + pts[0, :, 0]).long().tolist()) == list(range(64))
    # a view that sees only the top-left 2 x 2 pixels: 4 candidates for 10 samples
    Z = torch.tensor([[[4.0, 0, 0], [0, 4, 0], [0, 0, 1]]]).expand(2, 1, 3, 3)  # zoom x4 about (0, 0)
    pts = V.sample_points(Z, 8, 10, g)
    assert pts.shape == (2, 10, 2) and (pts <= 1).all() and V.visible(pts, Z[:, 0], 8).all()


def test_sample_points_empty_intersection_raises():
    left = torch.tensor([[1.0, 0, S], [0, 1, 0], [0, 0, 1]])
    right = torch.tensor([[1.0, 0, -S], [0, 1, 0], [0, 0, 1]])
    Ms = torch.stack([left, right])[None]
    with pytest.raises(ValueError, match="no common field of view"):
        V.sample_points(Ms, S, 10, _gen(0))
    with pytest.raises(ValueError, match="active"):
        V.sample_points(Ms, S, 10, _gen(0), active=[5])


def test_default_overlaps_never_empty_and_sampling_deterministic():
    Ms = V.random_geometry(4 * 300, S, V.AugmentConfig(), _gen(11)).view(300, 4, 3, 3)
    p1 = V.sample_points(Ms, S, 50, _gen(12))
    p2 = V.sample_points(Ms, S, 50, _gen(12))
    assert torch.equal(p1, p2)


# ----------------------------------------------------------------------------- intensity, make_views
def test_intensity_range_and_determinism():
    x = torch.rand(16, 1, S, S, generator=_gen(13))
    cfg = V.AugmentConfig()
    y1, y2 = V.intensity(x, cfg, _gen(14)), V.intensity(x, cfg, _gen(14))
    assert torch.equal(y1, y2)
    assert y1.min() >= 0 and y1.max() <= 1
    assert not torch.equal(y1, V.intensity(x, cfg, _gen(15)))
    assert not torch.equal(y1, x)


def test_intensity_hand_cases():
    x = torch.rand(3, 1, S, S, generator=_gen(16))
    off = V.AugmentConfig(jitter_p=0.0, blur_p=0.0, solarize_p=0.0)
    assert torch.equal(V.intensity(x, off, _gen(0)), x)
    sol = V.AugmentConfig(jitter_p=0.0, blur_p=0.0, solarize_p=1.0, solarize_threshold=0.5)
    torch.testing.assert_close(V.intensity(x, sol, _gen(0)), torch.where(x >= 0.5, 1 - x, x))
    blur = V.AugmentConfig(jitter_p=0.0, blur_p=1.0, solarize_p=0.0, blur_sigma=(1.0, 2.0))
    const = torch.full((2, 1, S, S), 0.3)
    torch.testing.assert_close(V.intensity(const, blur, _gen(0)), const)  # normalised kernel
    blurred = V.intensity(x, blur, _gen(0))
    assert blurred.std() < x.std() * 0.7
    torch.testing.assert_close(blurred.mean(), x.mean(), atol=2e-3, rtol=0)


def test_make_views_shapes_zeros_outside_and_determinism():
    imgs = torch.rand(2, 4, S, S, generator=_gen(17)) * 0.9 + 0.05
    cfg = V.AugmentConfig(translate=0.2)
    views, Ms = V.make_views(imgs, cfg, _gen(18))
    assert views.shape == (2, 4, 1, S, S) and Ms.shape == (2, 4, 3, 3)
    assert views.min() >= 0 and views.max() <= 1
    v2, M2 = V.make_views(imgs, cfg, _gen(18))
    assert torch.equal(views, v2) and torch.equal(Ms, M2)
    # independent geometry per view
    assert not torch.allclose(Ms[:, 0], Ms[:, 1])
    # view pixels whose source is outside the original image are exactly 0
    q = V._pixel_grid(S, S, "cpu").expand(8, -1, -1)
    src = V.apply(V.invert(Ms.reshape(8, 3, 3)), q)
    outside = ((src < -1) | (src > S)).any(-1)
    assert outside.any()
    assert (views.reshape(8, -1)[outside] == 0).all()


def test_bad_config_and_input_raise():
    with pytest.raises(ValueError, match="scale"):
        V.AugmentConfig(scale=(1.5, 1.0))
    with pytest.raises(ValueError, match="blur_p"):
        V.AugmentConfig(blur_p=1.5)
    with pytest.raises(ValueError, match="mode"):
        V.warp(torch.rand(1, 1, 4, 4), torch.eye(3)[None], mode="bicubic")
    with pytest.raises(ValueError, match="floating"):
        V.warp(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.eye(3)[None])
    with pytest.raises(ValueError, match="square"):
        V.make_views(torch.rand(1, 2, 4, 5), V.AugmentConfig(), _gen(0))
    assert math.isclose(V.AugmentConfig().rotation_deg, 15.0)
