"""The validation gate (grndiff.gate): which groups it hides, how it chooses the flow weight, and
what predict() then returns — the network is used only where it beat its own transport on groups
it never saw."""
import numpy as np
import pandas as pd
import pytest

import grndiff as gd
from grndiff.data import GRNDiffWarning
from grndiff.gate import ALPHAS, choose_alpha, gate_split, score_alphas


def _obs(contexts, labels, n=12):
    rows = [(c, lab) for c in contexts for lab in labels for _ in range(n)]
    return pd.DataFrame(rows, columns=["cell_type", "condition"], index=[f"c{i}" for i in range(len(rows))])


def test_split_hides_whole_contexts_when_a_perturbation_was_seen_in_three():
    obs = _obs(["A", "B", "C", "D", "E"], ["ctrl", "stim"])
    control = (obs["condition"] == "ctrl").to_numpy()
    setup = {"condition_keys": ["cell_type", "condition"]}
    split = gate_split(obs, control, setup, ["cell_type"], seed=0)
    assert split.unit == "context" and len(split.groups) == 1
    name, truth, ctrl, conditions = split.groups[0]
    hidden_types = set(obs["cell_type"].to_numpy()[split.hidden])
    assert len(hidden_types) == 1 and not control[split.hidden].any()  # perturbed cells of one context only
    assert split.hidden.sum() == 12 and np.array_equal(np.flatnonzero(split.hidden), truth)
    assert set(obs["cell_type"].to_numpy()[ctrl]) == hidden_types and control[ctrl].all()
    assert conditions == {"condition": "stim"} and name.startswith("stim @ ")
    # another seed may hide another context; the same seed the same one
    assert np.array_equal(gate_split(obs, control, setup, ["cell_type"], seed=0).hidden, split.hidden)


def test_split_hides_whole_perturbations_for_knockouts_and_explains_when_it_cannot():
    obs = pd.DataFrame({"perturbation": ["control"] * 40 + [g for g in "ABCDE" for _ in range(12)]})
    control = (obs["perturbation"] == "control").to_numpy()
    setup = {"perturbation_key": "perturbation", "condition_keys": []}
    split = gate_split(obs, control, setup, None, fraction=0.4)
    assert split.unit == "perturbation" and len(split.groups) == 2
    assert set(obs["perturbation"][split.hidden]) == {g[3]["perturbation"] for g in split.groups}
    few = obs[obs["perturbation"].isin(["control", "A", "B"])].reset_index(drop=True)
    why = gate_split(few, (few["perturbation"] == "control").to_numpy(), setup, None)
    assert isinstance(why, str) and "2 perturbation" in why


def test_alpha_is_the_smallest_of_the_best_and_scores_blend_linearly():
    rng = np.random.default_rng(0)
    ctrl = rng.normal(size=(30, 40))
    truth = ctrl + np.linspace(-2, 2, 40)
    transport = ctrl + np.linspace(-2, 2, 40) * 0.5 + rng.normal(scale=0.5, size=40)  # right direction, noisy
    flow = ctrl - np.linspace(-2, 2, 40)  # the wrong direction
    s = score_alphas(transport, flow, truth, ctrl)
    assert len(s) == len(ALPHAS) and s[0] > 0.8 and s[-1] < -0.99
    table = pd.DataFrame({"group": "g", "alpha": ALPHAS, "pearson_delta_top20": s})
    assert choose_alpha(table) == 0.0
    tie = pd.DataFrame({"group": "g", "alpha": ALPHAS, "pearson_delta_top20": [0.5, 0.9, 0.9, 0.7, np.nan]})
    assert choose_alpha(tie) == 0.25


@pytest.fixture(scope="module")
def kang_small():
    a = gd.datasets.kang2018()
    keep = np.argsort(-np.asarray(a.layers["counts"].mean(0)).ravel())[:150]
    rows = np.random.default_rng(0).permutation(a.n_obs)[:700]
    a = a[np.sort(rows)][:, np.sort(keep)].copy()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["cell_type", "condition"],
                             control_obs={"condition": "ctrl"})
    return a


