"""backbone="ssm": the graph order of the genes, the FFT long convolution, and the model end to end."""
import numpy as np
import pytest
import torch

import grndiff as gd
from grndiff.nn import SequenceVelocity, backbone_options, build_backbone, graph_order
from grndiff.nn.sequence import LongConv, _fft_size, long_conv

torch.set_num_threads(1)

# two components, {0, 1, 2, 3} (0 regulates 1 and 2, 1 regulates 3) and {5, 6, 7}; 4, 8, 9 isolated
EDGES = torch.tensor([[0, 0, 1, 5, 6, 9], [1, 2, 3, 6, 7, 9]])  # 9 → 9 is a self-loop only


def _random_graph(G=40, E=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, G - 5, (2, E), generator=g)  # the last 5 genes have no edge


# ------------------------------------------------------------------ graph_order
@pytest.mark.parametrize("method", ["bfs", "spectral"])
def test_graph_order_is_a_deterministic_permutation_with_isolated_genes_last(method):
    order = graph_order(10, EDGES, method)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, graph_order(10, EDGES.clone(), method))
    assert order[-3:].tolist() == [4, 8, 9]  # no edge (a self-loop is none): last, in index order
    assert set(order[:4].tolist()) == {0, 1, 2, 3} and set(order[4:7].tolist()) == {5, 6, 7}  # component by component
    ei = _random_graph()
    big = graph_order(40, ei, method)
    assert sorted(big.tolist()) == list(range(40)) and torch.equal(big, graph_order(40, ei, method))
    connected = set(ei[:, ei[0] != ei[1]].flatten().tolist())
    n = len(connected)
    assert set(big[:n].tolist()) == connected and big[n:].tolist() == sorted(set(range(40)) - connected)


def test_graph_order_bfs_starts_at_the_top_regulator_and_handles_no_edges():
    assert graph_order(10, EDGES).tolist() == [0, 1, 2, 3, 5, 6, 7, 4, 8, 9]
    # the spectral order of the path 2 - 0 - 1 - 3 is the path itself (either direction)
    assert graph_order(10, EDGES, "spectral")[:4].tolist() in ([2, 0, 1, 3], [3, 1, 0, 2])
    for none in (None, torch.zeros(2, 0, dtype=torch.long), torch.arange(6).repeat(2, 1)):
        assert graph_order(6, none).tolist() == list(range(6))
        assert graph_order(6, none, "spectral").tolist() == list(range(6))
    # indices past G (latent nodes) are ignored
    assert graph_order(3, torch.tensor([[0, 5], [1, 2]])).tolist() == [0, 1, 2]
    # a component over max_spectral keeps its BFS order
    assert torch.equal(graph_order(10, EDGES, "spectral", max_spectral=3), graph_order(10, EDGES, "bfs"))
    with pytest.raises(ValueError, match="order must be one of"):
        graph_order(10, EDGES, "dfs")


# ------------------------------------------------------------------ the long convolution
def _naive(u, k_fwd, k_bwd):
    B, L, D = u.shape
    y = torch.zeros_like(u)
    for i in range(L):
        for j in range(L):
            k = k_fwd[:, i - j] if j <= i else (k_bwd[:, j - i] if k_bwd is not None else 0.0)
            y[:, i] += k * u[:, j]
    return y


