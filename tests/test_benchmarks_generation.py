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
    assert {r["method"] for r in recs} == {"real_vs_real", "gaussian", "grndiff"}
    metrics = {r["metric"] for r in recs}
    assert {"energy_distance", "mmd_rbf", "w2", "classifier_auc", "mean_pearson", "var_pearson",
            "zero_frac_error", "marker_overlap", "tf_target_corr", "tf_target_corr_pooled"} <= metrics
    assert "wasserstein2" not in metrics  # renamed to w2
    assert any(r["metric"] == "train_seconds" and r["method"] == "grndiff" for r in recs)
    groups = {r["group"] for r in recs}
    assert "all" in groups and len(groups) > 2  # per-group rows and the average
    assert "| real_vs_real |" in md and str(ROOT) not in md and str(ROOT) not in json.dumps(obj)


def test_real_vs_real_below_gaussian(quick_result):
    obj, _ = quick_result
    ed = {r["method"]: r["value"] for r in obj["records"]
          if r["metric"] == "energy_distance" and r["group"] == "all"}
    assert ed["real_vs_real"] < ed["gaussian"]


def test_merge_keeps_the_first_run_of_a_row_and_puts_notes_first(quick_result, tmp_path):
    obj, _ = quick_result
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(obj))
    changed = dict(obj, config=dict(obj["config"], steps=-1), notes=["from b"],
                   records=[dict(r, value=123.0) for r in obj["records"]]  # the same rows, other values
                   + [dict(r, method="grndiff_extra") for r in obj["records"] if r["method"] == "grndiff"])
    second.write_text(json.dumps(changed))
    out = tmp_path / "merged"
    res = subprocess.run([sys.executable, str(SCRIPT), "--merge", str(first), str(second), "--out", str(out),
                          "--note", "merged for a test"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    merged = json.loads((out / "generation.json").read_text())
    assert merged["notes"][0] == "merged for a test" and "from b" in merged["notes"]
    assert "steps" not in merged["config"] and merged["config_differs"] == ["steps"]  # not one run's value
    assert merged["config"] == {k: v for k, v in obj["config"].items() if k != "steps"}
    assert 123.0 not in {r["value"] for r in merged["records"]}  # a row run twice: the first file's
    assert {r["method"] for r in merged["records"]} == {"real_vs_real", "gaussian", "grndiff", "grndiff_extra"}
    assert "| grndiff_extra |" in (out / "generation.md").read_text()