def test_gate_is_stored_shown_saved_and_used_by_predict(kang_small, tmp_path):
    a = kang_small
    before = a.copy()
    m = gd.GRNDiff(a, prior="collectri", modules=None, hidden=8, depth=1, token_depth=0)
    m.train(max_steps=6, max_epochs=100, progress_bar=False)
    assert m.gate_["unit"] == "context" and m.gate_["alpha"] in ALPHAS
    v = m.validation_
    assert set(v["alpha"]) == set(ALPHAS) and len(v) == len(ALPHAS) * len(m.gate_["groups"])
    assert "gate: flow weight" in repr(m)
    ctrl = a[(a.obs["condition"] == "ctrl").to_numpy()][:40].copy()
    x_t = m.predict(ctrl, {"condition": "stim"}, flow=False, clip=False).X
    x_f = m.predict(ctrl, {"condition": "stim"}, flow=True, clip=False, n_steps=4).X
    assert not np.allclose(x_t, x_f)  # the trained flow moves the cells
    for alpha in (0.0, 0.5, 1.0):
        m.gate_["alpha"] = alpha
        got = m.predict(ctrl, {"condition": "stim"}, clip=False, n_steps=4).X
        np.testing.assert_allclose(got, x_t + alpha * (x_f - x_t), atol=1e-5)
    m.gate_["alpha"] = 0.25
    m.save(tmp_path / "m")
    back = gd.GRNDiff.load(tmp_path / "m")
    assert back.gate_ == m.gate_ and back.flow_weight == 0.25
    pd.testing.assert_frame_equal(back.validation_, m.validation_, check_dtype=False)
    # nothing of the user's AnnData changed
    assert a.obs.equals(before.obs) and (a.layers["counts"] != before.layers["counts"]).nnz == 0


def test_without_enough_contexts_the_gate_warns_and_keeps_the_transport(kang_small):
    a = kang_small
    two = a[a.obs["cell_type"].isin(sorted(set(a.obs["cell_type"]))[:2]).to_numpy()].copy()
    m = gd.GRNDiff(two, prior="collectri", modules=None, hidden=8, depth=1, token_depth=0)
    with pytest.warns(GRNDiffWarning, match="validation gate"):
        m.train(max_steps=3, max_epochs=100, progress_bar=False)
    assert m.flow_weight == 0.0 and m.gate_["unit"] is None
    ctrl = two[(two.obs["condition"] == "ctrl").to_numpy()][:10].copy()
    np.testing.assert_array_equal(m.predict(ctrl, {"condition": "stim"}).X,
                                  m.predict(ctrl, {"condition": "stim"}, flow=False).X)
    off = gd.GRNDiff(two, prior="collectri", modules=None, hidden=8, depth=1, token_depth=0)
    off.train(max_steps=3, max_epochs=100, progress_bar=False, gate=False)
    assert off.gate_ is None and off.flow_weight == 1.0
    with pytest.raises(ValueError, match="gate"):
        off.train(max_steps=1, gate="sometimes")


def test_context_conditioning_off_hides_the_context_from_the_network(kang_small):
    m = gd.GRNDiff(kang_small, prior="collectri", modules=None, hidden=8, depth=1, token_depth=0,
                   context_conditioning=False)
    cond = {"cell_type": np.array([1, 2, 3]), "condition": np.array([2, 2, 1])}
    import torch
    seen = m.module.net_conditions({k: torch.as_tensor(v) for k, v in cond.items()})
    assert seen["cell_type"].eq(0).all() and torch.equal(seen["condition"], torch.tensor([2, 2, 1]))
    on = gd.GRNDiff(kang_small, prior="collectri", modules=None, hidden=8, depth=1, token_depth=0)
    assert torch.equal(on.module.net_conditions({"cell_type": torch.tensor([3])})["cell_type"], torch.tensor([3]))


def test_default_coupling_trains_kang_exactly_as_the_lowrank_one(kang_small):
    """coupling='auto' changes nothing where the perturbation was seen in several contexts (Kang)."""
    import torch
    kw = dict(prior="collectri", modules=None, hidden=8, depth=1, token_depth=0, seed=3)
    auto = gd.GRNDiff(kang_small, **kw).train(max_steps=5, max_epochs=100, progress_bar=False, gate=False)
    low = gd.GRNDiff(kang_small, source={"name": "shifted_control", "coupling": "lowrank"}, **kw)
    low.train(max_steps=5, max_epochs=100, progress_bar=False, gate=False)
    assert auto.config["source"]["coupling"] == "auto"
    for (k, a), (_, b) in zip(auto.module.net.state_dict().items(), low.module.net.state_dict().items()):
        assert torch.equal(a, b), k
    ctrl = kang_small[(kang_small.obs["condition"] == "ctrl").to_numpy()][:20].copy()
    np.testing.assert_array_equal(auto.predict(ctrl, {"condition": "stim"}, n_steps=3).X,
                                  low.predict(ctrl, {"condition": "stim"}, n_steps=3).X)


