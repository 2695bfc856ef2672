"""benchmarks/_results.py: tables open with the seed spread; stale banners and re-rendering."""
import json

from _results import mark_stale, record, records_to_markdown, render, write_results


def _recs():
    recs = [record("d", "deep", "score", v, seed=s, group=g) for s, v in enumerate((0.8, 0.9, 1.0))
            for g in ("a", "all")]
    recs += [record("d", "baseline", "score", 0.5, seed=0, group=g) for g in ("a", "all")]
    return recs


def test_multi_seed_tables_open_with_mean_sd_over_seeds():
    md = records_to_markdown(_recs())
    spread, detail = md.split("### d\n")
    assert spread.startswith("### d: mean ± sd over seeds")
    assert "| deep | all | 0.9 ± 0.100 (n=3) |" in spread and "| baseline | all | 0.5 (n=1) |" in spread
    assert "| a |" not in spread  # only the summary groups
    assert "| deep | a | 2 | 1 |" in detail  # per-seed rows below


def test_one_seed_has_no_spread_table():
    md = records_to_markdown([r for r in _recs() if r["seed"] == 0])
    assert "mean ± sd" not in md


def test_render_rewrites_markdown_from_json_and_keeps_the_stale_banner(tmp_path):
    write_results("x", _recs(), "python benchmarks/x.py", extra={"notes": ["a note"]}, out_dir=tmp_path)
    mark_stale("x", "code changed", out_dir=tmp_path)
    (tmp_path / "x.md").write_text("old layout")
    render("x", out_dir=tmp_path)
    md = (tmp_path / "x.md").read_text()
    assert md.startswith("> **Stale:** code changed") and "mean ± sd over seeds" in md and "- a note" in md
    assert json.loads((tmp_path / "x.json").read_text())["stale"] == "code changed"
