"""Slow, obviously-correct references for cfcl.losses (used by tests and the benchmark).

``loop_*``: Python loops over anchors, positives and denominator terms, written straight from
the definitions (paper section 2.2; SupCon "L_out" for several positives):

    l_i = mean_{p in P(i)} -log( exp(s_ip) / sum_{j in set, j != i} exp(s_ij) ),  s = cos / tau

Every pixel is an item ``(vector, meta)``; a loss term is a list of items; a contrast set is
the items of one image (``negatives="image"``) or all items of the term (``"batch"``).
A term's value is the mean of ``l_i`` over valid anchors (anchor with >= 1 positive); the loss
is the mean over the terms that have valid anchors (0 if none).

``masked_*``: the naive vectorised versions (dense boolean M x M masks), the usual way such
losses are written; the benchmark compares against them at realistic sizes.
"""
from __future__ import annotations

import torch


# ----------------------------------------------------------------------------- loops
def _loop_set(items, is_pos, is_anchor, tau: float):
    z = [v / torch.sqrt(torch.dot(v, v)) for v, _ in items]
    meta = [m for _, m in items]
    total, count = 0.0, 0
    for i in range(len(z)):
        if not is_anchor(meta[i]):
            continue
        positives = [j for j in range(len(z)) if j != i and is_pos(meta[i], meta[j])]
        if not positives:
            continue
        denom = 0.0
        for j in range(len(z)):
            if j != i:
                denom = denom + torch.exp(torch.dot(z[i], z[j]) / tau)
        li = 0.0
        for p in positives:
            li = li - torch.log(torch.exp(torch.dot(z[i], z[p]) / tau) / denom)
        total = total + li / len(positives)
        count += 1
    return total, count


def _loop_term(items, is_pos, is_anchor, tau, negatives):
    if negatives == "image":
        images = sorted({m["image"] for _, m in items})
        sets = [[it for it in items if it[1]["image"] == b] for b in images]
    elif negatives == "batch":
        sets = [items]
    else:
        raise ValueError(negatives)
    total, count = 0.0, 0
    for s in sets:
        t, c = _loop_set(s, is_pos, is_anchor, tau)
        total, count = total + t, count + c
    return total, count


def _mean_of_terms(results):
    vals = [t / c for t, c in results if c > 0]
    if not vals:
        return torch.zeros((), dtype=torch.float64)
    return sum(vals) / len(vals)


def _same_location(m1, m2):
    return m1["image"] == m2["image"] and m1["point"] == m2["point"] and m1["view"] != m2["view"]


def _same_label(m1, m2):
    return m1["label"] == m2["label"]


def _all(m):
    return True


def _not_background(bg):
    return _all if bg is None else (lambda m: m["label"] != bg)


def _items(z, labels=None):
    """Items of a (B, V, N, D) tensor; meta: image, view, point (and label)."""
    out = []
    bsz, nv, n, _ = z.shape
    for b in range(bsz):
        for v in range(nv):
            for i in range(n):
                meta = {"image": b, "view": v, "point": i}
                if labels is not None:
                    meta["label"] = int(labels[b, v, i])
                out.append((z[b, v, i], meta))
    return out


def loop_dense_ntxent(a, b, tau=0.1, negatives="image"):
    """a, b (B, N, D): positive = same point in the other view; all other pixels are negatives."""
    items = _items(torch.stack([a, b], dim=1))
    return _mean_of_terms([_loop_term(items, _same_location, _all, tau, negatives)])


def loop_dvdcl(anchor, targets, tau=0.1, negatives="image"):
    """anchor, targets (B, T, N, D): one two-view term per target view, averaged."""
    terms = []
    for t in range(anchor.shape[1]):
        items = _items(torch.stack([anchor[:, t], targets[:, t]], dim=1))
        terms.append(_loop_term(items, _same_location, _all, tau, negatives))
    return _mean_of_terms(terms)


def loop_mvdcl(z, tau=0.1, negatives="image"):
    """z (B, V, N, D): positives = same point in every other view."""
    return _mean_of_terms([_loop_term(_items(z), _same_location, _all, tau, negatives)])


