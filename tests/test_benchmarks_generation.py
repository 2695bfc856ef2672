"""benchmarks/generation.py --quick: runs end to end, writes tidy records, and the metric resolves.

Kept under a minute: kang2018 only, the cheap rows plus one tiny grndiff (30 steps).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs the benchmark script as a subprocess

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "generation.py"
FIELDS = {"dataset", "method", "seed", "group", "metric", "value"}


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("generation")
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                          "--methods", "real_vs_real,gaussian,grndiff"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "generation.json").read_text()), (out / "generation.md").read_text()


def test_schema(quick_result):
    obj, md = quick_result
    assert {"command", "commit", "machine", "records"} <= set(obj)
    assert obj["command"].startswith("python benchmarks/generation.py --quick")
    recs = obj["records"]
    assert recs and all(set(r) == FIELDS for r in recs)
    assert all(isinstance(r["value"], (int, float)) or r["value"] is None for r in recs)
    assert {r["method"] for r in recs} == {"real_vs_real", "gaussian", "grndiff", "grndiff_counts"}
    metrics = {r["metric"] for r in recs}
    assert {"energy_distance", "mmd_rbf", "w2", "classifier_auc", "mean_pearson", "var_pearson",
            "zero_frac_error", "marker_overlap", "tf_target_corr", "tf_target_corr_pooled"} <= metrics
    assert "wasserstein2" not in metrics  # renamed to w2
    assert any(r["metric"] == "train_seconds" and r["method"] == "grndiff" for r in recs)
    groups = {r["group"] for r in recs}
    assert "all" in groups and len(groups) > 2  # per-group rows and the average
    assert "| real_vs_real |" in md and str(ROOT) not in md and str(ROOT) not in json.dumps(obj)


def test_counts_row_has_the_zeros_the_log1p_values_lack(quick_result):
    """grndiff_counts = the same cells as counts (sample(counts="nearest")): exact zeros come back."""
    obj, md = quick_result
    zero = {r["method"]: r["value"] for r in obj["records"] if r["metric"] == "zero_frac_error" and r["group"] == "all"}
    assert zero["grndiff_counts"] < zero["grndiff"] - 0.1
    assert md.index("| grndiff |") < md.index("| grndiff_counts |")  # right after its method


def test_real_vs_real_below_gaussian(quick_result):
    obj, _ = quick_result
    ed = {r["method"]: r["value"] for r in obj["records"]
          if r["metric"] == "energy_distance" and r["group"] == "all"}
    assert ed["real_vs_real"] < ed["gaussian"]


def test_budget_cuts_whole_rows_and_says_so(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--max-minutes", "0",
                          "--methods", "real_vs_real,gaussian"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    obj = json.loads((tmp_path / "generation.json").read_text())
    assert obj["records"] == []
    assert any("kang2018/real_vs_real/seed0" in n and "kang2018/gaussian/seed0" in n for n in obj["notes"])


def test_spread_table_shows_mean_sd_and_seed_count():
    from generation import summary_markdown
    recs = [{"dataset": "kang2018", "method": "grndiff", "seed": s, "group": "all", "metric": "energy_distance",
             "value": v} for s, v in enumerate((1.0, 2.0, 3.0))]
    recs.append({"dataset": "kang2018", "method": "gaussian", "seed": 0, "group": "all",
                 "metric": "energy_distance", "value": 5.0})
    md = summary_markdown(recs)
    assert "| grndiff | all | 2 ± 1.000 (n=3) |" in md and "| gaussian | all | 5 (n=1) |" in md
