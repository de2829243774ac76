"""Parents and images as the models see them: encodings and interventions.

The causal parents of a chest radiograph are ``(sex, scanner, effusion)``, all binary
(:data:`cfcl.config.PARENTS`); an intervention of paper section 2.1 flips one or two of them
(:data:`cfcl.config.INTERVENTIONS`). Models read images in ``[-1, 1]`` and parents as float
vectors in ``{0, 1}``. Used by the HVAE, the parent predictors, counterfactual generation and the
figures, so none of them imports another to encode a batch.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, PARENTS

NULL = "none"  # the null intervention: nothing changes
#: Every (sex, scanner, effusion) setting, ``(8, 3)`` float, sex slowest (for sample grids).
PARENT_SETTINGS = torch.tensor([[s, c, e] for s in (0, 1) for c in (0, 1) for e in (0, 1)], dtype=torch.float32)


def parents_tensor(parents: pd.DataFrame) -> torch.Tensor:
    """``(N, 3)`` float tensor of ``(sex, scanner, effusion)`` in ``{0, 1}`` from a parents frame."""
    missing = [p for p in PARENTS if p not in parents.columns]
    if missing:
        raise KeyError(f"parents DataFrame lacks column(s) {missing}; expected {PARENTS}")
    values = parents[list(PARENTS)].to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"parents {PARENTS} must be 0/1 integers")
    return torch.as_tensor(values.astype(np.float32))


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` 0..255 -> float ``(N, 1, H, W)`` in ``[-1, 1]``."""
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8 0..255, got {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 1, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W)`` (round to the nearest bin)."""
    y = torch.round((x.detach().clamp(-1, 1) + 1.0) * 127.5)
    return y.squeeze(1).to(torch.uint8).cpu().numpy()


def intervene(parents: pd.DataFrame | torch.Tensor, intervention: str) -> pd.DataFrame | torch.Tensor:
    """Counterfactual parents: the parent(s) named by ``intervention`` (one of
    ``config.INTERVENTIONS``) flipped; ``"none"`` returns an unchanged copy.

    Works on a parents frame (columns sex, scanner, effusion) and on an ``(N, 3)`` tensor in
    ``PARENTS`` order alike."""
    out = parents.clone() if isinstance(parents, torch.Tensor) else parents.copy()
    if intervention == NULL:
        return out
    if intervention not in INTERVENED_PARENTS:
        raise KeyError(f"unknown intervention {intervention!r}; choose one of {INTERVENTIONS} or {NULL!r}")
    for name in INTERVENED_PARENTS[intervention]:
        if isinstance(out, torch.Tensor):
            j = PARENTS.index(name)
            out[:, j] = 1.0 - out[:, j]
        else:
            out[name] = 1 - out[name].astype(np.int64)
    return out


def oversampled_batches(effusion: np.ndarray, batch_size: int, fraction: float,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for one epoch with ``round(fraction * batch_size)`` effusion images each.

    ``ceil(N / batch_size)`` batches; each group (effusion / not) is drawn by walking through
    fresh permutations of itself, so every image is used as evenly as the quota allows. With
    ``fraction <= 0`` or a split holding a single class, a plain shuffle.
    """
    effusion = np.asarray(effusion).astype(bool)
    n = len(effusion)
    n_batches = math.ceil(n / batch_size)
    pos, neg = np.flatnonzero(effusion), np.flatnonzero(~effusion)
    if fraction <= 0 or len(pos) == 0 or len(neg) == 0:
        perm = rng.permutation(n)
        return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    k_pos = min(batch_size - 1, max(1, round(fraction * batch_size)))
    k_neg = batch_size - k_pos

    def stream(idx: np.ndarray, total: int) -> np.ndarray:
        reps = math.ceil(total / len(idx))
        return np.concatenate([rng.permutation(idx) for _ in range(reps)])[:total]

    p, q = stream(pos, n_batches * k_pos), stream(neg, n_batches * k_neg)
    batches = [np.concatenate([p[i * k_pos:(i + 1) * k_pos], q[i * k_neg:(i + 1) * k_neg]]) for i in range(n_batches)]
    return [rng.permutation(b) for b in batches]
