"""grndiff.nn: identities at init, dense references, equivariance, conditions."""
import math

import pytest
import torch

from grndiff.nn import (
    ConditionEmbedder,
    GraphAttention,
    GraphDiTBlock,
    GRNTransformer,
    MLPVelocity,
    ModulePooling,
    PerturbationEmbedder,
    TokenBlock,
    gene_token_transformer,
    modules_only,
)
from grndiff.nn.graph_attention import BlockGraph

G, D, H = 12, 16, 4


def _graph(seed=0, n_edges=40, isolated=(10, 11)):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, G - len(isolated), (2, n_edges), generator=g)  # genes 10, 11 have no edges
    ei = torch.unique(ei, dim=1)
    sign = torch.randint(-1, 2, (ei.shape[1],), generator=g).float()
    weight = torch.rand(ei.shape[1], generator=g)
    return ei, sign, weight


def _dense_reference(layer: GraphAttention, x: torch.Tensor) -> torch.Tensor:
    """Masked dense multi-head attention written independently of the sparse code paths."""
    B, Gn, Dn = x.shape
    Hh, d = layer.heads, layer.head_dim
    mask = torch.zeros(Gn, Gn, dtype=torch.bool)
    mask[layer.dst, layer.src] = True
    bias = torch.zeros(Hh, Gn, Gn)
    bias[:, layer.dst, layer.src] = layer.edge_bias().T
    gain = torch.ones(Hh, Gn, Gn)
    gain[:, layer.dst, layer.src] = layer.sign_gain[layer.sign_idx].T
    if layer.mode == "shared":
        q = layer.q_id(layer.gene_id).view(Gn, Hh, d).transpose(0, 1)  # (H, G, d)
        k = layer.k_id(layer.gene_id).view(Gn, Hh, d).transpose(0, 1)
        logits = (q @ k.transpose(-1, -2) / math.sqrt(d) + bias).unsqueeze(0)  # (1, H, G, G)
    else:
        q, k = layer.qk(x).view(B, Gn, 2, Hh, d).unbind(2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, G, d)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
    logits = logits.masked_fill(~mask, float("-inf"))
    att = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0) * gain  # rows with no edge → 0
    v = layer.value(x).view(B, Gn, Hh, d).transpose(1, 2)  # (B, H, G, d)
    y = (att @ v).transpose(1, 2).reshape(B, Gn, Dn)
    return layer.out(y)