@pytest.mark.parametrize("L", [1, 2, 7, 13])
def test_fft_long_convolution_equals_the_direct_sum(L):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(3, L, 4, dtype=torch.float64, generator=g)
    kf, kb = torch.randn(4, L, dtype=torch.float64, generator=g), torch.randn(4, L, dtype=torch.float64, generator=g)
    torch.testing.assert_close(long_conv(u, kf, kb), _naive(u, kf, kb))
    torch.testing.assert_close(long_conv(u, kf), _naive(u, kf, None))  # causal
    y32 = long_conv(u.float(), kf.float(), kb.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, _naive(u, kf, kb).float(), rtol=1e-4, atol=1e-4)
    assert all(_fft_size(n) >= n for n in range(1, 200))
    # the hand-written backward (FFT correlations) is the gradient of the forward
    args = (u[:2].clone().requires_grad_(True), kf.clone().requires_grad_(True), kb.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(long_conv, args)
    assert torch.autograd.gradcheck(lambda x, k: long_conv(x, k), args[:2])


def test_ssm_kernel_matches_the_recurrence():
    """The kernel is the impulse response of the diagonal SSM x_l = exp(ΔA) x_{l-1} + (exp(ΔA)-1)/A u_l, y = 2Re(Cx)."""
    torch.manual_seed(0)
    conv = LongConv(3, n_modes=4)
    k_fwd, _ = conv.kernel(9)
    a = torch.complex(-conv.log_a_real.exp(), conv.a_imag)[:3].detach().to(torch.complex128)
    dta = conv.log_dt.detach().exp()[:3, None].double() * a
    c = torch.view_as_complex(conv.c.detach().contiguous())[:3].to(torch.complex128)
    state, ref = (dta.exp() - 1) / a, []  # impulse at step 0
    for _ in range(9):
        ref.append(2 * (c * state).sum(-1).real)
        state = state * dta.exp()
    torch.testing.assert_close(k_fwd.double(), torch.stack(ref, -1).detach(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the network
def _specs():
    return [{"name": "cell_type", "kind": "categorical", "n_categories": 3}]


def _randomise(net, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_velocity_is_zero_at_init_and_shapes():
    torch.manual_seed(0)
    net = SequenceVelocity(10, EDGES, condition_specs=_specs(), hidden=8, perturbation=1)
    x, t = torch.randn(5, 10), torch.rand(5)
    cond = {"cell_type": torch.tensor([0, 1, 2, 3, 1])}
    pert = torch.tensor([[1, -1], [-1, -1], [2, 3], [-1, -1], [0, -1]])
    v, extras = net(x, t, cond, pert, return_tokens=True)
    assert v.shape == (5, 10) and extras == {} and torch.equal(v, torch.zeros(5, 10))
    assert torch.equal(net.forward_with_cfg(x, t, cond, pert, guidance=2.0), torch.zeros(5, 10))
    assert torch.equal(net.order, graph_order(10, EDGES)) and torch.equal(net.order[net.inverse], torch.arange(10))
    with pytest.raises(ValueError, match="11 genes"):
        net(torch.randn(2, 11), 0.5)


def test_read_out_is_unpermuted_and_every_gene_sees_every_other():
    torch.manual_seed(0)
    ei = _random_graph()
    net = SequenceVelocity(40, ei, hidden=8, depth=2, cond_dropout=0.0)
    assert not torch.equal(net.order, torch.arange(40))
    _randomise(net)
    net.eval()
    x, t = torch.randn(3, 40), torch.rand(3)
    # a per-gene model (kernels off, skip on) gives the same v in any order: the permutation is undone
    same = SequenceVelocity(40, None, hidden=8, depth=2, cond_dropout=0.0)
    same.load_state_dict({**net.state_dict(), "order": same.order, "inverse": same.inverse})
    with torch.no_grad():
        for m in (net, same):
            for blk in m.blocks:
                blk.conv.c.zero_()
    torch.testing.assert_close(net(x, t), same(x, t))
    # with the kernels on, gene 0's velocity depends on genes far away in the order
    _randomise(net, seed=2)
    xr = x.clone().requires_grad_(True)
    net(xr, t)[:, 0].sum().backward()
    assert (xr.grad.abs() > 0).sum() > 30


def test_perturbation_flag_reaches_the_perturbed_gene():
    torch.manual_seed(0)
    net = SequenceVelocity(10, EDGES, hidden=8, perturbation=1)
    _randomise(net)
    net.eval()
    x, t = torch.randn(2, 10), torch.rand(2)
    v_ko = net(x, t, None, torch.tensor([[5], [5]]))
    v_0 = net(x, t, None, torch.full((2, 1), -1))
    assert not torch.allclose(v_ko[:, 5], v_0[:, 5])
    assert torch.equal(net(x, t, None, None), v_0)  # no perturbation = all padding


def test_option_set_and_clear_errors():
    assert backbone_options("ssm") == ("hidden", "depth", "order", "mlp_ratio", "cond_dropout", "value_embedding")
    inputs = {"n_genes": 10, "edge_index": EDGES, "condition_specs": _specs(), "perturbation": 0}
    net = build_backbone("ssm", inputs, hidden=8, depth=3, order="spectral", value_embedding="mlp")
    assert len(net.blocks) == 3 and net.embed.value == "mlp" and net.order_method == "spectral"
    with pytest.raises(ValueError, match="order must be one of"):
        build_backbone("ssm", inputs, order="dfs")
    with pytest.raises(TypeError, match="heads"):
        build_backbone("ssm", inputs, heads=4)
    with pytest.raises(ValueError, match="latent nodes"):
        build_backbone("ssm", {**inputs, "n_latent": 2})


# ------------------------------------------------------------------ through the public API
def test_ssm_trains_samples_with_guidance_and_round_trips(tmp_path):
    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior="collectri", modules=None, backbone="ssm", hidden=16, seed=0)
    assert isinstance(m.module.net, SequenceVelocity) and m.module.net.hidden == 16
    with pytest.raises(TypeError, match="unknown model options.*heads"):
        gd.GRNDiff(a, prior="collectri", modules=None, backbone="ssm", heads=4)
    before = m.module.net.head_weight.detach().clone()
    m.train(max_steps=5, batch_size=32, progress_bar=False, gate=False)
    assert not torch.equal(before, m.module.net.head_weight)
    cond = {"condition": a.obs["condition"].iloc[0]}
    gen = m.sample(10, cond, n_steps=3, guidance=2.0, seed=3, progress=False)
    assert gen.shape == (10, a.n_vars) and np.isfinite(np.asarray(gen.X)).all()
    m.save(tmp_path / "ssm")
    back = gd.GRNDiff.load(tmp_path / "ssm")
    assert back.config["backbone"] == "ssm" and torch.equal(back.module.net.order, m.module.net.order)
    again = back.sample(10, cond, n_steps=3, guidance=2.0, seed=3, progress=False)
    np.testing.assert_array_equal(np.asarray(gen.X), np.asarray(again.X))
    bf16 = back.sample(10, cond, n_steps=2, guidance=2.0, seed=3, progress=False, precision="bf16")  # FFTs in float32
    assert np.isfinite(np.asarray(bf16.X)).all()


def test_ssm_perturbation_model_trains_and_predicts(krumsiek_knockouts):
    a = krumsiek_knockouts
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, backbone="ssm", hidden=16,
                   order="spectral", seed=0)
    assert m.module.net.pert_embed is not None
    m.train(max_steps=8, batch_size=64, progress_bar=False, gate=False)
    ctrl = a[a.obs["perturbation"] == "control"][:12].copy()
    ko = m.predict(ctrl, {"perturbation": "Gata2"}, n_steps=3, flow=True)
    same = m.predict(ctrl, {"perturbation": "control"}, n_steps=3, flow=True)
    assert ko.shape == (12, a.n_vars) and np.isfinite(np.asarray(ko.X)).all()
    assert not np.array_equal(np.asarray(ko.X), np.asarray(same.X))
