"""ShiftedControlSource: the cell-state-dependent shift, its leave-one-context-out training pairs,
the low-rank constraint and its state dict (pure torch, synthetic data with a known answer)."""
import pytest
import torch

from grndiff import flow

G = 12


def _data(seed=0, n=60):
    """Three contexts (codes 1, 2, 3) on two well-separated states; perturbation code 2 adds a
    shift that depends on the state: +3 on gene 0 in state A (contexts 1, 2), +3 on gene 1 in
    state B (context 3). Condition "condition": 1 = ctrl, 2 = stim."""
    g = torch.Generator().manual_seed(seed)
    xs, ctx, lab = [], [], []
    for c, base in ((1, 0.0), (2, 0.3), (3, 8.0)):
        centre = torch.zeros(G)
        centre[2:] = base
        for cond in (1, 2):
            x = centre + 0.1 * torch.randn(n, G, generator=g)
            if cond == 2:
                x[:, 0 if c < 3 else 1] += 3.0
            xs.append(x)
            ctx += [c] * n
            lab += [cond] * n
    cond = {"cell_type": torch.tensor(ctx), "condition": torch.tensor(lab)}
    return torch.cat(xs), cond


def _source(**kw):
    specs = [{"name": "cell_type", "kind": "categorical", "n_categories": 3},
             {"name": "condition", "kind": "categorical", "n_categories": 2}]
    kw = {"blend": 1.0, **kw}  # the neighbour estimate alone unless a test blends it
    return flow.ShiftedControlSource(k=4, match_dims=4, neighbours=5, **kw).build(G, specs, None, ["cell_type"])


def test_shift_follows_the_cell_state_of_the_nearest_training_context():
    x, cond = _data()
    keep = ~((cond["cell_type"] == 2) & (cond["condition"] == 2))  # hold out stim cells of context 2
    src = _source().fit(x[keep], {k: v[keep] for k, v in cond.items()}, None, (cond["condition"] == 1)[keep])
    ctrl2 = x[(cond["cell_type"] == 2) & (cond["condition"] == 1)]
    target = {"cell_type": torch.full((len(ctrl2),), 2), "condition": torch.full((len(ctrl2),), 2)}
    moved = src.transport(ctrl2, target) - ctrl2
    # context 2 looks like context 1 (state A): its shift is gene 0's, not the mean of A and B
    assert moved[:, 0].mean() > 2.7 and moved[:, 1].abs().mean() < 0.3
    mean_shift = _source(blend=0.0).fit(x[keep], {k: v[keep] for k, v in cond.items()}, None,
                                        (cond["condition"] == 1)[keep])
    m = mean_shift.transport(ctrl2, target) - ctrl2  # blend 0: the mean over contexts 1 and 3
    assert 1.2 < m[:, 0].mean() < 1.8 and 1.2 < m[:, 1].mean() < 1.8
    # control target: no shift; an unseen perturbation gets the pooled shift
    same = {"cell_type": target["cell_type"], "condition": torch.ones(len(ctrl2), dtype=torch.long)}
    assert torch.equal(src.transport(ctrl2, same), ctrl2)
    # the default blends 3:1 with the mean shift (0.75 · 3 + 0.25 · 1.5 on gene 0)
    blended = _source(blend=0.75).fit(x[keep], {k: v[keep] for k, v in cond.items()}, None,
                                      (cond["condition"] == 1)[keep])
    assert flow.ShiftedControlSource().blend == 0.75
    b = blended.transport(ctrl2, target) - ctrl2
    assert 2.4 < b[:, 0].mean() < 2.85 and 0.2 < b[:, 1].mean() < 0.55
    with pytest.raises(ValueError, match="blend"):
        flow.ShiftedControlSource(blend=1.5)


def test_training_pairs_leave_the_cell_context_out_and_stay_on_its_axes():
    x, cond = _data(1)
    control = cond["condition"] == 1
    src = _source().fit(x, cond, None, control)
    stim1 = (cond["cell_type"] == 1) & (cond["condition"] == 2)
    x1 = x[stim1]
    ctrl1 = x[(cond["cell_type"] == 1) & control][: x1.shape[0]]
    c = {k: v[stim1] for k, v in cond.items()}
    lab, ctx = src._ids(c, None, x1.shape[0])
    loo = src.shift(ctrl1, lab, exclude_ctx=ctx)
    full = src.shift(ctrl1, lab)
    # context 1 left out: its nearest training context is 2 (the same state, the same shift)
    assert loo[:, 0].mean() > 2.7 and full[:, 0].mean() > 2.7
    x0 = src.pair(x1, c, None, ctrl1)
    d = x1 - x0  # the low-rank coupling: x₁ − x₀ has no component on the k axes
    torch.testing.assert_close(src.axes._scores(d), torch.zeros(d.shape[0], src.k), atol=1e-4, rtol=0)
    torch.testing.assert_close(src.constrain(d), d, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="control cells"):
        _source().fit(x, cond, None, torch.zeros(len(x), dtype=torch.bool))