@pytest.mark.parametrize("mode", ["shared", "dynamic"])
def test_graph_attention_matches_dense_reference(mode):
    torch.manual_seed(0)
    ei, sign, w = _graph()
    layer = GraphAttention(D, H, G, ei, sign, w, mode=mode)
    with torch.no_grad():  # make the biases and gains non-trivial
        layer.sign_bias.weight.normal_()
        layer.weight_coef.normal_()
        layer.sign_gain.uniform_(-1.5, 1.5)
    x = torch.randn(3, G, D, requires_grad=True)
    y = layer(x)
    y_ref = _dense_reference(layer, x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    # gradients of the custom sparse backward agree with the dense path
    g1 = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()), allow_unused=True)
    g2 = torch.autograd.grad(y_ref.square().sum(), [x] + list(layer.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_shared_weights_sum_to_one_and_isolated_genes_get_zero():
    ei, sign, w = _graph()
    layer = GraphAttention(D, H, G, ei, sign, w, mode="shared")
    alpha = layer.shared_weights()  # (E, H)
    sums = torch.zeros(G, H).index_add_(0, layer.dst, alpha)
    has_in = torch.zeros(G, dtype=torch.bool)
    has_in[layer.dst] = True
    torch.testing.assert_close(sums[has_in], torch.ones(int(has_in.sum()), H))
    x = torch.randn(2, G, D)
    y = layer(x)
    assert torch.isfinite(y).all()
    # isolated genes 10, 11 receive no message: output is just the output bias
    torch.testing.assert_close(y[:, 10], layer.out.bias.expand(2, D))


def test_dynamic_weights_sum_to_one():
    ei, sign, w = _graph()
    layer = GraphAttention(D, H, G, ei, sign, w, mode="dynamic")
    alpha = layer.dynamic_weights(torch.randn(2, G, D))  # (B, E, H)
    sums = torch.zeros(2, G, H).index_add_(1, layer.dst, alpha)
    assert torch.allclose(sums[:, layer.dst], torch.ones_like(sums[:, layer.dst]))


def test_blocks_are_identity_at_init():
    ei, sign, w = _graph()
    h, c = torch.randn(3, G, D), torch.randn(3, D)
    for blk in (GraphDiTBlock(D, H, G, ei, sign, w, mode="shared"), GraphDiTBlock(D, H, G, ei, mode="dynamic"),
                TokenBlock(D, H)):
        torch.testing.assert_close(blk(h, c), h)


def _conditional_model(**kw):
    ei, sign, w = _graph()
    specs = [{"name": "cell_type", "kind": "categorical", "n_categories": 3},
             {"name": "dose", "kind": "continuous"},
             {"name": "drugs", "kind": "set", "n_categories": 4},
             {"name": "tissue>type", "kind": "hierarchical", "levels": [2, 5]}]
    membership = (torch.rand(G, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    return GRNTransformer(G, ei, sign, w, condition_specs=specs, membership=membership, hidden=D, heads=H,
                          depth=2, n_learned_modules=2, perturbation=True, **kw)


def _cond(B=4):
    return {"cell_type": torch.tensor([0, 1, 2, 3])[:B], "dose": torch.tensor([0.1, float("nan"), 2.0, -1.0])[:B],
            "drugs": torch.tensor([[1, 2], [2, 1], [0, 0], [4, 0]])[:B],
            "tissue>type": torch.tensor([[1, 3], [2, 5], [0, 0], [1, 1]])[:B]}


def test_model_output_zero_at_init_and_shapes():
    m = _conditional_model()
    x, t = torch.randn(4, G), torch.rand(4)
    pert = torch.tensor([[1, -1], [2, 11], [-1, -1], [0, -1]])
    v, extras = m(x, t, _cond(), pert, return_tokens=True)
    assert v.shape == (4, G) and torch.count_nonzero(v) == 0
    assert extras["tokens"].shape == (4, 5, D) and extras["activity"].shape == (4, 5)
    for other in (MLPVelocity(G, hidden=32), gene_token_transformer(G, hidden=D),
                  modules_only(G, torch.ones(G, 2), hidden=D)):
        assert torch.count_nonzero(other(x, t)) == 0


def _perturb_params(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_gene_permutation_equivariance():
    torch.manual_seed(0)
    ei, sign, w = _graph()
    membership = (torch.rand(G, 3) > 0.5).float()
    m1 = GRNTransformer(G, ei, sign, w, membership=membership, hidden=D, heads=H, depth=2, n_learned_modules=2)
    _perturb_params(m1)
    perm = torch.randperm(G)
    inv = torch.argsort(perm)  # new index of old gene g is inv[g]
    m2 = GRNTransformer(G, inv[ei], sign, w, membership=membership[perm], hidden=D, heads=H, depth=2,
                        n_learned_modules=2)
    sd = {}
    for k, v in m1.state_dict().items():  # gene-indexed parameters move with the genes
        sd[k] = v[perm] if k.endswith(("identity.weight", "gene_id", "assign_logits", "membership")) else v
        if k == "cell_embed.0.weight":  # the cell token reads genes as input columns
            sd[k] = v[:, perm]
    m2.load_state_dict(sd)
    x, t = torch.randn(3, G), torch.rand(3)
    torch.testing.assert_close(m2(x[:, perm], t), m1(x, t)[:, perm], atol=1e-5, rtol=1e-4)


def test_conditions_null_token_and_cfg():
    m = _conditional_model(cond_dropout=0.0)
    _perturb_params(m)
    m.eval()
    x, t, cond = torch.randn(4, G), torch.rand(4), _cond()
    v_c = m(x, t, cond)
    v_u = m(x, t, cond, force_drop=torch.ones(4, dtype=torch.bool))
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(m.forward_with_cfg(x, t, cond, guidance=1.0), v_c)
    torch.testing.assert_close(m.forward_with_cfg(x, t, cond, guidance=0.0), v_u, atol=1e-5, rtol=1e-4)
    w = 2.5
    torch.testing.assert_close(m.forward_with_cfg(x, t, cond, guidance=w), v_u + w * (v_c - v_u), atol=1e-5, rtol=1e-4)


def test_set_condition_is_permutation_invariant_and_missing_raises():
    emb = ConditionEmbedder([{"name": "drugs", "kind": "set", "n_categories": 5}], D, dropout_prob=0.0)
    a = emb({"drugs": torch.tensor([[1, 3, 0]])}, 1)
    b = emb({"drugs": torch.tensor([[3, 0, 1]])}, 1)
    torch.testing.assert_close(a, b)
    with pytest.raises(KeyError, match="drugs"):
        emb({}, 1)


def test_perturbation_flag_reaches_targets_through_graph():
    # gene 0 → gene 1 edge only; knocking out gene 0 must change v at gene 1 but not at gene 5
    ei = torch.tensor([[0], [1]])
    m = GRNTransformer(G, ei, hidden=D, heads=H, depth=2, perturbation=True)
    _perturb_params(m)
    x, t = torch.randn(2, G), torch.rand(2)
    v0 = m(x, t, None, torch.full((2, 1), -1))
    v1 = m(x, t, None, torch.tensor([[0], [0]]))
    assert (v1 - v0)[:, 1].abs().min() > 0
    assert not torch.allclose(v1[:, 1], v0[:, 1])


def test_perturbation_propagation_matches_dense_matrix_powers():
    # chain 0 -(+)-> 1 -(-)-> 2, plus 3 -(+)-> 2; a self-loop and a reverse edge must not propagate
    ei = torch.tensor([[0, 1, 3, 4, 1], [1, 2, 2, 4, 0]])
    sign = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])
    etype = torch.tensor([0, 0, 0, 2, 1])
    emb = PerturbationEmbedder(6, D, ei, sign, etype, hops=3)
    A = torch.zeros(6, 6)  # rows = targets, signed, in-degree normalised
    A[1, 0], A[2, 1], A[2, 3] = 1.0, -0.5, 0.5
    onehot = torch.zeros(2, 6)
    onehot[0, 0] = 1.0
    onehot[1, 3] = 1.0
    f = emb.propagated(onehot)  # (B, G, 2K)
    assert f.shape == (2, 6, 6)
    ref = onehot.T
    for k in range(3):
        ref = A @ ref
        torch.testing.assert_close(f[..., 2 * k], ref.T)
        torch.testing.assert_close(f[..., 2 * k + 1], (A.abs() @ (A.abs().matrix_power(k) @ onehot.T)).T)
    # knocking out gene 0 reaches gene 2 (two hops) with the repressive sign, not gene 5
    assert f[0, 2, 2] < 0 and f[0, 5].abs().sum() == 0
    node, _ = emb(torch.tensor([[0], [-1]]), torch.randn(6, D))
    assert node[1].abs().sum() == 0 and node[0, 2].abs().sum() > 0


def test_module_pooling_means_and_unpool_zero_at_init():
    M = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 0]])
    pool = ModulePooling(4, D, M)
    x = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
    torch.testing.assert_close(pool.pool_values(x), torch.tensor([[2.0, 5.0]]))
    assert torch.count_nonzero(pool.unpool(torch.randn(1, 2, D))) == 0


