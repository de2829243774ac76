"""cfcl.losses against the loop references (values and gradients, float64), edge cases, properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reference_losses as ref
from cfcl.losses import DVDCL, MVDCL, SDVDCL, SMVDCL, SSDCL, VADeR, DenseNTXent, SimCLR, multi_positive_nce

TOL = dict(rtol=1e-5, atol=1e-5)
SCOPES = ("image", "batch")


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _labels(*shape, seed=0, high=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def _check(fast_fn, ref_fn, inputs):
    """Values and gradients w.r.t. every embedding input agree."""
    xs = [x.clone().requires_grad_(True) for x in inputs]
    ys = [x.clone().requires_grad_(True) for x in inputs]
    v_fast, v_ref = fast_fn(*xs), ref_fn(*ys)
    torch.testing.assert_close(v_fast, torch.as_tensor(v_ref, dtype=torch.float64), **TOL)
    g_fast = torch.autograd.grad(v_fast, xs, allow_unused=True)
    if not isinstance(v_ref, torch.Tensor) or not v_ref.requires_grad:
        g_ref = [torch.zeros_like(y) for y in ys]
    else:
        g_ref = torch.autograd.grad(v_ref, ys, allow_unused=True)
    for gf, gr, x in zip(g_fast, g_ref, xs):
        gf = torch.zeros_like(x) if gf is None else gf
        gr = torch.zeros_like(x) if gr is None else gr
        assert torch.isfinite(gf).all()
        torch.testing.assert_close(gf, gr, **TOL)
    return v_fast


# ----------------------------------------------------------------------------- vs references
@pytest.mark.parametrize("neg", SCOPES)
def test_dense_ntxent_matches_reference(neg):
    a, b = _rand(2, 5, 4, seed=1), _rand(2, 5, 4, seed=2)
    _check(lambda x, y: DenseNTXent(0.1, neg)(x, y), lambda x, y: ref.loop_dense_ntxent(x, y, 0.1, neg), [a, b])


@pytest.mark.parametrize("neg", SCOPES)
def test_dvdcl_matches_reference(neg):
    a, t = _rand(2, 3, 4, 5, seed=3), _rand(2, 3, 4, 5, seed=4)
    _check(lambda x, y: DVDCL(0.2, neg)(x, y), lambda x, y: ref.loop_dvdcl(x, y, 0.2, neg), [a, t])
    torch.testing.assert_close(DVDCL(0.2, neg)(a, t), ref.masked_dvdcl(a, t, 0.2, neg), **TOL)


@pytest.mark.parametrize("neg", SCOPES)
def test_mvdcl_matches_reference(neg):
    z = _rand(2, 4, 3, 5, seed=5)
    _check(lambda x: MVDCL(0.1, neg)(x), lambda x: ref.loop_mvdcl(x, 0.1, neg), [z])
    torch.testing.assert_close(MVDCL(0.1, neg)(z), ref.masked_mvdcl(z, 0.1, neg), **TOL)


@pytest.mark.parametrize("neg", SCOPES)
def test_sdvdcl_matches_reference(neg):
    a, t = _rand(2, 3, 5, 4, seed=6), _rand(2, 3, 5, 4, seed=7)
    la, lt = _labels(2, 3, 5, seed=8), _labels(2, 3, 5, seed=9)
    _check(lambda x, y: SDVDCL(0.1, neg)(x, y, la, lt), lambda x, y: ref.loop_sdvdcl(x, y, la, lt, 0.1, neg),
           [a, t])
    torch.testing.assert_close(SDVDCL(0.1, neg)(a, t, la, lt), ref.masked_sdvdcl(a, t, la, lt, 0.1, neg), **TOL)


@pytest.mark.parametrize("neg", SCOPES)
def test_smvdcl_and_ssdcl_match_reference(neg):
    z, lab = _rand(2, 3, 4, 5, seed=10), _labels(2, 3, 4, seed=11)
    _check(lambda x: SMVDCL(0.1, neg)(x, lab), lambda x: ref.loop_smvdcl(x, lab, 0.1, neg), [z])
    _check(lambda x: SSDCL(0.1, neg)(x, lab), lambda x: ref.loop_smvdcl(x, lab, 0.1, neg), [z])
    torch.testing.assert_close(SMVDCL(0.1, neg)(z, lab), ref.masked_smvdcl(z, lab, 0.1, neg), **TOL)


def test_supervised_background_none_uses_all_anchors():
    z, lab = _rand(1, 2, 4, 3, seed=12), _labels(1, 2, 4, seed=13)
    _check(lambda x: SMVDCL(background=None)(x, lab), lambda x: ref.loop_smvdcl(x, lab, background=None), [z])


def test_simclr_matches_reference_and_textbook():
    z1, z2 = _rand(6, 8, seed=14), _rand(6, 8, seed=15)
    _check(lambda x, y: SimCLR(0.5)(x, y), lambda x, y: ref.loop_simclr(x, y, 0.5), [z1, z2])
    # textbook NT-Xent: cross-entropy over the 2B-1 others, target the partner
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(6)])
    torch.testing.assert_close(SimCLR(0.5)(z1, z2), F.cross_entropy(sim, target), **TOL)


# ----------------------------------------------------------------------------- edge cases
def test_class_absent_and_anchor_without_positive():
    a, t = _rand(2, 2, 4, 3, seed=16), _rand(2, 2, 4, 3, seed=17)
    la = torch.zeros(2, 2, 4, dtype=torch.long)
    lt = torch.zeros(2, 2, 4, dtype=torch.long)
    la[0, 0, 1] = 2  # the only "2" of image 0, pair 0: an anchor without positive (excluded)
    la[0, 0, 2] = lt[0, 0, 3] = 1  # class 2 absent elsewhere, class 1 has a pair
    la[1, 1, 0] = 1  # image 1, pair 1: lone "1" -> pair 1 has no valid anchor at all in image scope
    for neg in SCOPES:
        _check(lambda x, y: SDVDCL(0.1, neg)(x, y, la, lt), lambda x, y: ref.loop_sdvdcl(x, y, la, lt, 0.1, neg),
               [a, t])
    # image scope: only the two lung pixels of pair 0 are valid anchors, pair 1 has none
    z = F.normalize(torch.cat([a[0, 0], t[0, 0]]), dim=1)
    sim = (z @ z.T / 0.1).fill_diagonal_(float("-inf"))
    logp = sim - torch.logsumexp(sim, 1, keepdim=True)
    expected = -(logp[2, 7] + logp[7, 2]) / 2
    torch.testing.assert_close(SDVDCL(0.1, "image")(a, t, la, lt), expected, **TOL)


@pytest.mark.parametrize("neg", SCOPES)
def test_all_background_gives_zero_and_zero_gradient(neg):
    z = _rand(2, 4, 6, 5, seed=18).requires_grad_(True)
    lab = torch.zeros(2, 4, 6, dtype=torch.long)
    for loss in (SMVDCL(negatives=neg)(z, lab), SSDCL(negatives=neg)(z, lab),
                 SDVDCL(negatives=neg)(z[:, :2], z[:, 2:], lab[:, :2], lab[:, 2:])):
        (g,) = torch.autograd.grad(loss, z)
        assert loss.item() == 0.0
        assert torch.equal(g, torch.zeros_like(g))


def test_all_background_float32_no_nan():
    z = torch.randn(1, 2, 3, 4, requires_grad=True)
    loss = SMVDCL()(z, torch.zeros(1, 2, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_small_n():
    a, b = _rand(3, 1, 4, seed=19), _rand(3, 1, 4, seed=20)
    # N = 1, image scope: the only other pixel is the positive, so the loss is exactly 0
    torch.testing.assert_close(DenseNTXent()(a, b), torch.zeros((), dtype=torch.float64), **TOL)
    _check(lambda x, y: DenseNTXent(0.1, "batch")(x, y), lambda x, y: ref.loop_dense_ntxent(x, y, 0.1, "batch"),
           [a, b])
    z = _rand(2, 3, 1, 4, seed=21)
    _check(lambda x: MVDCL()(x), lambda x: ref.loop_mvdcl(x), [z])
    lab = torch.tensor([[[1], [1], [2]], [[2], [0], [2]]])
    _check(lambda x: SMVDCL()(x, lab), lambda x: ref.loop_smvdcl(x, lab), [z])


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("neg", SCOPES)
def test_dense_ntxent_symmetric(neg):
    a, b = _rand(2, 6, 5, seed=22), _rand(2, 6, 5, seed=23)
    torch.testing.assert_close(DenseNTXent(0.1, neg)(a, b), DenseNTXent(0.1, neg)(b, a))


@pytest.mark.parametrize("neg", SCOPES)
def test_special_cases_agree(neg):
    a, b = _rand(2, 6, 5, seed=24), _rand(2, 6, 5, seed=25)
    dense = DenseNTXent(0.1, neg)(a, b)
    torch.testing.assert_close(MVDCL(0.1, neg)(torch.stack([a, b], 1)), dense)  # V = 2
    torch.testing.assert_close(DVDCL(0.1, neg)(a[:, None], b[:, None]), dense)  # T = 1
    assert VADeR is DenseNTXent
    # DVD-CL = mean over targets of the pairwise dense NT-Xent
    t = _rand(2, 3, 6, 5, seed=26)
    anc = a[:, None].expand(-1, 3, -1, -1)
    per_pair = torch.stack([DenseNTXent(0.1, neg)(a, t[:, k]) for k in range(3)]).mean()
    torch.testing.assert_close(DVDCL(0.1, neg)(anc, t), per_pair)


def test_scale_and_permutation_invariance():
    z, lab = _rand(2, 3, 7, 4, seed=27), _labels(2, 3, 7, seed=28)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    for loss in (MVDCL(), MVDCL(negatives="batch")):
        torch.testing.assert_close(loss(3.7 * z), loss(z))
        torch.testing.assert_close(loss(z[:, :, perm]), loss(z))
    torch.testing.assert_close(SMVDCL()(z[:, :, perm], lab[:, :, perm]), SMVDCL()(z, lab))


def test_perfect_embeddings_beat_random():
    n, d = 8, 16
    basis = torch.linalg.qr(_rand(d, d, seed=29))[0][:n]  # n orthonormal embeddings
    perfect = basis[None].expand(2, -1, -1)
    a, b = _rand(2, n, d, seed=30), _rand(2, n, d, seed=31)
    assert DenseNTXent()(perfect, perfect) < DenseNTXent()(a, b)
    zp = basis[None, None].expand(2, 4, -1, -1)
    assert MVDCL()(zp) < MVDCL()(_rand(2, 4, n, d, seed=32))
    lab = _labels(2, 4, n, seed=33)
    onehot = F.one_hot(lab, 3).double() + 0.01 * _rand(2, 4, n, 3, seed=34)
    assert SMVDCL()(onehot, lab) < SMVDCL()(_rand(2, 4, n, 3, seed=35), lab)
    assert SDVDCL()(onehot[:, :2], onehot[:, 2:], lab[:, :2], lab[:, 2:]) < \
        SDVDCL()(_rand(2, 2, n, 3, seed=36), _rand(2, 2, n, 3, seed=37), lab[:, :2], lab[:, 2:])


def test_float32_stable_with_large_and_tiny_inputs():
    z = torch.randn(2, 4, 50, 8) * 1e4
    z[0, 0, 0] = 1e-20
    z.requires_grad_(True)
    lab = torch.randint(0, 3, (2, 4, 50))
    loss = MVDCL(temperature=0.01)(z) + SMVDCL(temperature=0.01)(z, lab)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_core_counts_and_anchor_mask():
    z = _rand(1, 4, 3, seed=38)
    keys = torch.tensor([[0, 0, 1, 2]])
    s, c = multi_positive_nce(z, keys, None, 0.1, 3)
    assert c.tolist() == [2.0]  # pixels 0 and 1 have one positive each, 2 and 3 none
    s2, c2 = multi_positive_nce(z, keys, torch.tensor([[True, False, True, True]]), 0.1, 3)
    assert c2.tolist() == [1.0] and s2.item() < s.item()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="negatives"):
        DenseNTXent(negatives="global")
    with pytest.raises(ValueError, match="temperature"):
        MVDCL(temperature=0)
    with pytest.raises(ValueError, match="DenseNTXent"):
        DenseNTXent()(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="V >= 2"):
        MVDCL()(torch.randn(2, 1, 3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        SMVDCL()(torch.randn(1, 2, 3, 4), torch.full((1, 2, 3), 3))
    with pytest.raises(ValueError, match="integer"):
        SMVDCL()(torch.randn(1, 2, 3, 4), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="labels must be"):
        SDVDCL()(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.zeros(1, 2, 3, dtype=torch.long),
                 torch.zeros(1, 2, 2, dtype=torch.long))


def test_half_precision_inputs_are_computed_in_float32():
    z, lab = torch.randn(2, 3, 20, 8), torch.randint(0, 3, (2, 3, 20))
    for loss in (MVDCL(), SMVDCL()):
        args = (lab,) if isinstance(loss, SMVDCL) else ()
        out = loss(z.bfloat16(), *args)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, loss(z.bfloat16().float(), *args))