def test_state_dict_round_trip_resizes_the_bank():
    x, cond = _data(2)
    src = _source().fit(x, cond, None, cond["condition"] == 1)
    fresh = _source()
    fresh.load_state_dict(src.state_dict())
    ctrl = x[:10]
    target = {"cell_type": torch.full((10,), 3), "condition": torch.full((10,), 2)}
    assert fresh.fitted and torch.equal(fresh.transport(ctrl, target), src.transport(ctrl, target))
    with pytest.raises(ValueError, match="generate"):
        fresh.draw(3)
    with pytest.raises(ValueError, match="match_keys"):
        flow.ShiftedControlSource().build(G, [], None, ["cell_type"])


def test_residual_coupling_trains_on_the_estimate_error_on_the_axes():
    x, cond = _data(3)
    control = cond["condition"] == 1
    src = _source(coupling="residual").fit(x, cond, None, control)
    low = _source(coupling="lowrank").fit(x, cond, None, control)
    stim3 = (cond["cell_type"] == 3) & (cond["condition"] == 2)
    x1, c = x[stim3], {k: v[stim3] for k, v in cond.items()}
    ctrl3 = x[(cond["cell_type"] == 3) & control][: x1.shape[0]]
    # context 3 left out, its nearest contexts (state A) shift gene 0, not gene 1: the estimate's error
    lab, ctx = src._ids(c, None, x1.shape[0])
    q = [i for i, (a, b) in enumerate(zip(src.pair_label.tolist(), src.pair_ctx.tolist()))
         if (a, b) == (lab[0], ctx[0])]
    err = src.pair_err[q[0]]
    assert err[0] > 2.0 and err[1] < -2.0  # estimate − truth: +3 on gene 0, −3 on gene 1
    d = x1 - src.pair(x1, c, None, ctrl3)
    # on the axes x₁ − x₀ is the same for every cell of the group: minus the stored error
    on = src.axes._scores(d)
    torch.testing.assert_close(on, (-src.axes._scores(err[None])).expand_as(on), atol=1e-3, rtol=0)
    # off the axes it is the low-rank coupling's, and the velocity is left free
    d_low = x1 - low.pair(x1, c, None, ctrl3)
    torch.testing.assert_close(src.axes.project_off(d), d_low, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(src.constrain(d), d)
    # prediction is unchanged: an untrained model is the transport, whatever the coupling
    target = {"cell_type": torch.full((10,), 3), "condition": torch.full((10,), 2)}
    assert torch.equal(src.transport(x[:10], target), low.transport(x[:10], target))
    # a state dict saved before pair_err existed still loads (zero errors)
    state = {k: v for k, v in src.state_dict().items() if k != "pair_err"}
    old = _source(coupling="residual")
    old.load_state_dict(state)
    assert old.pair_err.shape == src.pair_err.shape and not old.pair_err.any()
    with pytest.raises(ValueError, match="coupling"):
        flow.ShiftedControlSource(coupling="diagonal")


def test_residual_coupling_for_a_perturbation_seen_in_one_context_leaves_the_perturbation_out():
    # knock-out style: one context, three perturbations with different shifts
    g = torch.Generator().manual_seed(0)
    xs, lab = [], []
    for code, gene in ((1, None), (2, 0), (3, 1), (4, 2)):
        x = 0.1 * torch.randn(40, G, generator=g)
        if gene is not None:
            x[:, gene] += 3.0
        xs.append(x)
        lab += [code] * 40
    x = torch.cat(xs)
    cond = {"cell_type": torch.ones(len(lab), dtype=torch.long), "condition": torch.tensor(lab)}
    src = _source(coupling="residual").fit(x, cond, None, cond["condition"] == 1)
    q = [i for i, lb in enumerate(src.pair_label.tolist()) if src.label_table[lb][0] == 2][0]  # perturbation 2
    err = src.pair_err[q]  # pooled shift of 3 and 4 (+1.5 on genes 1, 2) minus its own (+3 on gene 0)
    assert err[0] < -2.0 and err[1] > 1.0 and err[2] > 1.0


def test_auto_coupling_is_lowrank_for_perturbations_seen_in_several_contexts_residual_otherwise():
    x, cond = _data(4)  # "stim" seen in three contexts
    control = cond["condition"] == 1
    auto = _source().fit(x, cond, None, control)
    assert auto.coupling == "auto"
    low = _source(coupling="lowrank").fit(x, cond, None, control)
    c = {k: v[::7] for k, v in cond.items()}
    x1, xc = x[::7], x[1::7][: x[::7].shape[0]]
    torch.testing.assert_close(auto.pair(x1, c, None, xc), low.pair(x1, c, None, xc))
    v = torch.randn(x1.shape)
    torch.testing.assert_close(auto.constrain(v, c, None), low.constrain(v, c, None))
    # a perturbation never seen (code 3 is not in the bank) moves freely; control cells do not
    unseen = {"cell_type": torch.tensor([1, 1]), "condition": torch.tensor([3, 1])}
    out = auto.constrain(v[:2], unseen, None)
    torch.testing.assert_close(out[0], v[0])
    torch.testing.assert_close(out[1], low.constrain(v[1:2])[0])
    # knock-out style (one context, several perturbations): auto equals residual
    g = torch.Generator().manual_seed(1)
    xs, lab = [], []
    for code, gene in ((1, None), (2, 0), (3, 1), (4, 2)):
        xk = 0.1 * torch.randn(30, G, generator=g)
        if gene is not None:
            xk[:, gene] += 3.0
        xs.append(xk)
        lab += [code] * 30
    xk, ck = torch.cat(xs), {"cell_type": torch.ones(len(lab), dtype=torch.long), "condition": torch.tensor(lab)}
    a2 = _source().fit(xk, ck, None, ck["condition"] == 1)
    r2 = _source(coupling="residual").fit(xk, ck, None, ck["condition"] == 1)
    sel = ck["condition"] > 1
    csel = {k: v_[sel] for k, v_ in ck.items()}
    torch.testing.assert_close(a2.pair(xk[sel], csel, None, xk[:int(sel.sum())]),
                               r2.pair(xk[sel], csel, None, xk[:int(sel.sum())]))
    w = torch.randn(int(sel.sum()), G)
    torch.testing.assert_close(a2.constrain(w, csel, None), w)


def _knockouts(seed=0, n=80):
    """One context; control + knock-outs of genes 3, 4, 5, 6 (perturbed-node index in ``pert``),
    each lowering its own gene by 2 (scaled units) and raising gene 0 by 1; gene 7's knock-out is
    held out."""
    g = torch.Generator().manual_seed(seed)
    xs, perts = [], []
    for target in (-1, 3, 4, 5, 6, 7):
        x = 0.1 * torch.randn(n, G, generator=g)
        if target >= 0:
            x[:, target] -= 2.0
            x[:, 0] += 1.0
        xs.append(x)
        perts.append(torch.full((n, 1), target))
    return torch.cat(xs), torch.cat(perts)


def _ko_source(**kw):
    specs = [{"name": "cell_type", "kind": "categorical", "n_categories": 1}]
    return flow.ShiftedControlSource(k=4, match_dims=4, neighbours=5, **kw).build(G, specs, None, [])


def test_an_unseen_knockout_lowers_its_own_gene_by_what_the_seen_ones_did():
    x, pert = _knockouts()
    cond = {"cell_type": torch.ones(len(x), dtype=torch.long)}
    train = pert[:, 0] != 7
    control = pert[:, 0] < 0
    ctrl = x[control]
    new = {"cell_type": torch.ones(len(ctrl), dtype=torch.long)}
    src = _ko_source().fit(x[train], {"cell_type": cond["cell_type"][train]}, pert[train], control[train])
    assert torch.allclose(src.own_log[torch.isfinite(src.own_log)], torch.full((4,), -2.0), atol=0.1)
    moved = src.transport(ctrl, new, torch.full((len(ctrl), 1), 7)) - ctrl
    assert abs(moved[:, 7].mean() + 2.0) < 0.15 and abs(moved[:, 0].mean() - 1.0) < 0.15  # own drop + pooled
    assert moved[:, 3:7].mean(0).abs().max() < 0.8  # the others' own genes: only their pooled share (−0.5)
    off = _ko_source(own_effect=False).fit(x[train], {"cell_type": cond["cell_type"][train]}, pert[train],
                                            control[train])
    plain = off.transport(ctrl, new, torch.full((len(ctrl), 1), 7)) - ctrl
    assert plain[:, 7].abs().mean() < 0.1  # the pooled shift of the others cannot know gene 7
    seen = src.transport(ctrl, new, torch.full((len(ctrl), 1), 4)) - ctrl  # a seen knock-out: its own shift
    assert abs(seen[:, 4].mean() + 2.0) < 0.15 and seen[:, 7].abs().mean() < 0.1
    # training pairs that leave a knock-out out start from the same estimate, without its own value
    x1 = x[pert[:, 0] == 3]
    x0 = src.pair(x1, {"cell_type": torch.ones(len(x1), dtype=torch.long)}, torch.full((len(x1), 1), 3),
                  x[control][: len(x1)])
    assert abs((x0 - x[control][: len(x1)])[:, 3].mean() + 2.0) < 0.3
    # a model saved before own_log loads with no own effect
    state = src.state_dict()
    del state["own_log"], state["own_genes"]
    old = _ko_source()
    old.load_state_dict(state)
    assert torch.allclose(old.transport(ctrl, new, torch.full((len(ctrl), 1), 7)), plain + ctrl, atol=1e-5)