def test_block_graph_tiles_the_graph_and_its_transpose():
    ei, _, _ = _graph()
    layer = GraphAttention(D, H, G, ei, mode="dynamic")
    n_blocks = 3
    bg = BlockGraph(layer.src, layer.dst, G, n_blocks)
    vals = torch.randn(n_blocks, layer.n_edges)  # (n_blocks, E) in the layer's edge order
    blocks = []
    for b in range(n_blocks):
        a = torch.zeros(G, G)
        a[layer.dst, layer.src] = vals[b]
        blocks.append(a)
    dense = torch.block_diag(*blocks)
    n = n_blocks * G
    A = torch.sparse_csr_tensor(bg.crow, bg.col, vals.reshape(-1), (n, n), check_invariants=True)
    At = torch.sparse_csr_tensor(bg.crow_t, bg.col_t, vals.reshape(-1)[bg.perm_t], (n, n), check_invariants=True)
    torch.testing.assert_close(A.to_dense(), dense)
    torch.testing.assert_close(At.to_dense(), dense.T)
    torch.testing.assert_close(bg.row.long(), torch.arange(n).repeat_interleave(bg.crow.diff().long()))


def test_dynamic_attention_changing_batch_size_matches_dense_reference():
    torch.manual_seed(1)
    ei, sign, w = _graph()
    layer = GraphAttention(D, H, G, ei, sign, w, mode="dynamic")
    with torch.no_grad():
        layer.sign_bias.weight.normal_()
        layer.sign_gain.uniform_(-1.5, 1.5)
    for B in (4, 1, 4):  # one cached layout per batch size
        x = torch.randn(B, G, D)
        torch.testing.assert_close(layer(x), _dense_reference(layer, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["shared", "dynamic"])
def test_graph_attention_runs_under_bf16_autocast(mode):
    ei, sign, w = _graph()
    layer = GraphAttention(D, H, G, ei, sign, w, mode=mode)
    x = torch.randn(2, G, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(y.float(), layer(x), atol=5e-2, rtol=5e-2)


# ------------------------------------------------------------------ cross-attention conditioning
def test_cross_condition_gene_major_equals_batch_major():
    from grndiff.nn.blocks import CrossCondition
    torch.manual_seed(0)
    cc = CrossCondition(D, H)
    _perturb_params(cc)
    x, ctx = torch.randn(3, 7, D), torch.randn(3, 2, D)  # (B, N, D), (B, K, D)
    torch.testing.assert_close(cc(x.transpose(0, 1), ctx, gene_major=True).transpose(0, 1), cc(x, ctx))
    y = cc(x, ctx)  # each cell attends to its own tokens only
    ctx2 = ctx.clone()
    ctx2[1] += 1.0
    y2 = cc(x, ctx2)
    torch.testing.assert_close(y2[[0, 2]], y[[0, 2]])
    assert not torch.allclose(y2[1], y[1])


def test_cross_attention_conditioning_starts_at_zero_and_reads_every_condition():
    """conditioning="cross_attention": v ≡ 0 at init; with weights away from 0, changing any one
    condition (or the perturbation) changes v, as under adaLN; guidance mixes the two halves."""
    with pytest.raises(ValueError, match="conditioning must be one of"):
        _conditional_model(conditioning="film")
    torch.manual_seed(0)
    m = _conditional_model(conditioning="cross_attention").eval()
    adaln = _conditional_model()
    assert sum(p.numel() for p in m.parameters()) > sum(p.numel() for p in adaln.parameters())
    x, t = torch.randn(4, G), torch.rand(4)
    pert = torch.tensor([[1, -1], [2, 11], [-1, -1], [0, -1]])
    assert torch.count_nonzero(m(x, t, _cond(), pert)) == 0
    _perturb_params(m)
    v = m(x, t, _cond(), pert)
    for key in _cond():
        cond = _cond()
        cond[key] = torch.roll(cond[key], 1, dims=0)
        assert not torch.allclose(m(x, t, cond, pert), v), key
    assert not torch.allclose(m(x, t, _cond(), torch.full_like(pert, -1)), v)
    v_u = m(x, t, _cond(), pert, force_drop=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(m.forward_with_cfg(x, t, _cond(), pert, guidance=2.0), v_u + 2.0 * (v - v_u))
