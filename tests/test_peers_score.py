"""benchmarks/peer_scores.py: peer prediction files are scored by grndiff's own scorer.

No peer environment is needed: two fake predictions for one Kang cell type are written the way
the peer scripts write them (benchmarks/peers/_common.py) — one equal to the true stimulated
cells, one equal to the control cells — and must score ρΔ20 ≈ 1 and NaN (no predicted change).
"""
from __future__ import annotations

import json
import math

import _common  # benchmarks/peers/ (pytest's pythonpath, pyproject.toml)
import numpy as np
import pytest
from peer_scores import find_predictions, peer_records

T = "B cells"
FIELDS = {"dataset", "method", "seed", "group", "metric", "value"}


@pytest.fixture(scope="module")
def kang():
    a = _common.load_kang()
    X = _common.log1p_cp10k(a.layers["counts"])
    held, is_ctrl = _common.kang_masks(a, T)
    return a, X, held, is_ctrl


def test_peer_loader_matches_grndiff(kang):
    import grndiff as gd
    from grndiff.data import log1p_normalized_copy
    a, X, _, _ = kang
    ref = gd.datasets.kang2018()
    assert list(a.var_names) == list(ref.var_names) and list(a.obs_names) == list(ref.obs_names)
    for c in ("cell_type", "condition", "donor"):
        assert (a.obs[c].astype(str) == ref.obs[c].astype(str)).all()
    np.testing.assert_allclose(X, log1p_normalized_copy(ref, layer="counts").X.toarray(), atol=1e-5)


def test_peer_records_scores_fake_predictions(tmp_path, kang):
    a, X, held, is_ctrl = kang
    obs = a.obs[is_ctrl]
    _common.write_pred(tmp_path, "scgen", T, X[held], a.obs[held], a.var_names)  # a perfect prediction
    _common.write_pred(tmp_path, "cpa", T, X[is_ctrl], obs, a.var_names)  # no change at all
    _common.write_pred(tmp_path, "not_a_peer", T, X[held], a.obs[held], a.var_names)  # ignored
    _common.update_run_info(tmp_path, "scgen", {"cap": None, "groups": {T: {"seconds": 1.5}}})
    assert (tmp_path / "pred_scgen_B_cells.h5ad").exists()
    assert set(find_predictions(tmp_path, groups=[T])) == {("scgen", T), ("cpa", T)}

    recs = peer_records(tmp_path)
    assert recs and all(set(r) == FIELDS for r in recs)
    assert {r["dataset"] for r in recs} == {"kang2018"} and {r["group"] for r in recs} == {T}
    val = {(r["method"], r["metric"]): r["value"] for r in recs}
    assert val[("scgen", "pearson_delta_top20")] == pytest.approx(1.0, abs=1e-6)
    assert val[("scgen", "pearson_delta_all")] == pytest.approx(1.0, abs=1e-6)
    assert abs(val[("scgen", "energy_distance")]) < 0.5  # unbiased estimate: ≈ 0 up to sampling noise
    assert val[("scgen", "train_seconds")] == 1.5
    cpa = val[("cpa", "pearson_delta_top20")]
    assert cpa is None or math.isnan(cpa) or abs(cpa) < 1e-6
    assert val[("cpa", "energy_distance")] > 1.0
    assert json.loads((tmp_path / "run_info.json").read_text())["scgen"]["groups"][T]["seconds"] == 1.5


def test_wrong_genes_are_refused(tmp_path, kang):
    a, X, held, _ = kang
    _common.write_pred(tmp_path, "cellflow", T, X[held][:, :10], a.obs[held], a.var_names[:10])
    with pytest.raises(ValueError, match="genes"):
        peer_records(tmp_path)


def test_seed_folders_become_seeds(tmp_path, kang):
    a, X, held, is_ctrl = kang
    _common.write_pred(tmp_path, "scgen", T, X[held], a.obs[held], a.var_names)  # seed 0: perfect
    _common.write_pred(tmp_path / "seed2", "scgen", T, X[is_ctrl], a.obs[is_ctrl], a.var_names)  # seed 2: no change
    (tmp_path / "seedling").mkdir()  # not a seed folder: ignored
    recs = [r for r in peer_records(tmp_path) if r["metric"] == "energy_distance"]
    by_seed = {r["seed"]: r["value"] for r in recs}
    assert set(by_seed) == {0, 2} and by_seed[2] > 1.0 > abs(by_seed[0])