def loop_sdvdcl(anchor, targets, labels_anchor, labels_target, tau=0.1, negatives="image", background=0):
    terms = []
    for t in range(anchor.shape[1]):
        z = torch.stack([anchor[:, t], targets[:, t]], dim=1)
        lab = torch.stack([labels_anchor[:, t], labels_target[:, t]], dim=1)
        terms.append(_loop_term(_items(z, lab), _same_label, _not_background(background), tau, negatives))
    return _mean_of_terms(terms)


def loop_smvdcl(z, labels, tau=0.1, negatives="image", background=0):
    return _mean_of_terms([_loop_term(_items(z, labels), _same_label, _not_background(background), tau,
                                      negatives)])


def loop_simclr(z1, z2, tau=0.1):
    """Global NT-Xent: items are images; positive of z1[k] is z2[k]."""
    items = [(z1[k], {"image": 0, "view": 0, "point": k}) for k in range(len(z1))]
    items += [(z2[k], {"image": 0, "view": 1, "point": k}) for k in range(len(z2))]
    return _mean_of_terms([_loop_term(items, _same_location, _all, tau, "batch")])


# ----------------------------------------------------------------------------- naive masked
def _masked_set(z, pos, anchors, tau):
    """One contrast set: z (M, D), pos (M, M) bool, anchors (M,) bool -> (sum, count)."""
    z = torch.nn.functional.normalize(z, dim=-1)
    sim = z @ z.T / tau
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = pos & ~eye
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=-1, keepdim=True)
    npos = pos.sum(-1)
    valid = anchors & (npos > 0)
    li = -(logp.masked_fill(~pos, 0.0)).sum(-1) / npos.clamp(min=1)
    return li[valid].sum(), valid.sum().to(z.dtype)


def _masked_terms(z, keys, anchors, tau, negatives, same_image):
    """z (B, P, M, D), keys/anchors (B, P, M); same_image keeps positives inside one image."""
    bsz, p, m, _ = z.shape
    sums, counts = [], []
    for t in range(p):
        if negatives == "image":
            parts = [_masked_set(z[b, t], keys[b, t][:, None] == keys[b, t][None], anchors[b, t], tau)
                     for b in range(bsz)]
            sums.append(sum(s for s, _ in parts))
            counts.append(sum(c for _, c in parts))
        else:
            zz, kk, aa = z[:, t].reshape(bsz * m, -1), keys[:, t].reshape(-1), anchors[:, t].reshape(-1)
            pos = kk[:, None] == kk[None]
            if same_image:
                img = torch.arange(bsz, device=z.device).repeat_interleave(m)
                pos = pos & (img[:, None] == img[None])
            s, c = _masked_set(zz, pos, aa, tau)
            sums.append(s)
            counts.append(c)
    vals = [s / c for s, c in zip(sums, counts) if c > 0]
    return sum(vals) / len(vals) if vals else z.sum() * 0


def masked_dvdcl(anchor, targets, tau=0.1, negatives="image"):
    bsz, t, n, _ = anchor.shape
    z = torch.cat([anchor, targets], dim=2)
    keys = torch.arange(n).repeat(2).expand(bsz, t, 2 * n)
    return _masked_terms(z, keys, torch.ones_like(keys, dtype=torch.bool), tau, negatives, True)


def masked_mvdcl(z, tau=0.1, negatives="image"):
    bsz, v, n, d = z.shape
    keys = torch.arange(n).repeat(v).expand(bsz, 1, v * n)
    return _masked_terms(z.reshape(bsz, 1, v * n, d), keys, torch.ones_like(keys, dtype=torch.bool), tau,
                         negatives, True)


def masked_sdvdcl(anchor, targets, labels_anchor, labels_target, tau=0.1, negatives="image"):
    z = torch.cat([anchor, targets], dim=2)
    keys = torch.cat([labels_anchor, labels_target], dim=2)
    return _masked_terms(z, keys, keys != 0, tau, negatives, False)


def masked_smvdcl(z, labels, tau=0.1, negatives="image"):
    bsz, v, n, d = z.shape
    keys = labels.reshape(bsz, 1, v * n)
    return _masked_terms(z.reshape(bsz, 1, v * n, d), keys, keys != 0, tau, negatives, False)
