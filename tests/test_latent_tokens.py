"""backbone="latent_tokens": the Perceiver-style velocity field (grndiff.nn.latent_tokens)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import grndiff as gd
from grndiff.nn import LatentTokenVelocity, backbone_options, build_backbone

torch.set_num_threads(1)

G, D, H, M = 12, 16, 4, 5
SPECS = [{"name": "cell_type", "kind": "categorical", "n_categories": 3}, {"name": "dose", "kind": "continuous"}]


def _cond(B=4):
    return {"cell_type": torch.tensor([0, 1, 2, 3])[:B], "dose": torch.tensor([0.1, float("nan"), 2.0, -1.0])[:B]}


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"hidden": D, "heads": H, "n_tokens": M, "depth": 2, "perturbation": 1, "cond_dropout": 0.0, **kw}
    return LatentTokenVelocity(G, SPECS, **kw)


def _perturb_params(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_shapes_zero_velocity_at_init_and_the_latents_read_the_cell():
    net = _net()
    x, t = torch.randn(4, G), torch.rand(4)
    pert = torch.tensor([[1, -1], [2, 11], [-1, -1], [0, -1]])
    v, extras = net(x, t, _cond(), pert, return_tokens=True)
    assert v.shape == (4, G) and torch.count_nonzero(v) == 0  # the flow starts as its source's identity map
    assert set(extras) == {"tokens"} and extras["tokens"].shape == (4, M, D)
    assert torch.count_nonzero(net.forward_with_cfg(x, t, _cond(), pert, guidance=2.0)) == 0
    # the read is open at init: the latents depend on the cell from the first step
    _, other = net(x + 1.0, t, _cond(), pert, return_tokens=True)
    assert not torch.allclose(extras["tokens"], other["tokens"])
    # value embedding choice, and a clear error for a bad width
    assert LatentTokenVelocity(G, hidden=D, heads=H, value_embedding="mlp")(x, t).shape == (4, G)
    with pytest.raises(ValueError, match="divisible"):
        LatentTokenVelocity(G, hidden=10, heads=4)
    with pytest.raises(ValueError, match="value must be"):
        LatentTokenVelocity(G, hidden=D, heads=H, value_embedding="nope")


def test_guidance_is_the_base_class_mix_of_both_halves():
    net = _net()
    _perturb_params(net)
    net.eval()
    x, t = torch.randn(4, G), torch.rand(4)
    v_c = net(x, t, _cond())
    v_u = net(x, t, _cond(), force_drop=torch.ones(4, dtype=torch.bool))
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(net.forward_with_cfg(x, t, _cond(), guidance=2.5), v_u + 2.5 * (v_c - v_u),
                               atol=1e-5, rtol=1e-4)


def test_a_perturbation_reaches_the_genes():
    net = _net()
    _perturb_params(net)  # non-zero head and gates
    x, t = torch.randn(2, G), torch.rand(2)
    none = net(x, t, _cond(2), torch.full((2, 1), -1))
    ko = net(x, t, _cond(2), torch.tensor([[3], [3]]))
    assert (ko - none)[:, 3].abs().min() > 0  # the perturbed gene itself (its flag)
    assert not torch.allclose(ko, none)
    torch.testing.assert_close(net(x, t, _cond(2), None), none)  # all padding = no perturbation
    # two kinds (knock-out, activation): codes gene + G·kind give different outputs
    net2 = _net(perturbation=2)
    _perturb_params(net2)
    a = net2(x, t, _cond(2), torch.tensor([[3], [3]]))
    b = net2(x, t, _cond(2), torch.tensor([[3 + G], [3 + G]]))
    assert not torch.allclose(a, b)


def test_a_perturbation_changes_the_output_after_a_few_training_steps():
    torch.manual_seed(0)
    net = LatentTokenVelocity(G, hidden=D, heads=H, n_tokens=M, perturbation=1)  # fresh: v ≡ 0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    pert = torch.tensor([[3]] * 8 + [[-1]] * 8)
    target = torch.zeros(16, G)
    target[:8, 3] = -1.0  # knocked-out cells move gene 3 down
    for _ in range(5):
        x, t = torch.randn(16, G, generator=g), torch.rand(16, generator=g)
        loss = (net(x, t, None, pert) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, t = torch.randn(4, G, generator=g), torch.rand(4, generator=g)
    diff = net(x, t, None, torch.tensor([[3]] * 4)) - net(x, t, None, torch.full((4, 1), -1))
    assert (diff[:, 3] < 0).all()


def test_gene_order_is_carried_by_the_gene_identities():
    net1 = _net()
    _perturb_params(net1)
    perm = torch.randperm(G, generator=torch.Generator().manual_seed(3))
    inv = torch.argsort(perm)  # new index of old gene g is inv[g]
    net2 = _net(seed=5)
    sd = {k: (v[perm] if k == "embed.identity.weight" else v) for k, v in net1.state_dict().items()}
    net2.load_state_dict(sd)
    x, t = torch.randn(3, G), torch.rand(3)
    pert = torch.tensor([[0, 4], [7, -1], [-1, -1]])
    pert2 = torch.where(pert >= 0, inv[pert.clamp_min(0)], pert)
    torch.testing.assert_close(net2(x[:, perm], t, _cond(3), pert2), net1(x, t, _cond(3), pert)[:, perm],
                               atol=1e-5, rtol=1e-4)
    # and the identities matter: the same weights on permuted columns without moving them differ
    assert not torch.allclose(net1(x[:, perm], t, _cond(3), pert2), net1(x, t, _cond(3), pert)[:, perm], atol=1e-4)


def test_cost_is_linear_in_genes_and_parameters_do_not_grow_with_them_but_identities():
    small = build_backbone("latent_tokens", {"n_genes": 100, "condition_specs": [], "perturbation": 0})
    large = build_backbone("latent_tokens", {"n_genes": 20_000, "condition_specs": [], "perturbation": 0})
    n = [sum(p.numel() for p in m.parameters()) for m in (small, large)]
    assert n[1] - n[0] == (20_000 - 100) * 32  # defaults: hidden=32; only the gene identities grow
    with torch.no_grad():  # 20,000 genes, G² attention would hold 4·20,000² weights per cell
        v = large(torch.randn(2, 20_000), torch.rand(2))
    assert v.shape == (2, 20_000)
    assert large.max_sampling_cells >= 16


def test_options_and_refusals():
    assert backbone_options("latent_tokens") == ("hidden", "heads", "n_tokens", "depth", "mlp_ratio", "cond_dropout",
                                                 "value_embedding")
    net = build_backbone("latent_tokens", {"n_genes": G, "condition_specs": SPECS, "perturbation": 2}, n_tokens=3,
                         hidden=8, heads=2, depth=1)
    assert net.latents.shape == (3, 8) and len(net.blocks) == 1 and net.pert_embed.n_kinds == 2
    with pytest.raises(TypeError):
        build_backbone("latent_tokens", {"n_genes": G}, token_depth=2)
    with pytest.raises(ValueError, match="latent nodes.*backbone='grn'"):
        build_backbone("latent_tokens", {"n_genes": G, "n_latent": 2})
    a = gd.datasets.krumsiek11()
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    with pytest.raises(TypeError, match="n_tokens"):  # the error lists what this backbone takes
        gd.GRNDiff(a, prior=None, modules=None, backbone="latent_tokens", token_depth=2)


def test_trains_samples_with_guidance_and_round_trips_on_kang_tiny(tmp_path):
    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior=None, modules=None, backbone="latent_tokens", n_tokens=8, hidden=16, seed=0)
    net = m.module.net
    assert isinstance(net, LatentTokenVelocity) and net.latents.shape == (8, 16)
    before = net.final.linear.weight.detach().clone()
    m.train(max_steps=5, batch_size=32, progress_bar=False, gate=False)
    assert not torch.equal(before, net.final.linear.weight)
    gen = m.sample(20, {"condition": "stim"}, n_steps=3, guidance=2.0, seed=1, progress=False)
    assert gen.shape == (20, a.n_vars) and np.isfinite(gen.X).all()
    m.save(tmp_path / "lt")
    back = gd.GRNDiff.load(tmp_path / "lt")
    assert back.config["backbone"] == "latent_tokens" and back.module.net.latents.shape == (8, 16)
    again = back.sample(20, {"condition": "stim"}, n_steps=3, guidance=2.0, seed=1, progress=False)
    assert np.array_equal(gen.X, again.X)
    with pytest.raises(ValueError, match="no module tokens"):  # latents are no module tokens: a clear refusal
        m.get_token_activities(a[:4])


def test_a_perturbation_model_trains_and_predicts_on_krumsiek(krumsiek_knockouts):
    a = krumsiek_knockouts
    m = gd.GRNDiff(a, prior=None, modules=None, backbone="latent_tokens", n_tokens=8, hidden=16, depth=1, seed=0)
    assert m.module.net.pert_embed is not None
    m.train(max_steps=8, batch_size=64, progress_bar=False, gate=False)
    ctrl = a[a.obs["perturbation"] == "control"][:12].copy()
    ko = m.predict(ctrl, {"perturbation": "Gata2"}, n_steps=3, flow=True)
    assert ko.shape == (12, a.n_vars) and np.isfinite(np.asarray(ko.X)).all()
    other = m.predict(ctrl, {"perturbation": "Pu.1"}, n_steps=3, flow=True)
    assert not np.allclose(np.asarray(ko.X), np.asarray(other.X))
