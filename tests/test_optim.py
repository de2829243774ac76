"""The one optimiser step (cfcl.optim): zero, backward, clip, step; skipped on a large or non-finite gradient."""
from __future__ import annotations

import math

import pytest
import torch

from cfcl.optim import optimiser_step


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_a_step_is_zero_backward_step():
    a, b = _model(), _model()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    for p in a.parameters():  # a stale gradient is zeroed first
        p.grad = torch.ones_like(p)
    assert optimiser_step(a(x).pow(2).mean(), opt_a) == (None, True)
    opt_b.zero_grad(set_to_none=True)
    b(x).pow(2).mean().backward()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_clip_and_skip():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    loss = 100.0 * m(torch.randn(4, 3)).sum()
    norm, stepped = optimiser_step(loss, opt, m.parameters(), clip=1.0, skip=1e-3)
    assert norm > 1.0 and not stepped
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert math.isclose(float(torch.cat([p.grad.flatten() for p in m.parameters()]).norm()), 1.0, rel_tol=1e-5)
    norm, stepped = optimiser_step(100.0 * m(torch.randn(4, 3)).sum(), opt, m.parameters(), clip=1.0, skip=1e9)
    assert stepped and not all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    _, stepped = optimiser_step(m(torch.full((1, 3), float("nan"))).sum(), opt, m.parameters(), clip=1.0, skip=1e9)
    assert not stepped


def test_several_optimisers_step_together_and_bad_arguments_are_refused():
    m, lam = _model(), torch.nn.Parameter(torch.zeros(1))
    opt, lag = torch.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD([lam], lr=0.1, maximize=True)
    _, stepped = optimiser_step((m(torch.ones(1, 3)) * (1 + lam)).sum(), (opt, lag), m.parameters(), clip=10.0)
    assert stepped and float(lam.detach()) != 0.0
    with pytest.raises(ValueError, match="params"):
        optimiser_step(m(torch.ones(1, 3)).sum(), opt, clip=1.0)
    with pytest.raises(ValueError, match="skip needs clip"):
        optimiser_step(m(torch.ones(1, 3)).sum(), opt, m.parameters(), skip=1.0)
