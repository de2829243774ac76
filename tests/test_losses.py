"""cfcl.losses against the loop references (values and gradients, float64), edge cases, properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reference_losses as ref
import cfcl.losses as losses
from cfcl.losses import DVDCL, MVDCL, SDVDCL, SMVDCL, SSDCL, VADeR, DenseNTXent, SimCLR, multi_positive_nce

TOL = dict(rtol=1e-5, atol=1e-5)
SCOPES = ("image", "batch")
# the three computations of the similarity block's log-sum-exp: the dense (G, M, M) block, and the
# chunked path in row chunks (chunk 3 does not divide the set sizes: partial last chunks too), which
# recomputes each chunk in the backward ("stream", losses.KEEP_BELOW = 0: set by the fixture below) or
# keeps the row softmax ("keep", the default for blocks of up to KEEP_BELOW elements)
PATHS = {"dense": dict(stream_above=None), "stream": dict(stream_above=0, chunk_size=3),
         "keep": dict(stream_above=0, chunk_size=3)}


@pytest.fixture(autouse=True)
def _recompute_on_the_stream_path(request, monkeypatch):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("path") == "stream":
        monkeypatch.setattr(losses, "KEEP_BELOW", 0)


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
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_dense_ntxent_matches_reference(neg, path):
    a, b = _rand(2, 5, 4, seed=1), _rand(2, 5, 4, seed=2)
    _check(lambda x, y: DenseNTXent(0.1, neg, **PATHS[path])(x, y),
           lambda x, y: ref.loop_dense_ntxent(x, y, 0.1, neg), [a, b])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_dvdcl_matches_reference(neg, path):
    a, t = _rand(2, 3, 4, 5, seed=3), _rand(2, 3, 4, 5, seed=4)
    loss = DVDCL(0.2, neg, **PATHS[path])
    _check(lambda x, y: loss(x, y), lambda x, y: ref.loop_dvdcl(x, y, 0.2, neg), [a, t])
    torch.testing.assert_close(loss(a, t), ref.masked_dvdcl(a, t, 0.2, neg), **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_mvdcl_matches_reference(neg, path):
    z = _rand(2, 4, 3, 5, seed=5)
    loss = MVDCL(0.1, neg, **PATHS[path])
    _check(lambda x: loss(x), lambda x: ref.loop_mvdcl(x, 0.1, neg), [z])
    torch.testing.assert_close(loss(z), ref.masked_mvdcl(z, 0.1, neg), **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_sdvdcl_matches_reference(neg, path):
    a, t = _rand(2, 3, 5, 4, seed=6), _rand(2, 3, 5, 4, seed=7)
    la, lt = _labels(2, 3, 5, seed=8), _labels(2, 3, 5, seed=9)
    loss = SDVDCL(0.1, neg, **PATHS[path])
    _check(lambda x, y: loss(x, y, la, lt), lambda x, y: ref.loop_sdvdcl(x, y, la, lt, 0.1, neg), [a, t])
    torch.testing.assert_close(loss(a, t, la, lt), ref.masked_sdvdcl(a, t, la, lt, 0.1, neg), **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_smvdcl_and_ssdcl_match_reference(neg, path):
    z, lab = _rand(2, 3, 4, 5, seed=10), _labels(2, 3, 4, seed=11)
    _check(lambda x: SMVDCL(0.1, neg, **PATHS[path])(x, lab), lambda x: ref.loop_smvdcl(x, lab, 0.1, neg), [z])
    _check(lambda x: SSDCL(0.1, neg, **PATHS[path])(x, lab), lambda x: ref.loop_smvdcl(x, lab, 0.1, neg), [z])
    torch.testing.assert_close(SMVDCL(0.1, neg, **PATHS[path])(z, lab), ref.masked_smvdcl(z, lab, 0.1, neg),
                               **TOL)


@pytest.mark.parametrize("path", PATHS)
def test_supervised_background_none_uses_all_anchors(path):
    z, lab = _rand(1, 2, 4, 3, seed=12), _labels(1, 2, 4, seed=13)
    _check(lambda x: SMVDCL(background=None, **PATHS[path])(x, lab),
           lambda x: ref.loop_smvdcl(x, lab, background=None), [z])


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


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("neg", SCOPES)
def test_all_background_gives_zero_and_zero_gradient(neg, path):
    z = _rand(2, 4, 6, 5, seed=18).requires_grad_(True)
    lab = torch.zeros(2, 4, 6, dtype=torch.long)
    kw = PATHS[path]
    for loss in (SMVDCL(negatives=neg, **kw)(z, lab), SSDCL(negatives=neg, **kw)(z, lab),
                 SDVDCL(negatives=neg, **kw)(z[:, :2], z[:, 2:], lab[:, :2], lab[:, 2:])):
        (g,) = torch.autograd.grad(loss, z)
        assert loss.item() == 0.0
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("path", PATHS)
def test_all_background_float32_no_nan(path):
    z = torch.randn(1, 2, 3, 4, requires_grad=True)
    loss = SMVDCL(**PATHS[path])(z, torch.zeros(1, 2, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("path", PATHS)
def test_small_n(path):
    kw = PATHS[path]
    a, b = _rand(3, 1, 4, seed=19), _rand(3, 1, 4, seed=20)
    # N = 1, image scope: the only other pixel is the positive, so the loss is exactly 0
    torch.testing.assert_close(DenseNTXent(**kw)(a, b), torch.zeros((), dtype=torch.float64), **TOL)
    _check(lambda x, y: DenseNTXent(0.1, "batch", **kw)(x, y),
           lambda x, y: ref.loop_dense_ntxent(x, y, 0.1, "batch"), [a, b])
    z = _rand(2, 3, 1, 4, seed=21)
    _check(lambda x: MVDCL(**kw)(x), lambda x: ref.loop_mvdcl(x), [z])
    lab = torch.tensor([[[1], [1], [2]], [[2], [0], [2]]])
    _check(lambda x: SMVDCL(**kw)(x, lab), lambda x: ref.loop_smvdcl(x, lab), [z])


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


@pytest.mark.parametrize("path", PATHS)
def test_float32_stable_with_large_and_tiny_inputs(path):
    z = torch.randn(2, 4, 50, 8) * 1e4
    z[0, 0, 0] = 1e-20
    z.requires_grad_(True)
    lab = torch.randint(0, 3, (2, 4, 50))
    loss = MVDCL(temperature=0.01, **PATHS[path])(z) + SMVDCL(temperature=0.01, **PATHS[path])(z, lab)
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


@pytest.mark.parametrize("path", PATHS)
def test_half_precision_inputs_are_computed_in_float32(path):
    z, lab = torch.randn(2, 3, 20, 8), torch.randint(0, 3, (2, 3, 20))
    for loss in (MVDCL(**PATHS[path]), SMVDCL(**PATHS[path])):
        args = (lab,) if isinstance(loss, SMVDCL) else ()
        out = loss(z.bfloat16(), *args)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, loss(z.bfloat16().float(), *args))


# ----------------------------------------------------------------------------- streaming path
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("temperature", [0.3, 0.02])
def test_streaming_lse_gradcheck(chunk, temperature):
    """The custom autograd Function alone (G=2 sets of 7 pixels; chunks dividing 7 or not, or
    larger than the set) passes torch's numerical gradient check, in its symmetric form (tau 0.3) and
    its per-row form (tau 0.02: the block spans 100 > SYMMETRIC_SPAN), keeping and recomputing."""
    z = _rand(2, 7, 3, seed=40).requires_grad_(True)
    for keep in (False, True):
        assert torch.autograd.gradcheck(
            lambda x: losses._StreamingLSE.apply(F.normalize(x, dim=-1), temperature, chunk, keep), (z,))


@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_symmetric_and_per_row_forms_agree(temperature, monkeypatch):
    """One shift per set (symmetric form, taken at the paper's tau 0.1) and one per row (taken where the
    block spans more than SYMMETRIC_SPAN: 2 / 0.01 = 200) give the same value and gradient as the dense
    block, keeping and recomputing; forcing the per-row form at tau 0.1 changes nothing either."""
    calls = []
    real = losses._StreamingLSE._exp_chunk
    monkeypatch.setattr(losses._StreamingLSE, "_exp_chunk", staticmethod(lambda *a: calls.append(1) or real(*a)))
    z, lab = _rand(2, 2, 60, 16, seed=48), _labels(2, 2, 60, seed=49)
    _dense_vs_stream(lambda **kw: SSDCL(temperature, **kw), z, lab, chunk=50)
    assert bool(calls) == (temperature == 0.1)
    monkeypatch.setattr(losses, "SYMMETRIC_SPAN", 0.0)
    calls.clear()
    _dense_vs_stream(lambda **kw: SSDCL(temperature, **kw), z, lab, chunk=50)
    assert not calls


def _dense_vs_stream(make, z, *args, chunk):
    """Value and gradient of the dense path against the chunked path, recomputing and keeping."""
    a = z.clone().requires_grad_(True)
    va = make(stream_above=None)(a, *args)
    ga = torch.autograd.grad(va, a)
    for keep_below in (0, losses.KEEP_BELOW):
        b = z.clone().requires_grad_(True)
        saved, losses.KEEP_BELOW = losses.KEEP_BELOW, keep_below
        try:
            vb = make(stream_above=0, chunk_size=chunk)(b, *args)
            gb = torch.autograd.grad(vb, b)
        finally:
            losses.KEEP_BELOW = saved
        torch.testing.assert_close(vb, va, **TOL)
        torch.testing.assert_close(gb[0], ga[0], **TOL)


@pytest.mark.parametrize("chunk", [97, 256, 2000])
def test_streaming_equals_dense_ssdcl_realistic(chunk):
    """SSDCL as the paper runs it (batch negatives, D=128, 1,000 pixels per view), here B=1
    (M=2,000): value and gradient of both paths agree in float64."""
    z, lab = _rand(1, 2, 1000, 128, seed=41), _labels(1, 2, 1000, seed=42)
    _dense_vs_stream(SSDCL, z, lab, chunk=chunk)


def test_streaming_equals_dense_several_sets():
    """G > 1 contrast sets streamed together (image scope, B*T sets; batch scope, T terms)."""
    a, t = _rand(3, 2, 150, 32, seed=43), _rand(3, 2, 150, 32, seed=44)
    for neg in SCOPES:
        _dense_vs_stream(lambda **kw: DVDCL(0.1, neg, **kw), a, t, chunk=64)
    z, lab = _rand(2, 3, 100, 16, seed=45), _labels(2, 3, 100, seed=46)
    _dense_vs_stream(lambda **kw: MVDCL(0.1, "batch", **kw), z, chunk=128)
    _dense_vs_stream(lambda **kw: SMVDCL(0.1, "image", **kw), z, lab, chunk=50)


def test_path_choice_by_set_size(monkeypatch):
    """On CPU a block of at most KEEP_BELOW elements takes the keeping path whatever its set size; else
    sets of more than ``stream_above`` pixels stream and smaller ones take the dense block, as they do
    under autocast (the GPU's bf16 path); ``stream_above=None`` is always dense."""
    keep_below = losses.KEEP_BELOW
    calls = []
    real = losses._StreamingLSE.apply
    monkeypatch.setattr(losses._StreamingLSE, "apply", lambda *a: calls.append((a[0].shape, a[3])) or real(*a))
    z, keys = _rand(2, 10, 4, seed=47).float(), torch.arange(5).repeat(2).expand(2, 10)
    multi_positive_nce(z, keys, None, 0.1, 5, stream_above=None)
    assert calls == []
    multi_positive_nce(z, keys, None, 0.1, 5, stream_above=10)
    assert calls == [((2, 10, 4), True)]  # keeping, though 10 <= stream_above
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        multi_positive_nce(z, keys, None, 0.1, 5, stream_above=10)
    assert calls == []
    monkeypatch.setattr(losses, "KEEP_BELOW", 0)
    multi_positive_nce(z, keys, None, 0.1, 5, stream_above=10)
    assert calls == []
    multi_positive_nce(z, keys, None, 0.1, 5, stream_above=9)
    assert calls == [((2, 10, 4), False)]  # streaming
    # the cpu profile's blocks are kept: SSDCL's batch set (1 x 4,096 pixels), the 4-view image sets (8 x 1,024)
    assert 4096 ** 2 <= keep_below and 8 * 1024 ** 2 <= keep_below
    assert SSDCL().stream_above == losses.STREAM_ABOVE and SSDCL().chunk_size == losses.CHUNK_SIZE


def test_streaming_keeps_no_square_block(monkeypatch):
    """Memory: on the streaming path (``KEEP_BELOW = 0``) no tensor the autograd graph keeps and no
    tensor any op creates (forward or backward) has more than ``chunk_size * M`` elements; the dense
    path keeps the ``M x M`` block; the keeping path keeps ``M / chunk_size`` chunks, none larger."""
    monkeypatch.setattr(losses, "KEEP_BELOW", 0)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    z, lab = torch.randn(2, 2, 100, 8), torch.randint(0, 3, (2, 2, 100))
    m, chunk = 400, 16
    for kw, limit in ((dict(stream_above=0, chunk_size=chunk), chunk * m), (dict(stream_above=None), m * m)):
        saved = []
        x = z.clone().requires_grad_(True)
        Largest.largest = 0
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t), \
                Largest():
            SSDCL(**kw)(x, lab).backward()
        assert max(saved) <= limit and Largest.largest <= limit
        assert (max(saved) == m * m) == (kw["stream_above"] is None)
    monkeypatch.setattr(losses, "KEEP_BELOW", m * m)  # keeping: the block, in chunks of chunk x M
    saved, Largest.largest = [], 0
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t), Largest():
        SSDCL(stream_above=0, chunk_size=chunk)(z.clone().requires_grad_(True), lab).backward()
    assert max(saved) == chunk * m and saved.count(chunk * m) == m // chunk and Largest.largest <= chunk * m


