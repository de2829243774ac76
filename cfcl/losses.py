"""Dense (pixel-level) contrastive losses (paper section 2.2) and their baselines.

All losses take raw embeddings, L2-normalise them, use cosine similarity / temperature and
share ONE core, :func:`multi_positive_nce`: a multi-positive NT-Xent in the SupCon "L_out"
form (Khosla et al. 2020), for an anchor ``i`` with positives ``P(i)`` in a contrast set ``A``:

    l_i = - 1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{j in A, j != i} exp(s_ij) )

With one positive per anchor this is SimCLR's NT-Xent. Positives are "same key, not self",
where the key is a location id (unsupervised: the same original point in another view) or a
silver label (supervised). The core needs one matmul per similarity block (the log-sum-exp of
each row, self excluded by setting the diagonal to -inf in place) plus per-key sums of the
embeddings (an ``index_add``): ``sum_{p in P(i)} s_ip = z_i . (sum_{key(p)=key(i)} z_p) / tau
- z_i . z_i / tau``, so no N x N positive mask is ever built.

Negatives scope (``negatives``): ``"image"`` (default for the paper's losses): the contrast set
of a pixel is the pixels of the same image's views in the same loss term; ``"batch"``: the
pixels of all images of the batch. Unsupervised positives always stay inside one image;
supervised positives (same label) extend to the whole contrast set.

Averaging (our choice where the paper is silent): mean over all valid anchors of a loss term
(over the batch, not per image first); an anchor without any positive (e.g. the only pixel of
its class) is excluded from the mean; a term without valid anchors contributes 0 with a zero
(never nan) gradient.

Memory: the dense block and the streaming path (issue 10). The positive part is linear in the
``M`` pixels of a contrast set (per-key sums); the denominator needs the log-sum-exp of each row
of the ``(M, M)`` similarity block, and ``"batch"`` multiplies ``M`` by the batch size: SSDCL at
the paper's batch (32 images x 2 views x 1,000 pixels) has M = 64,000, a 16 GB float32 block,
kept again for the backward. Three computations of the same row log-sum-exp, chosen by the size of
the set (``stream_above``, an argument of every loss and of :func:`multi_positive_nce`), of the
block (:data:`KEEP_BELOW`) and the device (:func:`_row_lse`):

- dense: one matmul for the ``(G, M, M)`` block, ``torch.logsumexp`` and autograd; memory
  ``O(G M^2)``. Taken with ``stream_above=None``, and off CPU (or under autocast, the GPU's bf16
  path) for sets of ``M <= stream_above`` pixels (default :data:`STREAM_ABOVE` = 1024).
- keeping: :class:`_StreamingLSE`, a custom autograd Function, computes the block in chunks of
  ``chunk_size`` rows (default :data:`CHUNK_SIZE` = 256) and keeps them for the backward, while the
  whole block of the G sets has at most :data:`KEEP_BELOW` elements (2^26, 256 MB in float32). On CPU
  it is taken for every such block, whatever ``stream_above``: every loss of the `cpu` profile (the
  image-scope sets of 512 or 1,024 pixels, SSDCL's batch set of 8 x 2 x 256 = 4,096).
- streaming: the same Function keeping only the normalised embeddings and the row log-sum-exp; the
  backward recomputes each chunk into one reused ``(G, chunk_size, M)`` buffer: memory
  ``O(G chunk_size M + M D)``, linear in the pixels for a fixed chunk (SSDCL at the paper's batch).

The Function's gradient w.r.t. the normalised ``z`` is ``(W + W^T) z`` with ``W = g[:, None] * P /
tau`` (``P`` the row softmax, self excluded; ``g`` the incoming gradient). Its symmetric form (the
default wherever the block's range allows, :data:`SYMMETRIC_SPAN`: always for unit embeddings at the
paper's tau = 0.1) shifts a whole set by one constant, so that ``E = exp(S - shift)`` is symmetric and
row ``r`` of the gradient is ``sum_j (b_r + b_j) E_rj z_j`` with ``b = g / (tau * rowsum(E))``: one
matmul per chunk in the backward instead of two, and no per-row maximum in the forward.

All three give the same value and gradient (``tests/test_losses.py``: every path against the
float64 loop references to 1e-5, ``gradcheck`` of the Function keeping and recomputing in both
forms, dense vs chunked at M = 2,000, D = 128, and no tensor larger than ``chunk_size x M`` is
created on the streaming path). On CPU (one thread, float32, forward + backward of the loss, D = 128,
B = 8, 256 pixels per view, the `cpu` profile's sizes; interleaved in one process) keeping in
the symmetric form against dense is 0.80 for DVD-CL (2 x 8 sets of 512 pixels) and 0.42 for MVD-CL and
S-MVD-CL (8 sets of 1,024), and against the per-row keeping form 0.74 for SSDCL (one set of 4,096)
(``benchmarks/results/losses.md`` has the measured ratios per loss). Another path changes the
round-off, hence the trained models: the `cpu` runs of ``figures/cpu`` were made with the dense
image-scope path and the per-row keeping form for SSDCL (commit 9a44dd3).

Streaming, measured on CPU, one thread, float32, forward + backward of SSDCL with batch negatives
(``OMP_NUM_THREADS=1 python benchmarks/bench_losses.py``, sections 4 and 5 of
``benchmarks/results/losses.md``; peak RSS of a fresh process per configuration, minus its RSS before
the loss call; a machine running two other jobs):

    images B (M = 2,000 B)         1     2      4      8     16     32
    dense loss memory (MB)        82   273  1,016  3,970  ~15,900  ~63,500 (not run: extrapolated)
    streaming, chunk 256 (MB)     23    32     56     88    144    332 (whole process: 876 MB)
    CPU time streaming / dense  0.95  1.07   0.54   0.50

At the paper's batch (B = 32) the streamed loss takes 89 s of one CPU thread. On the image-scope losses
(section 4, B = 2, 1,000 pixels per view) streaming / dense is 0.64-0.94 and keeping / dense 0.42-0.66.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "multi_positive_nce",
    "DenseNTXent",
    "VADeR",
    "DVDCL",
    "MVDCL",
    "SDVDCL",
    "SMVDCL",
    "SSDCL",
    "SimCLR",
    "NEGATIVE_SCOPES",
    "CHUNK_SIZE",
    "STREAM_ABOVE",
    "KEEP_BELOW",
    "SYMMETRIC_SPAN",
]

NEGATIVE_SCOPES = ("image", "batch")
CHUNK_SIZE = 256
"""Rows of the similarity block per chunk on the streaming path (default)."""
STREAM_ABOVE = 1024
"""Contrast sets of more pixels than this take the chunked path (default)."""
KEEP_BELOW = 2 ** 26
"""The chunked path keeps the row softmax (no recomputation in the backward) while the whole block of
the G sets has at most this many elements (2^26: 256 MB in float32); above, it recomputes (linear memory).
Read at each call: set ``cfcl.losses.KEEP_BELOW = 0`` for linear memory at every size."""


SYMMETRIC_SPAN = 60.0
"""The chunked path shifts a whole set by one constant (its largest ``|z|^2 / tau``) when every entry of the
block lies within this many units below it (``exp(-60)`` is far above float32's smallest normal number):
always for unit embeddings at ``tau >= 1/30``; otherwise it shifts each row by its own maximum."""


class _StreamingLSE(torch.autograd.Function):
    """Row log-sum-exp of ``zn @ zn^T / tau`` with the diagonal excluded, streamed in row chunks.

    ``forward(zn (G, M, D), temperature, chunk_size, keep) -> lse (G, M)``. Only ``(G, C, M)`` chunks of
    the similarity block (``C = chunk_size`` rows) exist, in the forward and in the backward, which
    recomputes each chunk into one reused buffer, or (``keep``) reuses the chunks the forward kept.

    The gradient, with ``P`` the row softmax (self excluded) and ``g`` the incoming gradient of ``lse``,
    is ``(W + W^T) @ zn`` with ``W = g[:, None] * P / tau``. Two forms of it:

    - symmetric (the default, whenever the block's range allows, :data:`SYMMETRIC_SPAN`): one shift ``s``
      per set makes ``E = exp(S - s)`` (diagonal 0) a symmetric block with row sums ``R``, ``P = E / R``,
      so with ``b = g / (tau R)`` the gradient is ``b * (E @ zn) + E @ (b * zn)``, i.e. row ``r`` of it is
      ``sum_j (b_r + b_j) E_rj zn_j``: per row chunk one scaling of ``E_r`` and one matmul with ``zn``
      (half the backward's products, no transposed product, no per-row maximum);
    - per row (wide ranges, or under autocast): each row shifted by its own maximum; rows ``r`` give
      ``grad[r] += W_r @ zn`` and ``grad += W_r^T @ zn[r]``.

    Both forms compute the gradient in place, outside autograd. A backward that must itself be
    differentiable (``create_graph=True``: grad mode is on in the backward) takes the dense block in
    differentiable operations instead (:meth:`_dense_grad`), so second derivatives are exact, at the dense
    path's memory.
    """

    @staticmethod
    def _chunk(zn: Tensor, r0: int, r1: int, temperature: float, buf: Tensor) -> Tensor:
        """Rows ``r0:r1`` of the block, self at -inf, written into the reused buffer ``buf``
        (a fresh allocation per chunk costs page faults once it exceeds malloc's mmap
        threshold). Under autocast the matmul runs as autocast decides, as on the dense path."""
        g, m, _ = zn.shape
        rows = zn[:, r0:r1] / temperature
        if torch.is_autocast_enabled(zn.device.type):
            sim = torch.matmul(rows, zn.transpose(1, 2)).to(zn.dtype)  # out= would bypass autocast
        else:  # a contiguous (G, r1 - r0, M) view of the buffer (the last chunk may be shorter)
            out = buf.view(-1)[:g * (r1 - r0) * m].view(g, r1 - r0, m)
            sim = torch.matmul(rows, zn.transpose(1, 2), out=out)
        sim.diagonal(offset=r0, dim1=1, dim2=2).fill_(float("-inf"))  # (k, r0 + k) is self
        return sim

    @staticmethod
    def _exp_chunk(zn: Tensor, r0: int, r1: int, temperature: float, shift: Tensor, buf: Tensor) -> Tensor:
        """Rows ``r0:r1`` of ``E = exp(S - shift)`` with self at 0 (symmetric form), into ``buf``."""
        return _StreamingLSE._chunk(zn, r0, r1, temperature, buf).sub_(shift[:, None, None]).exp_()

    @staticmethod
    def forward(ctx, zn: Tensor, temperature: float, chunk_size: int, keep: bool = False) -> Tensor:
        g, m, _ = zn.shape
        c = min(chunk_size, m)
        lse, buf = zn.new_empty(g, m), zn.new_empty(g, c, m)
        autocast = torch.is_autocast_enabled(zn.device.type)
        keep = keep and not autocast
        shift = None
        if not autocast:  # every entry of S - shift lies in [-2 max|z|^2 / tau, 0]
            sq = zn.detach().square().sum(-1).amax(-1)  # (G,)
            if float(sq.max()) * 2 / temperature <= SYMMETRIC_SPAN:
                shift = sq / temperature
        kept = []  # keep: E (symmetric form) or P (per row), one (G, C, M) tensor per chunk
        for r0 in range(0, m, c):
            r1 = min(r0 + c, m)
            out = zn.new_empty(g, r1 - r0, m) if keep else buf
            if shift is not None:
                e = _StreamingLSE._exp_chunk(zn, r0, r1, temperature, shift, out)
                lse[:, r0:r1] = e.sum(-1).log_().add_(shift[:, None])
                if keep:
                    kept.append(e)
                continue
            sim = _StreamingLSE._chunk(zn, r0, r1, temperature, out)
            top = sim.amax(-1, keepdim=True)  # finite: a row has M - 1 >= 1 finite entries
            total = sim.sub_(top).exp_().sum(-1, keepdim=True)  # in place: exp(S - max)
            lse[:, r0:r1] = total.log().squeeze(-1) + top.squeeze(-1)
            if keep:
                kept.append(sim.div_(total))  # P of these rows, kept for the backward (still in cache)
        ctx.save_for_backward(zn, lse, *([] if shift is None else [shift]), *kept)
        ctx.temperature, ctx.chunk_size, ctx.symmetric = temperature, c, shift is not None
        return lse

    @staticmethod
    def backward(ctx, grad_lse: Tensor):
        if torch.is_grad_enabled():  # create_graph: a gradient that is itself differentiable
            zn = ctx.saved_tensors[0]
            return _StreamingLSE._dense_grad(zn, grad_lse, ctx.temperature), None, None, None
        return _StreamingLSE._chunked_grad(ctx, grad_lse)

    @staticmethod
    def _dense_grad(zn: Tensor, grad_lse: Tensor, tau: float) -> Tensor:
        """The gradient ``(W + W^T) zn``, ``W = g[:, None] * P / tau``, from the dense ``(G, M, M)`` block
        in differentiable operations: the path of second derivatives (memory ``O(G M^2)``, as dense)."""
        m = zn.shape[1]
        sim = torch.matmul(zn / tau, zn.transpose(1, 2))
        sim = sim.masked_fill(torch.eye(m, dtype=torch.bool, device=zn.device), float("-inf"))
        w = grad_lse.to(sim.dtype)[..., None] * sim.softmax(-1) / tau
        return torch.matmul(w + w.transpose(1, 2), zn).to(zn.dtype)

    @staticmethod
    def _chunked_grad(ctx, grad_lse: Tensor) -> tuple:
        zn, lse, *rest = ctx.saved_tensors
        tau, c = ctx.temperature, ctx.chunk_size
        g, m, d = zn.shape
        buf = zn.new_empty(g, c, m)
        if ctx.symmetric:
            shift, *kept = rest
            b = grad_lse.to(zn.dtype) / (tau * (lse - shift[:, None]).exp())  # g / (tau R), R = exp(lse - s)
            grad, scaled = torch.empty_like(zn), zn.new_empty(g, c, m)
            for r0 in range(0, m, c):
                r1 = min(r0 + c, m)
                e = kept[r0 // c] if kept else _StreamingLSE._exp_chunk(zn, r0, r1, tau, shift, buf)
                f = scaled.view(-1)[:g * (r1 - r0) * m].view(g, r1 - r0, m)
                torch.add(b[:, r0:r1, None], b[:, None, :], out=f).mul_(e)  # (b_r + b_j) E_rj
                torch.bmm(f, zn, out=grad[:, r0:r1])
            return grad, None, None, None
        kept = rest
        grad = torch.zeros_like(zn)
        w_row = grad_lse.to(zn.dtype) / tau  # (G, M)
        for r0 in range(0, m, c):
            r1 = min(r0 + c, m)
            if kept:  # W_r = g * P / tau from the kept P (which stays intact: a second backward reads it)
                w = torch.mul(kept[r0 // c], w_row[:, r0:r1, None],
                              out=buf.view(-1)[:g * (r1 - r0) * m].view(g, r1 - r0, m))
            else:  # recompute the chunk: W_r = g * P / tau
                w = _StreamingLSE._chunk(zn, r0, r1, tau, buf)
                w.sub_(lse[:, r0:r1, None]).exp_().mul_(w_row[:, r0:r1, None])
            grad[:, r0:r1].baddbmm_(w, zn)  # the chunk's rows as anchors
            grad.baddbmm_(w.transpose(1, 2), zn[:, r0:r1])  # ... and in the others' denominators
        return grad, None, None, None


def _row_lse(z: Tensor, temperature: float, chunk_size: int, stream_above: int | None) -> Tensor:
    """Row log-sum-exp (self excluded) of the similarity block of normalised ``z (G, M, D)``: with
    ``stream_above`` None the dense ``(G, M, M)`` block; else on CPU (no autocast) every block of at most
    :data:`KEEP_BELOW` elements takes the keeping path (faster than dense at every size measured); otherwise
    one dense matmul when ``M <= stream_above``, and :class:`_StreamingLSE` in chunks of ``chunk_size`` rows
    above (keeping while the block is small enough, else recomputing)."""
    g, m, _ = z.shape
    small = g * m * m <= KEEP_BELOW
    keep_on_cpu = small and z.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
    if stream_above is None or (m <= stream_above and not keep_on_cpu):
        sim = torch.matmul(z / temperature, z.transpose(1, 2))  # (G, M, M): the one matmul
        if sim.dtype != z.dtype:
            sim = sim.to(z.dtype)  # autocast may have run the matmul in half precision
        sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # self is not in the denominator
        return torch.logsumexp(sim, dim=-1)  # (G, M), stable
    return _StreamingLSE.apply(z, temperature, chunk_size, small)


def _check_chunking(chunk_size: int, stream_above: int | None) -> tuple[int, int | None]:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if stream_above is not None and int(stream_above) < 0:
        raise ValueError(f"stream_above must be >= 0 or None, got {stream_above}")
    return int(chunk_size), None if stream_above is None else int(stream_above)


def multi_positive_nce(z: Tensor, keys: Tensor, anchors: Tensor | None, temperature: float,
                       num_keys: int, chunk_size: int = CHUNK_SIZE,
                       stream_above: int | None = STREAM_ABOVE) -> tuple[Tensor, Tensor]:
    """The shared core: multi-positive NT-Xent inside G independent contrast sets.

    ``z (G, M, D)``: G contrast sets of M raw embeddings (normalised here); ``keys (G, M)`` long
    in ``[0, num_keys)``: the positives of pixel ``i`` are the other pixels of its set with its
    key; ``anchors (G, M)`` bool, or None for all pixels. Returns ``(loss_sum (G,), count (G,))``:
    per set, the sum of ``l_i`` over valid anchors (anchor with at least one positive) and their
    number (float). Invalid anchors contribute an exact 0 with a zero gradient. Half-precision
    inputs are computed in float32. Deterministic on GPU under
    ``torch.use_deterministic_algorithms(True)`` (``index_add`` has a deterministic path).

    Memory: sets of ``M <= stream_above`` pixels (or all, with ``stream_above=None``) build their
    dense ``(G, M, M)`` similarity block; larger sets stream it in chunks of ``chunk_size`` rows
    (``(G, chunk_size, M)`` at a time, forward and backward), so memory grows linearly in ``M``.
    Both paths give the same value and gradient (module docstring).
    """
    if z.ndim != 3 or keys.shape != z.shape[:2]:
        raise ValueError(f"multi_positive_nce: z must be (G, M, D) and keys (G, M); got "
                         f"{tuple(z.shape)}, {tuple(keys.shape)}")
    if anchors is not None and anchors.shape != keys.shape:
        raise ValueError(f"multi_positive_nce: anchors must be (G, M) like keys, got {tuple(anchors.shape)}")
    chunk_size, stream_above = _check_chunking(chunk_size, stream_above)
    g, m, d = z.shape
    if m < 2:
        raise ValueError(f"multi_positive_nce: a contrast set needs >= 2 pixels, got {m}")
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # half-precision inputs (autocast): keep the log-sum-exp and sums in float32
    z = F.normalize(z, dim=-1)
    lse = _row_lse(z, temperature, chunk_size, stream_above)  # (G, M)

    flat = (keys.long() + num_keys * torch.arange(g, device=keys.device)[:, None]).reshape(-1)
    key_sum = z.new_zeros(g * num_keys, d).index_add(0, flat, z.reshape(g * m, d))  # (G*K, D)
    npos = torch.bincount(flat, minlength=g * num_keys).to(z.dtype)[flat].view(g, m) - 1
    pos_sim_sum = ((z * key_sum[flat].view(g, m, d)).sum(-1) - (z * z).sum(-1)) / temperature
    valid = npos > 0
    if anchors is not None:
        valid = valid & anchors
    per_anchor = lse - pos_sim_sum / npos.clamp(min=1)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum(1), valid.sum(1).to(z.dtype)


def _check_scope(negatives: str) -> str:
    if negatives not in NEGATIVE_SCOPES:
        raise ValueError(f"negatives must be one of {NEGATIVE_SCOPES}, got {negatives!r}")
    return negatives


def _check_labels(name: str, labels: Tensor, num_classes: int) -> Tensor:
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def _terms(z: Tensor, keys: Tensor, anchors: Tensor | None, negatives: str, temperature: float,
           num_keys: int, per_image_keys: bool, chunk_size: int = CHUNK_SIZE,
           stream_above: int | None = STREAM_ABOVE) -> Tensor:
    """Mean loss of P independent terms given ``z (B, P, M, D)`` (B images, M pixels of one image
    in one term), ``keys``/``anchors (B, P, M)``.

    Scope ``"image"``: one contrast set per (image, term); ``"batch"``: one per term with the
    pixels of all images. ``per_image_keys`` (location ids) keeps positives inside one image in
    the batch scope. Each term is the mean over its valid anchors; the loss is the mean over
    the terms that have any (0, with zero gradient, when none has). ``chunk_size`` and
    ``stream_above``: see :func:`multi_positive_nce`."""
    b, p, m, d = z.shape
    chunking = dict(chunk_size=chunk_size, stream_above=stream_above)
    if negatives == "image":
        a = None if anchors is None else anchors.reshape(b * p, m)
        s, c = multi_positive_nce(z.reshape(b * p, m, d), keys.reshape(b * p, m), a, temperature, num_keys,
                                  **chunking)
        s, c = s.view(b, p).sum(0), c.view(b, p).sum(0)
    else:
        if per_image_keys:
            keys = keys + num_keys * torch.arange(b, device=keys.device)[:, None, None]
            num_keys = num_keys * b
        a = None if anchors is None else anchors.transpose(0, 1).reshape(p, b * m)
        s, c = multi_positive_nce(z.transpose(0, 1).reshape(p, b * m, d),
                                  keys.transpose(0, 1).reshape(p, b * m), a, temperature, num_keys, **chunking)
    has = (c > 0).to(s.dtype)
    return (s / c.clamp(min=1) * has).sum() / has.sum().clamp(min=1)


def _location_keys(n: int, views: int, device: torch.device) -> Tensor:
    """Location id of each pixel when ``views`` views of ``n`` points are concatenated: (views*n,)."""
    return torch.arange(n, device=device).repeat(views)


def _dual_view(anchor: Tensor, targets: Tensor, negatives: str, temperature: float, **chunking) -> Tensor:
    """Mean over pairs ``t`` of the two-direction dense NT-Xent of ``anchor[:, t]``/``targets[:, t]``
    (both ``(B, T, N, D)``, rows matching)."""
    b, t, n, _ = anchor.shape
    z = torch.cat([anchor, targets], dim=2)  # (B, T, 2N, D)
    keys = _location_keys(n, 2, z.device).expand(b, t, 2 * n)
    return _terms(z, keys, None, negatives, temperature, n, per_image_keys=True, **chunking)


class _Dense(nn.Module):
    """Common arguments of the dense losses: ``temperature``, ``negatives`` (``"image"`` or
    ``"batch"``) and the memory knobs of :func:`multi_positive_nce`: ``stream_above`` (contrast
    sets of more pixels than this stream their similarity block in chunks of ``chunk_size``
    rows; None: never) -- they change memory and speed, never the value or the gradient."""

    def __init__(self, temperature: float = 0.1, negatives: str = "image", *, chunk_size: int = CHUNK_SIZE,
                 stream_above: int | None = STREAM_ABOVE) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.negatives = _check_scope(negatives)
        self.chunk_size, self.stream_above = _check_chunking(chunk_size, stream_above)

    @property
    def _chunking(self) -> dict:
        return dict(chunk_size=self.chunk_size, stream_above=self.stream_above)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, negatives={self.negatives!r}, chunk_size={self.chunk_size}, "
                f"stream_above={self.stream_above}")


class DenseNTXent(_Dense):
    """Dense NT-Xent between two views (VADeR, Pinheiro et al. 2020; paper section 2.2).

    ``forward(a (B, N, D), b (B, N, D)) -> scalar``: row ``i`` of ``a`` and ``b`` is the same
    original location. Positive of ``a_i``: ``b_i`` (and vice versa); negatives: every other
    pixel of both views (``2N - 2``, or all pixels of the batch with ``negatives="batch"``).
    Averaged over both directions (every pixel of ``a`` then of ``b`` as anchor). Symmetric in
    ``(a, b)``. Temperature 0.1 (REFERENCES section 5).
    """

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.ndim != 3 or a.shape != b.shape:
            raise ValueError(f"{type(self).__name__}: a and b must both be (B, N, D), got "
                             f"{tuple(a.shape)}, {tuple(b.shape)}")
        return _dual_view(a[:, None], b[:, None], self.negatives, self.temperature, **self._chunking)  # one pair


VADeR = DenseNTXent
"""The VADeR baseline: :class:`DenseNTXent` on two ordinarily augmented views."""


class DVDCL(_Dense):
    """Dual-View Dense Contrastive Learning (paper section 2.2, DVD-CL).

    ``forward(anchor (B, T, N, D), targets (B, T, N, D)) -> scalar``: for each target view
    ``t``, ``anchor[:, t]`` are the anchor (non-counterfactual) view's features gathered at the N
    points sampled in the anchor/target-``t`` overlap and ``targets[:, t]`` the target's features
    at the same points (row by row). Loss: mean over ``t`` of the two-direction
    :class:`DenseNTXent` of the pair.
    """

    def forward(self, anchor: Tensor, targets: Tensor) -> Tensor:
        if anchor.ndim != 4 or anchor.shape != targets.shape:
            raise ValueError(f"{type(self).__name__}: anchor and targets must both be (B, T, N, D), got "
                             f"{tuple(anchor.shape)}, {tuple(targets.shape)}")
        return _dual_view(anchor, targets, self.negatives, self.temperature, **self._chunking)


class MVDCL(_Dense):
    """Multi-View Dense Contrastive Learning (paper section 2.2, MVD-CL).

    ``forward(z (B, V, N, D)) -> scalar``: all V views at the same N original points (sampled in
    the overlap of all views). Positives of pixel ``(v, i)``: ``(w, i)`` for every ``w != v``;
    one loss over all pixel similarities of all views at once. The paper gives no formula for
    several positives; we use the multi-positive NT-Xent / SupCon "L_out" form: mean over the
    ``V-1`` positives of ``-log softmax``, the denominator running over all other ``V*N - 1``
    pixels. With ``V = 2`` it equals :class:`DenseNTXent`.
    """

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}: z must be (B, V, N, D) with V >= 2, got {tuple(z.shape)}")
        b, v, n, d = z.shape
        keys = _location_keys(n, v, z.device).expand(b, 1, v * n)
        return _terms(z.reshape(b, 1, v * n, d), keys, None, self.negatives, self.temperature, n,
                      per_image_keys=True, **self._chunking)


class _Supervised(_Dense):
    def __init__(self, temperature: float = 0.1, negatives: str = "image", num_classes: int = 3,
                 background: int | None = 0, *, chunk_size: int = CHUNK_SIZE,
                 stream_above: int | None = STREAM_ABOVE) -> None:
        super().__init__(temperature, negatives, chunk_size=chunk_size, stream_above=stream_above)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.background = background

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_classes={self.num_classes}, background={self.background}"

    def _anchors(self, labels: Tensor) -> Tensor | None:
        return None if self.background is None else labels != self.background


class SDVDCL(_Supervised):
    """Supervised DVD-CL (paper section 2.2, S-DVD-CL).

    ``forward(anchor (B, T, N, D), targets (B, T, N, D), labels_anchor (B, T, N),
    labels_target (B, T, N)) -> scalar``. For each (anchor, target ``t``) pair: the contrast set
    is the 2N pixels of both views; positives of a pixel are all other pixels with the same
    silver label (0 background, 1 right lung, 2 left lung); only non-background pixels
    (``label != background``; ``background=None``: all) are anchors; SupCon "L_out" form.
    Mean over the valid anchors of a pair, then over the pairs that have any. With
    ``negatives="batch"`` the contrast set (and the same-label positives) spans the batch.
    """

    def forward(self, anchor: Tensor, targets: Tensor, labels_anchor: Tensor, labels_target: Tensor) -> Tensor:
        name = type(self).__name__
        if anchor.ndim != 4 or anchor.shape != targets.shape:
            raise ValueError(f"{name}: anchor and targets must both be (B, T, N, D), got "
                             f"{tuple(anchor.shape)}, {tuple(targets.shape)}")
        if labels_anchor.shape != anchor.shape[:3] or labels_target.shape != anchor.shape[:3]:
            raise ValueError(f"{name}: labels must be (B, T, N) = {tuple(anchor.shape[:3])}, got "
                             f"{tuple(labels_anchor.shape)}, {tuple(labels_target.shape)}")
        z = torch.cat([anchor, targets], dim=2)
        keys = _check_labels(name, torch.cat([labels_anchor, labels_target], dim=2), self.num_classes)
        return _terms(z, keys, self._anchors(keys), self.negatives, self.temperature, self.num_classes,
                      per_image_keys=False, **self._chunking)


class SMVDCL(_Supervised):
    """Supervised MVD-CL (paper section 2.2, S-MVD-CL).

    ``forward(z (B, V, N, D), labels (B, V, N)) -> scalar``: the supervised loss of
    :class:`SDVDCL` over the pixels of all V views at once (one contrast set of ``V*N`` pixels
    per image, or of the whole batch with ``negatives="batch"``); mean over non-background
    anchors that have a positive.
    """

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        name = type(self).__name__
        if z.ndim != 4 or labels.shape != z.shape[:3]:
            raise ValueError(f"{name}: z must be (B, V, N, D) and labels (B, V, N), got "
                             f"{tuple(z.shape)}, {tuple(labels.shape)}")
        b, v, n, d = z.shape
        keys = _check_labels(name, labels, self.num_classes).reshape(b, 1, v * n)
        return _terms(z.reshape(b, 1, v * n, d), keys, self._anchors(keys), self.negatives,
                      self.temperature, self.num_classes, per_image_keys=False, **self._chunking)


class SSDCL(SMVDCL):
    """SSDCL baseline (Hu et al., MICCAI 2021; REFERENCES section 5): supervised pixel SupCon over
    (usually two) ordinarily augmented views. ``forward(z (B, V, N, D), labels (B, V, N))``;
    positives same label (self excluded), mean over non-background anchors, tau 0.1, negatives
    over the whole batch by default (as in Hu et al.). Same computation as :class:`SMVDCL`.
    """

    def __init__(self, temperature: float = 0.1, negatives: str = "batch", num_classes: int = 3,
                 background: int | None = 0, *, chunk_size: int = CHUNK_SIZE,
                 stream_above: int | None = STREAM_ABOVE) -> None:
        super().__init__(temperature, negatives, num_classes, background, chunk_size=chunk_size,
                         stream_above=stream_above)


class SimCLR(nn.Module):
    """Global NT-Xent (SimCLR, Chen et al. 2020): ``forward(z1 (B, D), z2 (B, D)) -> scalar``;
    positive of ``z1[k]`` is ``z2[k]``, negatives are the other ``2B - 2`` embeddings; mean over
    the ``2B`` anchors."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"SimCLR: z1 and z2 must both be (B, D), got {tuple(z1.shape)}, {tuple(z2.shape)}")
        n = z1.shape[0]
        z = torch.cat([z1, z2], dim=0)[None]
        s, c = multi_positive_nce(z, _location_keys(n, 2, z.device)[None], None, self.temperature, n)
        return s.sum() / c.sum().clamp(min=1)