class _Trainer:
    def __init__(self):
        self.global_step, self.should_stop = 0, False


class _Module:
    """What ScoreStopping touches: a state dict with ``net.`` and ``ema.`` entries."""

    def __init__(self):
        import torch
        self.net = torch.nn.Linear(2, 2)
        self.ema = torch.nn.Linear(2, 2)
        self.other = torch.nn.Linear(2, 2)

    def state_dict(self):
        return {f"{n}.{k}": v for n in ("net", "ema", "other") for k, v in getattr(self, n).state_dict().items()}

    def load_state_dict(self, state, strict=True):
        for n in ("net", "ema", "other"):
            part = {k[len(n) + 1:]: v for k, v in state.items() if k.startswith(n + ".")}
            if part:
                getattr(self, n).load_state_dict(part)


def test_score_stopping_stops_after_patience_and_puts_back_the_best_network():
    import torch

    from grndiff.train import ScoreStopping
    scores = iter([0.55, 0.70, 0.69, 0.705])  # baseline 0.6: step 10 is best; 0.705 is within min_delta
    cb = ScoreStopping(lambda step: next(scores), every=5, patience=2, baseline=0.6, min_delta=0.01)
    tr, mod = _Trainer(), _Module()
    best_w = None
    for step in range(1, 21):
        tr.global_step = step
        with torch.no_grad():
            mod.net.weight.add_(1.0)  # training moves the weights every step
        cb.on_train_batch_end(tr, mod, None, None, step)
        if step == 10:
            best_w = mod.net.weight.clone()
        if tr.should_stop:
            break
    assert [c["step"] for c in cb.checks] == [5, 10, 15, 20] and cb.best_step == 10 and cb.stopped_step == 20
    assert tr.should_stop and cb.best == 0.70
    other = mod.other.weight.clone()
    cb.on_train_end(tr, mod)
    assert torch.equal(mod.net.weight, best_w) and torch.equal(mod.other.weight, other)  # only net/ema restored
    # a score that never beats the baseline: stops after `patience` checks and keeps the last weights
    flat = ScoreStopping(lambda step: 0.5, every=3, patience=2, baseline=0.6)
    tr, mod = _Trainer(), _Module()
    for step in range(1, 30):
        tr.global_step = step
        flat.on_train_batch_end(tr, mod, None, None, step)
        if tr.should_stop:
            break
    last = mod.net.weight.clone()
    flat.on_train_end(tr, mod)
    assert flat.stopped_step == 6 and flat.best_step is None and torch.equal(mod.net.weight, last)
    with pytest.raises(ValueError, match="patience"):
        ScoreStopping(lambda step: 0.0, every=5, patience=0)


def test_train_stops_on_the_gate_and_keeps_the_kept_networks_table(kang_small):
    kw = dict(prior="collectri", modules=None, hidden=8, depth=1, token_depth=0, seed=1)
    m = gd.GRNDiff(kang_small, **kw)
    m.train(max_steps=40, max_epochs=100, progress_bar=False, check_every=4, patience=2)
    checks = m.gate_["checks"]
    steps = [c["step"] for c in checks]
    assert steps and all(s % 4 == 0 for s in steps) and steps == sorted(steps)
    best = m.gate_["best_step"]
    stopped = m.gate_["stopped_step"]
    if stopped is not None:  # stopped early: `patience` checks after the best (or after the start)
        assert stopped == steps[-1] < 40 and stopped - (best or 0) == 2 * 4
        assert f"stopped early at step {stopped}" in repr(m)
    kept = best if best is not None else steps[-1]
    score = {c["step"]: c["score"] for c in checks}[kept]
    mean = m.validation_.groupby("alpha")["pearson_delta_top20"].mean()
    assert mean.max() == pytest.approx(score)  # validation_ is the kept network's check
    assert m.gate_["alpha"] == choose_alpha(m.validation_)
    # off: every step trained, the gate scores the final network, no checks recorded
    off = gd.GRNDiff(kang_small, **kw).train(max_steps=12, max_epochs=100, progress_bar=False, early_stopping=False)
    assert "checks" not in off.gate_ and set(off.validation_["alpha"]) == set(ALPHAS)
    with pytest.raises(ValueError, match="check_every"):
        off.train(max_steps=1, check_every=0)