def test_streaming_under_autocast():
    """Under autocast (bfloat16 matmuls, on CPU here) the streaming path stays close to the dense
    one and returns float32, like it."""
    z, lab = torch.randn(2, 2, 60, 16), torch.randint(0, 3, (2, 2, 60))
    out = {}
    for path, kw in PATHS.items():
        x = z.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = SSDCL(**kw)(x, lab)
        loss.backward()
        assert loss.dtype == torch.float32 and x.grad.dtype == torch.float32
        out[path] = (loss.detach(), x.grad)
    torch.testing.assert_close(out["stream"][0], out["dense"][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out["stream"][1], out["dense"][1], rtol=5e-2, atol=1e-3)


def test_bad_chunking_raises():
    with pytest.raises(ValueError, match="chunk_size"):
        SSDCL(chunk_size=0)
    with pytest.raises(ValueError, match="stream_above"):
        MVDCL(stream_above=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        multi_positive_nce(_rand(1, 4, 3), torch.zeros(1, 4, dtype=torch.long), None, 0.1, 1, chunk_size=0)


# ----------------------------------------------------------------------------- second derivatives
def _loss_cases():
    """Each loss at tiny float64 sizes (temperature 0.5: a well-conditioned block for numerical checks)."""
    la, lt, lab = _labels(1, 2, 4, seed=70), _labels(1, 2, 4, seed=71), _labels(1, 2, 4, seed=72)
    return {
        "dense_ntxent": (lambda **kw: DenseNTXent(0.5, "batch", **kw), [_rand(2, 3, 3, seed=60), _rand(2, 3, 3, seed=61)], ()),
        "dvdcl": (lambda **kw: DVDCL(0.5, "image", **kw), [_rand(1, 2, 4, 3, seed=62), _rand(1, 2, 4, 3, seed=63)], ()),
        "mvdcl": (lambda **kw: MVDCL(0.5, "batch", **kw), [_rand(2, 2, 3, 3, seed=64)], ()),
        "sdvdcl": (lambda **kw: SDVDCL(0.5, "image", **kw), [_rand(1, 2, 4, 3, seed=65), _rand(1, 2, 4, 3, seed=66)],
                   (la, lt)),
        "smvdcl": (lambda **kw: SMVDCL(0.5, "image", **kw), [_rand(1, 2, 4, 3, seed=67)], (lab,)),
        "ssdcl": (lambda **kw: SSDCL(0.5, **kw), [_rand(1, 2, 4, 3, seed=68)], (lab,)),
    }


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(_loss_cases()))
def test_second_derivatives_gradgradcheck(name, path):
    """Every dense loss, on every path of the block's log-sum-exp, has exact second derivatives: the chunked
    Function's backward, when it must itself be differentiable (create_graph), takes the dense block."""
    make, inputs, extra = _loss_cases()[name]
    loss = make(**PATHS[path])
    xs = [x.clone().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradgradcheck(lambda *x: loss(*x, *extra), xs)


def test_simclr_gradgradcheck():
    xs = [_rand(4, 3, seed=73).requires_grad_(True), _rand(4, 3, seed=74).requires_grad_(True)]
    assert torch.autograd.gradgradcheck(lambda a, b: SimCLR(0.5)(a, b), xs)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("temperature", [0.5, 0.02])
def test_streaming_lse_second_derivative_with_a_constant_incoming_gradient(keep, temperature):
    """The case gradgradcheck missed before: the gradient of ``lse.sum()`` (a constant incoming gradient),
    taken with create_graph, differentiated again: the chunked Function (symmetric form at tau 0.5, per row
    at 0.02) gives the dense block's Hessian-vector product, not a silent zero."""
    z = F.normalize(_rand(2, 5, 3, seed=75), dim=-1)
    v = _rand(2, 5, 3, seed=76)

    def hvp(lse_fn):
        x = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(lse_fn(x).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return h

    def dense(x):
        sim = (x @ x.transpose(1, 2) / temperature).masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))
        return torch.logsumexp(sim, -1)

    want = hvp(dense)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(hvp(lambda x: losses._StreamingLSE.apply(x, temperature, 2, keep)), want, **TOL)
