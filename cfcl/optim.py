"""One optimiser step, shared by every training loop: pre-training, fine-tuning, the HVAE (its ELBO training and
counterfactual fine-tuning), the parent predictors and the benchmarks' steps."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch.profiler import record_function


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                   params: Iterable[torch.Tensor] | None = None, clip: float | None = None,
                   skip: float | None = None) -> tuple[float | None, bool]:
    """Update from ``loss``: zero the gradients of ``opt`` (one optimiser, or several stepped together),
    ``loss.backward()``, with ``clip`` clip the gradient norm of ``params`` to ``clip``
    (``torch.nn.utils.clip_grad_norm_``), then ``step()`` every optimiser in the order given.

    With ``skip`` (needs ``clip``) no optimiser steps when the norm before clipping is not finite or
    ``>= skip``, or the loss is not finite. Gradients are left in place (the caller may zero them).
    Backward and the update are labelled ``cfcl::backward`` and ``cfcl::optimiser`` for the profiler.

    Returns ``(grad_norm, stepped)``: the norm before clipping (None without ``clip``) and whether the
    optimisers stepped.
    """
    opts = [opt] if isinstance(opt, torch.optim.Optimizer) else list(opt)
    if (clip is not None or skip is not None) and params is None:
        raise ValueError("optimiser_step: clip and skip need the params whose gradient norm they read")
    if skip is not None and clip is None:
        raise ValueError("optimiser_step: skip needs clip (the gradient norm is measured while clipping)")
    for o in opts:
        o.zero_grad(set_to_none=True)
    with record_function("cfcl::backward"):
        loss.backward()
    with record_function("cfcl::optimiser"):
        grad_norm = None if clip is None else float(torch.nn.utils.clip_grad_norm_(params, clip))
        stepped = skip is None or (math.isfinite(grad_norm) and grad_norm < skip and bool(torch.isfinite(loss)))
        if stepped:
            for o in opts:
                o.step()
    return grad_norm, stepped
