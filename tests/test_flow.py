"""grndiff.flow against closed forms (tiny tensors, one thread: about a second in all).

Closed form used throughout. With x₀ ~ N(0, I), x₁ ~ N(μ, s² I) independent and
x_t = (1 − t) x₀ + t x₁, the pair (u = x₁ − x₀, x_t) is jointly Gaussian per gene with
    E[x_t] = t μ,  Var[x_t] = σ_t² := (1 − t)² + t² s²,  Cov[u, x_t] = t s² − (1 − t),
so the marginal velocity (the flow-matching optimum) is
    v(x, t) = E[u | x_t = x] = μ + (t s² − (1 − t)) / σ_t² · (x − t μ),
the irreducible loss is Var[u | x_t] = (1 + s²) − (t s² − (1 − t))² / σ_t² = s² / σ_t², and the
ODE solution from x₀ is x(t) = t μ + σ_t x₀ (dσ_t/dt · x₀ = (t s² − (1 − t))/σ_t · x₀ matches v),
so x(1) = μ + s x₀ exactly, cell by cell.
"""
import itertools

import pytest
import torch

from grndiff import flow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: thread hand-offs cost more than the arithmetic (seconds on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sigma_t(t, s):
    return ((1 - t) ** 2 + t**2 * s**2) ** 0.5


def _gaussian_velocity(mu: torch.Tensor, s: float):
    """Exact marginal velocity for N(0, I) → N(μ, s² I) under the independent coupling."""
    def f(x, t):
        t = t[:, None]  # (B, 1)
        return mu + (t * s**2 - (1 - t)) / _sigma_t(t, s) ** 2 * (x - t * mu)
    return f


def _exact_path(x0, t, mu, s):
    """x(t) = t μ + σ_t x₀: the solution of the ODE above."""
    return t * mu + _sigma_t(t, s) * x0


# ------------------------------------------------------------------ paths
def test_interpolant_endpoints_midpoint_and_derivative():
    g = _gen(0)
    x0, x1 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    torch.testing.assert_close(flow.interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(flow.interpolate(x0, x1, torch.ones(4)), x1)
    torch.testing.assert_close(flow.interpolate(x0, x1, 0.5), (x0 + x1) / 2)  # scalar t
    t = torch.tensor([0.25, 0.5, 0.75, 0.1])
    torch.testing.assert_close(flow.interpolate(x0, x1, t), (1 - t[:, None]) * x0 + t[:, None] * x1)
    torch.testing.assert_close(flow.target_velocity(x0, x1), x1 - x0)
    # the target is d x_t / dt (the path is linear: the finite difference is exact up to rounding)
    num = (flow.interpolate(x0, x1, t + 1e-2) - flow.interpolate(x0, x1, t)) / 1e-2
    torch.testing.assert_close(num, flow.target_velocity(x0, x1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one time per cell"):
        flow.interpolate(x0, x1, torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        flow.interpolate(x0, x1[:, :2], t)


def test_interpolant_noise_has_std_sigma_and_is_seeded():
    x0, x1 = torch.zeros(4000, 2), torch.ones(4000, 2)
    t = torch.full((4000,), 0.3)
    xt = flow.interpolate(x0, x1, t, sigma=0.1, generator=_gen(0))
    eps = xt - 0.3
    assert abs(eps.mean().item()) < 0.005 and abs(eps.std().item() - 0.1) < 0.005
    assert torch.equal(xt, flow.interpolate(x0, x1, t, sigma=0.1, generator=_gen(0)))


def test_flow_loss_values_and_reductions():
    v, u = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [2.0, 2, 2, 2]])
    assert flow.flow_loss(v, u).item() == pytest.approx(2.5)
    assert flow.flow_loss(v, u, reduction="sum").item() == pytest.approx(5.0)
    torch.testing.assert_close(flow.flow_loss(v, u, reduction="none"), torch.tensor([1.0, 4.0]))
    w = torch.tensor([1.0, 3.0])
    assert flow.flow_loss(v, u, weight=w).item() == pytest.approx((1 + 12) / 4)  # weighted mean
    assert flow.flow_loss(v, u, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)
    assert flow.flow_loss(v, u, weight=torch.full((2,), 7.0)).item() == pytest.approx(2.5)
    assert flow.flow_loss(v, u, weight=torch.zeros(2)).item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        flow.flow_loss(v, u, reduction="max")


def test_velocity_from_data_recovers_the_path_velocity_and_is_floored():
    g = _gen(3)
    x0, x1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.94])
    xt = flow.interpolate(x0, x1, t)
    # the exact clean cell gives exactly u = x1 - x0 (for 1 - t above the floor)
    torch.testing.assert_close(flow.velocity_from_data(x1, xt, t), flow.target_velocity(x0, x1))
    # near t = 1 the gap is floored: finite, and equal to (x̂ - x_t) / min_gap
    v = flow.velocity_from_data(x1, xt, torch.full((5,), 1.0), min_gap=0.05)
    torch.testing.assert_close(v, (x1 - xt) / 0.05)
    # an Euler sampler driven by the posterior mean of a point mass lands on it from any start
    target = torch.tensor([1.5, -2.0, 0.0, 3.0])
    x = flow.sample_ode(lambda x, t: flow.velocity_from_data(target.expand_as(x), x, t),
                        torch.randn(3, 4, generator=g), method="euler", n_steps=10)
    torch.testing.assert_close(x, target.expand(3, 4), atol=1e-5, rtol=0)


def test_gaussian_source_matches_group_moments_falls_back_and_is_seeded():
    g = _gen(5)
    G, k, n = 12, 3, 3000
    W = torch.linalg.qr(torch.randn(G, k, generator=g))[0]  # (G, k) orthonormal axes

    def draw(mu, scale):
        return mu + (torch.randn(n, k, generator=g) * scale) @ W.T + 0.1 * torch.randn(n, G, generator=g)
    mu1, mu2 = torch.randn(G, generator=g), torch.randn(G, generator=g) + 3
    x1, x2 = draw(mu1, torch.tensor([3.0, 1.0, 0.5])), draw(mu2, torch.tensor([0.5, 2.0, 1.0]))
    x, grp = torch.cat([x1, x2]), torch.cat([torch.full((n,), 1), torch.full((n,), 2)])
    src = flow.PerGroupGaussian(G, n_groups=3, n_comps=k, residual=1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        src.sample(torch.ones(2, dtype=torch.long))
    src.fit(x, grp)
    s1 = src.sample(torch.full((4 * n,), 1), seed=0)  # (B, G)
    torch.testing.assert_close(s1.mean(0), mu1, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(s1.T), torch.cov(x1.T), atol=0.35, rtol=0.1)
    # per-gene variance is kept: low-rank part + residual
    torch.testing.assert_close(s1.var(0), x1.var(0), atol=0.1, rtol=0.15)
    # unknown / null groups fall back to the pooled Gaussian of all cells
    s0 = src.sample(torch.tensor([0, 7, -1] * n), seed=1)
    torch.testing.assert_close(s0.mean(0), x.mean(0), atol=0.2, rtol=0)
    assert torch.equal(src.sample(torch.full((5,), 2), seed=3), src.sample(torch.full((5,), 2), seed=3))
    assert not torch.equal(src.sample(torch.full((5,), 2), seed=3), src.sample(torch.full((5,), 2), seed=4))
    # residual=0 → exactly rank-k around the group mean
    src.residual = 0.0
    r = src.sample(torch.full((50,), 2), seed=0) - src.mean[2]
    assert torch.linalg.matrix_rank(r, atol=1e-4) == k
    # the low-rank coupling keeps x1's coordinates on the k axes and drops the rest (residual 0)
    x0 = src.couple(x1[:100], torch.full((100,), 1), generator=_gen(9))
    W_ = src.basis  # (G, k)
    torch.testing.assert_close((x0 - src.mean[1]) @ W_, (x1[:100] - src.mean[1]) @ W_, atol=1e-4, rtol=1e-4)
    assert torch.linalg.matrix_rank(x0 - src.mean[1], atol=1e-4) == k


def test_gaussian_source_small_groups_do_not_inherit_the_spread_between_groups():
    """Shrinkage pulls a small group's covariance towards the pooled WITHIN-group one and the residual
    noise is taken around each group's mean: groups 20 SD apart, unit spread inside, must sample with
    unit spread (shrinking towards the all-cell covariance gave them the 20-SD gap as spread)."""
    from grndiff.flow import PerGroupGaussian as GaussianSource

    g, G, k = _gen(0), 40, 5
    centres = torch.zeros(3, G)
    centres[1, :5], centres[2, 5:10] = 20.0, 20.0
    group = torch.tensor([1] * 12 + [2] * 12)  # small groups: shrinkage weight k / (n + k) is large
    x = centres[group] + torch.randn(24, G, generator=g)
    src = GaussianSource(G, n_groups=3, n_comps=k, residual=1.0).fit(x, group)
    s = src.sample(torch.full((4000,), 1), seed=0)
    spread = (s - s.mean(0)).square().sum(1).mean().sqrt()  # typical distance to the group's centre
    real = (x[group == 1] - x[group == 1].mean(0)).square().sum(1).mean().sqrt()
    assert 0.7 * real < spread < 1.3 * real, (float(spread), float(real))
    assert float(src.resid_std.mean()) < 1.5  # within-group residual, not the between-group gap


def test_gaussian_source_scale_finds_axes_in_scaled_units_and_keeps_noise_off_them():
    """With a per-gene scale s the axes are principal in s ⊙ (x − μ) (log1p units in the model):
    50 low-scale genes share a strong factor in standardised units, 5 high-scale genes a weaker one
    that dominates once scaled. Noise and velocity projections are exact in the scaled space."""
    from grndiff.flow import PerGroupGaussian as GaussianSource

    g, n = _gen(3), 2000
    f_noise, f_info = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
    x = torch.cat([0.6 * f_noise + 0.8 * torch.randn(n, 50, generator=g),  # standardised units
                   0.9 * f_info + 0.45 * torch.randn(n, 5, generator=g)], 1)  # (n, 55)
    s = torch.cat([torch.full((50,), 0.1), torch.full((5,), 2.0)])  # (55,) per-gene std: x·s is log1p
    grp = torch.ones(n, dtype=torch.long)
    plain = GaussianSource(55, n_groups=2, n_comps=1, residual=1.0).fit(x, grp)
    scaled = GaussianSource(55, n_groups=2, n_comps=1, residual=1.0).fit(x, grp, scale=s)
    assert float(plain.basis[50:].square().sum()) < 0.2  # standardised units: the 50-gene factor wins
    assert float(scaled.basis[50:].square().sum()) > 0.9  # scaled units: the 5 informative genes
    torch.testing.assert_close(scaled.scale, s)
    W, mu = scaled.basis, scaled.mean[1]

    def coords(d):  # coordinates on the axis in scaled units
        return (d * s) @ W
    x0 = scaled.sample(torch.ones(3000, dtype=torch.long), seed=0)
    scaled.residual = 0.0
    x0_lowrank = scaled.sample(torch.ones(3000, dtype=torch.long), seed=0)
    scaled.residual = 1.0
    torch.testing.assert_close(coords(x0 - mu), coords(x0_lowrank - mu), atol=1e-4, rtol=0)  # noise adds nothing
    torch.testing.assert_close(coords(x0 - mu).var(), coords(x - mu).var(), rtol=0.1, atol=0)  # the axis' law
    xc = scaled.couple(x[:100], grp[:100], generator=_gen(4))
    torch.testing.assert_close(coords(xc - mu), coords(x[:100] - mu), atol=1e-4, rtol=0)
    v = torch.randn(7, 55, generator=g)
    off = scaled.project_off(v)
    torch.testing.assert_close(coords(off), torch.zeros(7, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.project_off(off), off, atol=1e-5, rtol=0)  # a projection
    with pytest.raises(ValueError, match="positive"):
        GaussianSource(55, n_groups=2, n_comps=1).fit(x, grp, scale=-s)
    # a source saved before the scale existed loads with s = 1
    state = {k: v for k, v in plain.state_dict().items() if k != "scale"}
    old = GaussianSource(55, n_groups=2, n_comps=1)
    old.scale.fill_(5.0)
    old.load_state_dict(state)
    assert torch.equal(old.scale, torch.ones(55))


# ------------------------------------------------------------------ the Gaussian closed form itself
@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_gaussian_marginal_velocity_is_the_regression_optimum(t):
    """Monte-Carlo check of the derivation: E[u | x_t] is linear with the closed-form slope, and
    the loss of the closed-form field is the irreducible s² / σ_t²."""
    mu, s, n = torch.tensor([2.0, -1.0, 0.5]), 0.5, 8000
    g = _gen(1)
    x0, x1 = torch.randn(n, 3, generator=g), mu + s * torch.randn(n, 3, generator=g)
    tt = torch.full((n,), t)
    xt, u = flow.interpolate(x0, x1, tt), flow.target_velocity(x0, x1)
    xc, uc = xt - xt.mean(0), u - u.mean(0)
    slope = (xc * uc).mean(0) / xc.square().mean(0)  # least-squares slope per gene (3,)
    expected = (t * s**2 - (1 - t)) / _sigma_t(t, s) ** 2
    se = s / (_sigma_t(t, s) ** 2 * n**0.5)  # standard error of the slope
    torch.testing.assert_close(slope, torch.full((3,), expected), atol=4 * se, rtol=0)
    best = flow.flow_loss(_gaussian_velocity(mu, s)(xt, tt), u).item()
    assert best == pytest.approx(s**2 / _sigma_t(t, s) ** 2, rel=0.05)
    worse = flow.flow_loss(1.1 * _gaussian_velocity(mu, s)(xt, tt), u).item()
    assert worse > best


# ------------------------------------------------------------------ time
def test_time_samplers_support_moments_and_seeding():
    t = flow.sample_time(20000, schedule="logit_normal", mean=0.5, std=0.8, generator=_gen(0))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert t.min() > 0 and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.03 and abs(logit.std().item() - 0.8) < 0.03
    t0 = flow.sample_time(20000, generator=_gen(0))  # default: logit-normal(0, 1), symmetric about 1/2
    assert abs(t0.mean().item() - 0.5) < 0.01 and abs(torch.logit(t0).std().item() - 1.0) < 0.03
    u = flow.sample_time(20000, schedule="uniform", generator=_gen(0))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    assert torch.equal(flow.sample_time(7, generator=_gen(3)), flow.sample_time(7, generator=_gen(3)))
    assert flow.sample_time(3, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="schedule"):
        flow.sample_time(3, schedule="cosine")
    with pytest.raises(ValueError, match="std"):
        flow.sample_time(3, std=0.0)


# ------------------------------------------------------------------ sources
def test_source_objects_noise_control_and_registry():
    noise = flow.make_source("noise").build(3)
    x1 = torch.zeros(5, 3, dtype=torch.float64)
    x0 = noise.pair(x1, {}, None, None, generator=_gen(0))
    assert x0.shape == (5, 3) and x0.dtype == torch.float64
    assert torch.equal(noise.draw(4, seed=1), flow.seeded_noise((4, 3), 1))
    ctrl_src = flow.make_source({"name": "control"}).build(3)
    ctrl = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(ctrl_src.pair(x1, {}, None, ctrl), ctrl) and torch.equal(ctrl_src.transport(ctrl), ctrl)
    with pytest.raises(KeyError, match="paired control"):
        ctrl_src.pair(x1, {}, None, None)
    with pytest.raises(ValueError, match="shape"):
        ctrl_src.pair(x1, {}, None, ctrl[:4])
    with pytest.raises(ValueError, match="source must be one of"):
        flow.make_source("uniform")
    with pytest.raises(ValueError, match="cannot transport"):  # predict() on a generator says what to set
        flow.make_source("gaussian").transport(ctrl)
    g = flow.GaussianSource(k=2, residual=0.3)
    assert flow.make_source(g) is g and flow.make_source(g.config()).config() == g.config()
    assert g.config() == {"name": "gaussian", "k": 2, "residual": 0.3, "coupling": "lowrank", "space": "log"}


def test_seeded_noise_is_bitwise_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = flow.seeded_noise((50, 3), seed=3), flow.seeded_noise((50, 3), seed=3)
    assert torch.equal(a, b) and not torch.equal(a, flow.seeded_noise((50, 3), seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(flow.seeded_noise((50, 3), 3, dtype=torch.float64), a.double(), rtol=0, atol=0)


# ------------------------------------------------------------------ minibatch OT
def _cost(a, b, idx):
    return (a[idx] - b).square().sum().item()


def test_exact_ot_equals_brute_force_and_beats_identity():
    g = _gen(0)
    for _ in range(3):
        x0, x1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
        idx = flow.ot_pair_indices(x0, x1)
        assert sorted(idx.tolist()) == list(range(5))  # a permutation
        brute = min(_cost(x0, x1, list(p)) for p in itertools.permutations(range(5)))
        assert _cost(x0, x1, idx) == pytest.approx(brute, rel=1e-6)
        assert _cost(x0, x1, idx) <= _cost(x0, x1, torch.arange(5)) + 1e-9


def test_exact_ot_in_one_dimension_is_the_sorted_matching():
    """Closed form: in 1-D the squared-cost OT plan is the monotone rearrangement."""
    g = _gen(1)
    x0, x1 = torch.randn(64, 1, generator=g), 3 + 0.5 * torch.randn(64, 1, generator=g)
    idx = flow.ot_pair_indices(x0, x1)
    expected = torch.empty(64, dtype=torch.long)
    expected[x1[:, 0].argsort()] = x0[:, 0].argsort()  # k-th smallest source → k-th smallest target
    assert torch.equal(idx, expected)


def test_group_restricted_pairing_never_crosses_groups_and_is_optimal_within():
    g = _gen(2)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3, 1])
    a, b = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    for kw in ({"condition_groups": groups}, {"groups": groups}, {"condition_groups": groups, "method": "sinkhorn"}):
        idx = flow.ot_pair_indices(a, b, **kw, generator=_gen(0))
        assert torch.equal(groups[idx], groups)
    idx = flow.ot_pair_indices(a, b, groups)
    assert idx[8] == 8  # a group of one keeps its pair
    for gid in groups.unique():
        m = torch.nonzero(groups == gid).flatten()
        torch.testing.assert_close(m[flow.ot_pair_indices(a[m], b[m])], idx[m])  # = OT within the group
    with pytest.raises(TypeError, match="not both"):
        flow.ot_pair_indices(a, b, groups, groups=groups)
    with pytest.raises(ValueError, match="one entry per cell"):
        flow.ot_pair_indices(a, b, groups[:5])
    with pytest.raises(ValueError, match="method"):
        flow.ot_pair_indices(a, b, method="greedy")


def test_sinkhorn_pairing_approaches_exact_cost():
    pytest.importorskip("ot")
    g = _gen(3)
    x0, x1 = torch.randn(64, 4, generator=g), 1 + torch.randn(64, 4, generator=g)
    exact = _cost(x0, x1, flow.ot_pair_indices(x0, x1))
    ident = _cost(x0, x1, torch.arange(64))
    idx = flow.ot_pair_indices(x0, x1, method="sinkhorn", reg=0.01, generator=_gen(0))
    assert idx.min() >= 0 and idx.max() < 64
    assert exact <= _cost(x0, x1, idx) < exact + 0.2 * (ident - exact)
    assert torch.equal(idx, flow.ot_pair_indices(x0, x1, method="sinkhorn", reg=0.01, generator=_gen(0)))


# ------------------------------------------------------------------ samplers
MU, S = torch.tensor([2.0, -1.0, 0.5]), 0.5


@pytest.mark.parametrize("method,steps,tol", [("euler", 200, 0.02), ("heun", 50, 1e-3), ("dopri5", None, 1e-3)])
def test_samplers_transport_gaussian_to_gaussian(method, steps, tol):
    x0 = flow.seeded_noise((8000, 3), seed=0)
    x1 = flow.sample_ode(_gaussian_velocity(MU, S), x0, method=method, n_steps=steps or 50)
    assert (x1 - (MU + S * x0)).abs().max() < tol  # the exact map, cell by cell
    torch.testing.assert_close(x1.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x1.var(0), torch.full((3,), S**2), atol=0.02, rtol=0)


def test_trajectories_follow_the_exact_path():
    x0 = flow.seeded_noise((1000, 3), seed=1)
    f = _gaussian_velocity(MU, S)
    for method, tol in (("heun", 0.02), ("dopri5", 1e-3), ("euler", 0.4)):
        traj = flow.sample_ode(f, x0, method=method, n_steps=10, return_trajectory=True)
        assert traj.shape == (11, 1000, 3) and torch.equal(traj[0], x0)
        ts = torch.linspace(0, 1, 11)[:, None, None]
        assert (traj - _exact_path(x0, ts, MU, S)).abs().max() < tol, method


def test_heun_beats_euler_and_both_converge_at_their_order():
    x0 = flow.seeded_noise((2000, 1), seed=1)
    mu, s = torch.tensor([2.0]), 0.3
    f, exact = _gaussian_velocity(mu, s), mu + s * x0

    def err(method, n):
        return (flow.sample_ode(f, x0, method=method, n_steps=n) - exact).abs().max().item()
    e10, e20, h10, h20, h5 = err("euler", 10), err("euler", 20), err("heun", 10), err("heun", 20), err("heun", 5)
    assert h10 < 0.2 * e10  # equal steps
    assert h5 < e10  # equal evaluations (10 each)
    assert 1.6 < e10 / e20 < 2.5  # first order
    assert 3.0 < h10 / h20 < 5.0  # second order


def test_backward_integration_inverts_and_nfe_is_counted():
    f = _gaussian_velocity(torch.tensor([1.0, 2.0]), 0.7)
    x0 = flow.seeded_noise((100, 2), seed=2)
    calls = []

    def counted(x, t):
        calls.append(1)
        assert t.shape == (100,) and t.dtype == x.dtype
        return f(x, t)
    x1, nfe = flow.dopri5(counted, x0, return_nfe=True)
    assert nfe == len(calls) > 6
    back = flow.sample_ode(f, x1, method="dopri5", t0=1.0, t1=0.0)
    torch.testing.assert_close(back, x0, atol=1e-3, rtol=1e-3)
    back = flow.sample_ode(f, x1, method="heun", n_steps=50, t0=1.0, t1=0.0)
    torch.testing.assert_close(back, x0, atol=1e-3, rtol=1e-3)
    assert flow.sample_ode(f, x0, method="euler", n_steps=7, return_nfe=True)[1] == 7
    assert flow.sample_ode(f, x0, method="heun", n_steps=7, return_nfe=True)[1] == 14
    tight = flow.sample_ode(f, x0, method="dopri5", rtol=1e-8, atol=1e-8, return_nfe=True)[1]
    assert tight > nfe  # tighter tolerance, more evaluations


def test_count_nfe_context_tallies_every_solve_and_nests():
    f = _gaussian_velocity(MU, S)
    x0 = flow.seeded_noise((10, 3), seed=0)
    with flow.count_nfe() as outer:
        flow.sample_ode(f, x0, method="euler", n_steps=4)
        with flow.count_nfe() as inner:
            _, nfe = flow.sample_ode(f, x0, method="dopri5", return_nfe=True)
    assert (inner.nfe, inner.solves, inner.cells) == (nfe, 1, 10)
    assert (outer.nfe, outer.solves, outer.cells) == (4 + nfe, 2, 20) and outer.nfe_per_solve == (4 + nfe) / 2
    flow.sample_ode(f, x0, n_steps=3)  # outside any block: nothing recorded
    assert outer.nfe == 4 + nfe


def test_dopri5_gives_up_on_a_stiff_field():
    with pytest.raises(RuntimeError, match="max_steps"):
        flow.dopri5(lambda x, t: -1e7 * x, torch.ones(2, 2), max_steps=20)


def test_samplers_are_deterministic_gradient_free_and_validate():
    net = torch.nn.Linear(3, 3)

    def f(x, t):
        return net(x) + t[:, None]
    for method in ("euler", "heun", "dopri5"):
        a = flow.sample_ode(f, flow.seeded_noise((50, 3), seed=3), method=method, n_steps=8)
        b = flow.sample_ode(f, flow.seeded_noise((50, 3), seed=3), method=method, n_steps=8)
        c = flow.sample_ode(f, flow.seeded_noise((50, 3), seed=4), method=method, n_steps=8)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert not a.requires_grad  # @torch.no_grad(): no graph kept across steps
    with pytest.raises(ValueError, match="method"):
        flow.sample_ode(f, a, method="rk4")
    with pytest.raises(ValueError, match="n_steps"):
        flow.sample_ode(f, a, n_steps=0)


def test_progress_bars_run(capsys):
    f = _gaussian_velocity(MU, S)
    x0 = flow.seeded_noise((4, 3), seed=0)
    for method in ("euler", "heun", "dopri5"):
        quiet = flow.sample_ode(f, x0, method=method, n_steps=3)
        assert torch.equal(flow.sample_ode(f, x0, method=method, n_steps=3, progress=True), quiet)


def test_flow_is_pure_torch():
    import ast
    import pathlib
    root = pathlib.Path(flow.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in {"anndata", "scanpy", "grndiff", "pandas"}, (path.name, name)


def test_condition_groups_one_helper_missing_values_and_perturbation_sets():
    from grndiff.flow.groups import MISSING, condition_keys, condition_matrix, group_index
    cond = {"cell_type": torch.tensor([1, 1, 2, 1]), "dose": torch.tensor([0.5, float("nan"), 0.5, 0.5])}
    m = condition_matrix(cond, ["cell_type", "dose", "absent"], 4)
    assert m.shape == (4, 3) and m[1, 1] == MISSING and (m[:, 2] == MISSING).all()
    pert = torch.tensor([[3, -1], [-1, 3], [3, 5], [5, 3]])  # the same set in either order, padding anywhere
    keys = condition_keys(cond, pert, ["cell_type"], 4, with_pert=True)
    assert keys[0] == keys[1] == (1.0, 3.0) and keys[3] == (1.0, 3.0, 5.0)
    g = group_index({"cell_type": cond["cell_type"]}, pert, 4)
    assert g[0] == g[1] and len({int(g[0]), int(g[2]), int(g[3])}) == 3
    assert group_index(None, None, 3).tolist() == [0, 0, 0]
