"""grndiff.flow against closed forms."""
import itertools

import numpy as np
import pytest
import torch

from grndiff import flow


def test_interpolant_and_target_closed_form():
    x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(flow.interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(flow.interpolate(x0, x1, torch.ones(4)), x1)
    t = torch.tensor([0.25, 0.5, 0.75, 0.1])
    torch.testing.assert_close(flow.interpolate(x0, x1, t), x0 + t[:, None] * (x1 - x0))
    torch.testing.assert_close(flow.target_velocity(x0, x1), x1 - x0)
    # d/dt of the interpolant is the target
    eps = 1e-3
    num = (flow.interpolate(x0, x1, t + eps) - flow.interpolate(x0, x1, t)) / eps
    torch.testing.assert_close(num, flow.target_velocity(x0, x1), atol=1e-3, rtol=1e-3)


def test_flow_loss_values():
    v, u = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [2.0, 2, 2, 2]])
    assert flow.flow_loss(v, u).item() == pytest.approx(2.5)
    assert flow.flow_loss(v, u, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)
    torch.testing.assert_close(flow.flow_loss(v, u, reduction="none"), torch.tensor([1.0, 4.0]))


def test_time_samplers_support_and_moments():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_time(20000, schedule="logit_normal", mean=0.5, std=0.8, generator=g)
    assert t.min() > 0 and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.03 and abs(logit.std().item() - 0.8) < 0.03
    u = flow.sample_time(20000, schedule="uniform", generator=g)
    assert abs(u.mean().item() - 0.5) < 0.01
    with pytest.raises(ValueError, match="schedule"):
        flow.sample_time(3, schedule="cosine")


def test_exact_ot_pairing_is_optimal_and_respects_groups():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    perm = flow.ot_pair_indices(x0, x1)
    cost = (x0[perm] - x1).square().sum().item()
    brute = min((x0[list(p)] - x1).square().sum().item() for p in itertools.permutations(range(5)))
    assert cost == pytest.approx(brute, rel=1e-6)
    assert cost <= (x0 - x1).square().sum().item() + 1e-9
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    a, b = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    perm = flow.ot_pair_indices(a, b, groups=groups)
    assert torch.equal(groups[perm], groups)
    assert sorted(perm.tolist()) == list(range(8))


def _gaussian_velocity(mu: torch.Tensor, s: float):
    """Exact marginal velocity of x_t = (1−t)x0 + t x1, x0 ~ N(0, I), x1 ~ N(mu, s² I) independent:
    E[x1 − x0 | x_t = x] = mu + (t s² − (1 − t)) / ((1 − t)² + t² s²) · (x − t mu)."""
    def f(x, t):
        t = t[:, None]
        coef = (t * s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s**2)
        return mu + coef * (x - t * mu)
    return f


@pytest.mark.parametrize("method,steps,tol", [("euler", 200, 0.05), ("heun", 50, 0.03), ("dopri5", None, 0.03)])
def test_samplers_transport_gaussian_to_gaussian(method, steps, tol):
    mu, s = torch.tensor([2.0, -1.0, 0.5]), 0.5
    x0 = flow.seeded_noise((20000, 3), seed=0)
    x1 = flow.sample_ode(_gaussian_velocity(mu, s), x0, method=method, n_steps=steps or 1)
    assert torch.allclose(x1.mean(0), mu, atol=tol)
    assert torch.allclose(x1.var(0), torch.full((3,), s**2), atol=tol)


def test_heun_beats_euler_at_equal_steps():
    mu, s = torch.tensor([2.0]), 0.3
    x0 = flow.seeded_noise((2000, 1), seed=1)
    f = _gaussian_velocity(mu, s)
    exact = flow.sample_ode(f, x0, method="dopri5", rtol=1e-7, atol=1e-7)
    e_err = (flow.sample_ode(f, x0, method="euler", n_steps=10) - exact).abs().mean()
    h_err = (flow.sample_ode(f, x0, method="heun", n_steps=10) - exact).abs().mean()
    assert h_err < 0.2 * e_err


def test_dopri5_counts_evaluations_and_backward_integration_inverts():
    mu, s = torch.tensor([1.0, 2.0]), 0.7
    f = _gaussian_velocity(mu, s)
    x0 = flow.seeded_noise((100, 2), seed=2)
    x1, nfe = flow.dopri5(f, x0, return_nfe=True)
    assert nfe > 6
    back = flow.sample_ode(f, x1, method="dopri5", t0=1.0, t1=0.0)
    torch.testing.assert_close(back, x0, atol=1e-3, rtol=1e-3)


def test_seeded_sampling_is_bitwise_reproducible():
    f = _gaussian_velocity(torch.tensor([1.0]), 0.5)
    a = flow.sample_ode(f, flow.seeded_noise((50, 1), seed=3), method="heun", n_steps=8)
    b = flow.sample_ode(f, flow.seeded_noise((50, 1), seed=3), method="heun", n_steps=8)
    c = flow.sample_ode(f, flow.seeded_noise((50, 1), seed=4), method="heun", n_steps=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_weights():
    vc, vu = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(flow.cfg_velocity(vc, vu, 0.0), vu)
    torch.testing.assert_close(flow.cfg_velocity(vc, vu, 1.0), vc)
    torch.testing.assert_close(flow.cfg_velocity(vc, vu, 2.0), torch.tensor([2.0, 3.0]))
    f = flow.guided(lambda x, t: x + 1, lambda x, t: x, 3.0)
    torch.testing.assert_close(f(torch.zeros(2), torch.zeros(2)), torch.full((2,), 3.0))
