"""What a newcomer meets (issue 29): the README's snippets and CLI block run, the shipped configs
*fit*, progress shows in a terminal, Jupyter and a log file, outputs keep ``var`` and the input's
``obs`` columns, and wrong arguments fail early with one clear line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import grndiff as gd
from grndiff import GRNDiff
from grndiff.cli import main
from grndiff.data import GRNDiffWarning

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grndiff: error: "), err
    return err[0]


def _small(adata, **kw):
    return GRNDiff(adata, prior="krumsiek11", modules=None, hidden=8, heads=2, depth=1, token_depth=0,
                   ema_decay=0.0, **kw)


@pytest.fixture(scope="module")
def annotated():
    """krumsiek11 with gene annotations, a donor column and ctrl/stim labels (control cells)."""
    a = gd.datasets.krumsiek11()
    a.var["gene_type"] = ["tf" if i % 2 else "target" for i in range(a.n_vars)]
    a.var["highly_variable"] = np.arange(a.n_vars) % 3 == 0
    a.obs["donor"] = np.where(np.arange(a.n_obs) % 3 == 0, "d1", "d2")
    a.obs["condition"] = np.where(np.arange(a.n_obs) % 2 == 0, "ctrl", "stim")
    GRNDiff.setup_anndata(a, condition_keys=["cell_type", "condition"], control_obs={"condition": "ctrl"})
    return a


# ------------------------------------------------------------------ the CLI: configs
def test_class_path_source_becomes_the_config_dict():
    from jsonargparse import Namespace

    from grndiff.cli import source_config
    spec = {"class_path": "grndiff.flow.GaussianSource", "init_args": {"k": 100, "space": "log"}}
    assert source_config(spec) == {"name": "gaussian", "k": 100, "space": "log"}
    assert source_config(Namespace(class_path="GaussianSource", init_args=Namespace(k=5))) == {"name": "gaussian",
                                                                                                "k": 5}
    assert source_config("shifted_control") == "shifted_control"
    assert source_config({"name": "noise"}) == {"name": "noise"}
    with pytest.raises(ValueError, match="not a grndiff source"):
        source_config({"class_path": "torch.nn.Linear", "init_args": {}})
    gd.flow.make_source(source_config(spec))  # what FlowModule gets is valid


def _fit_argv(configs, tmp_path, steps=1):
    argv = ["fit"]
    for c in configs:
        argv += ["--config", str(ROOT / "configs" / c)]
    return argv + [f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.callbacks=[]",
                   "--trainer.enable_checkpointing=false", "--trainer.num_sanity_val_steps=0",
                   "--data.num_workers=0", f"--export={tmp_path / 'model'}"]


@pytest.mark.parametrize("configs", [["tiny.yaml"], ["kang.yaml"]], ids=lambda c: "+".join(c))
def test_shipped_config_fits(configs, tmp_path, monkeypatch, capsys):
    """The README's headline `grndiff fit --config configs/kang.yaml` used to fail on its
    class_path source; --print_config alone could not catch that."""
    monkeypatch.chdir(tmp_path)  # LightningCLI writes config.yaml into the working folder
    main(_fit_argv(configs, tmp_path))
    assert f"saved model to {tmp_path / 'model'}" in capsys.readouterr().out
    model = GRNDiff.load(tmp_path / "model")
    if configs == ["kang.yaml"]:
        src = model.config["source"]
        assert (src["name"], src["k"], src["space"], src["coupling"]) == ("gaussian", 100, "log", "lowrank")


@pytest.mark.slow  # the larger configs, ~10 s each
@pytest.mark.parametrize("configs", [["kang_ctrl.yaml"], ["kang.yaml", "ablation_mlp.yaml"],
                                     ["kang.yaml", "ablation_gene_tokens.yaml"],
                                     ["kang.yaml", "ablation_modules_only.yaml"],
                                     ["kang.yaml", "ablation_learned_modules.yaml"],
                                     ["kang.yaml", "ablation_latent_tokens.yaml"],
                                     ["kang.yaml", "ablation_ssm.yaml"],
                                     ["kang.yaml", "ablation_cross_attention.yaml"]], ids=lambda c: "+".join(c))
def test_every_other_shipped_config_fits(configs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(_fit_argv(configs, tmp_path))
    assert GRNDiff.load(tmp_path / "model").config["backbone"]


def test_every_shipped_config_is_tested():
    tested = {"tiny.yaml", "kang.yaml", "kang_ctrl.yaml", "ablation_mlp.yaml", "ablation_gene_tokens.yaml",
              "ablation_modules_only.yaml", "ablation_learned_modules.yaml", "ablation_latent_tokens.yaml",
              "ablation_ssm.yaml", "ablation_cross_attention.yaml"}
    assert {p.name for p in (ROOT / "configs").glob("*.yaml")} == tested


# ------------------------------------------------------------------ the CLI: paths checked first
def test_export_path_is_checked_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr("lightning.pytorch.Trainer.fit", lambda *a, **k: trained.append(1))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = _one_line_error(_fit_argv(["tiny.yaml"], tmp_path)[:-1] + [f"--export={a_file}"], capsys)
    assert "is a file" in line and "a_file" in line
    other = tmp_path / "results"
    other.mkdir()
    (other / "config.json").write_text('{"mine": true}')
    line = _one_line_error(_fit_argv(["tiny.yaml"], tmp_path)[:-1] + [f"--export={other}"], capsys)
    assert "holds no saved grndiff model" in line and "new or empty directory" in line
    assert (other / "config.json").read_text() == '{"mine": true}'  # never overwritten
    mixed = tmp_path / "mixed"  # a model folder with someone's notes in it: a save would delete them
    mixed.mkdir()
    (mixed / "model.pt").write_bytes(b"")
    (mixed / "notes.txt").write_text("mine")
    line = _one_line_error(_fit_argv(["tiny.yaml"], tmp_path)[:-1] + [f"--export={mixed}"], capsys)
    assert "notes.txt" in line and "new or empty directory" in line
    assert not trained  # refused before any training


def test_unwritable_export_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere: make the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real_access(p, mode, **kw))
    trained = []
    monkeypatch.setattr("lightning.pytorch.Trainer.fit", lambda *a, **k: trained.append(1))
    try:
        line = _one_line_error(_fit_argv(["tiny.yaml"], tmp_path)[:-1] + [f"--export={ro / 'model'}"], capsys)
    finally:
        ro.chmod(0o700)
    assert "no permission" in line and "ro" in line and not trained


def test_sample_out_must_be_h5ad_and_is_checked_first(tmp_path, capsys):
    line = _one_line_error(["sample", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "g.csv")], capsys)
    assert "*.h5ad" in line and "g.h5ad" in line  # before the (missing) model is even looked at
    assert not (tmp_path / "g.csv").exists()
    line = _one_line_error(["sample", "--ckpt", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "nodir" / "g.h5ad")], capsys)
    assert "does not exist" in line
    line = _one_line_error(["evaluate", "--real", str(ROOT / "README.md"), "--generated", str(ROOT / "README.md"),
                            "--out", str(tmp_path / "t.h5ad")], capsys)
    assert "*.csv" in line


def test_help_does_not_import_torch():
    """`grndiff sample --help` took 8–10 s: the arguments are now parsed before torch is imported."""
    code = ("import sys\nfrom grndiff.cli import main\n"
            "for argv in (['--help'], ['sample', '--help'], ['evaluate', '--help'], ['demo', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print('torch' in sys.modules, 'lightning' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "False False"
    assert "--n-cells" in r.stdout and "--generated" in r.stdout


# ------------------------------------------------------------------ progress
def test_log_lines_show_step_loss_and_eta():
    import io

    from grndiff._progress import LogLines, format_seconds
    buf = io.StringIO()
    lines = LogLines(total=100, desc="training", min_interval=0.0, file=buf)
    for _ in range(100):
        lines.set_postfix(loss=0.5)
        lines.update(1)
    lines.close()
    out = buf.getvalue().splitlines()
    assert len(out) == 21  # every 5 % of the steps, and one closing line
    assert re.fullmatch(r"training: step 5/100 \(5%\) loss 0\.5 · \d+s elapsed, ETA \d+s", out[0]), out[0]
    assert out[-1].startswith("training: step 100/100 (100%)") and "ETA" not in out[-1]
    quiet = io.StringIO()
    short = LogLines(total=100, desc="x", file=quiet)  # default 10 s between lines: a short call is silent
    short.update(100)
    short.close()
    assert quiet.getvalue() == ""
    assert (format_seconds(75), format_seconds(3725), format_seconds(float("nan"))) == ("1m15s", "1h02m", "?")


def test_training_in_a_log_writes_progress_lines(annotated, capfd):
    from grndiff.train.quiet import LogProgress
    model = _small(annotated, source="gaussian")
    capfd.readouterr()
    model.train(max_steps=8, batch_size=64, val_fraction=0.0, progress_bar=False,
                callbacks=[LogProgress(min_interval=0.0, every=4)])
    err = capfd.readouterr().err.splitlines()
    steps = [ln for ln in err if ln.startswith("training: step")]
    assert [s.split()[2] for s in steps] == ["4/8", "8/8", "8/8"], err  # two lines and the closing one
    assert all(" loss " in s for s in steps) and "ETA" in steps[0]


def test_progress_in_jupyter_without_ipywidgets_never_warns(monkeypatch):
    from grndiff import _progress
    monkeypatch.setattr(_progress, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert _progress.where() == "notebook"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TqdmWarning: IProgress not found would fail here
        bar = _progress.bar(10, "sampling (euler)")
        bar.update(10)
        bar.close()
    assert _progress.tqdm_class().__module__ == "tqdm.std"


def test_sampling_shows_progress_by_default(annotated, monkeypatch):
    import inspect

    from grndiff import _progress
    from grndiff.flow import samplers
    assert inspect.signature(GRNDiff.sample).parameters["progress"].default is True
    monkeypatch.setattr(_progress, "stderr_is_terminal", lambda: False)  # a log file, even under pytest -s
    made = []
    real_bar = _progress.bar
    monkeypatch.setattr(_progress, "bar", lambda *a, **k: made.append(real_bar(*a, **k)) or made[-1])
    _small(annotated, source="gaussian").sample(5, n_steps=3)
    assert len(made) == 1 and isinstance(made[0], _progress.LogLines) and made[0].n == 3  # a log: lines
    assert samplers._bar(False, "euler", 3) is None


# ------------------------------------------------------------------ outputs keep annotations
def test_sample_and_predict_keep_var_and_obs_columns(annotated, tmp_path):
    model = _small(annotated)  # source: shifted_control (control cells registered)
    ctrl = annotated[annotated.obs["condition"] == "ctrl"][:12].copy()
    pred = model.predict(ctrl, {"condition": "stim"}, n_steps=2)
    assert list(pred.obs.columns) == list(ctrl.obs.columns)
    assert (pred.obs["donor"].to_numpy() == ctrl.obs["donor"].to_numpy()).all()
    assert (pred.obs["condition"] == "stim").all() and (pred.obs["cell_type"].to_numpy() ==
                                                        ctrl.obs["cell_type"].to_numpy()).all()
    assert pred.var.equals(ctrl.var)
    gen_model = _small(annotated, source="gaussian")
    gen = gen_model.sample(6, {"cell_type": "Mo"}, n_steps=2)
    assert list(gen.var.columns) == ["gene_type", "highly_variable"]
    assert (gen.var["highly_variable"].to_numpy() == annotated.var["highly_variable"].to_numpy()).all()
    gen_model.save(tmp_path / "m")
    again = GRNDiff.load(tmp_path / "m").sample(6, {"cell_type": "Mo"}, n_steps=2)
    assert list(again.var["gene_type"]) == list(annotated.var["gene_type"])
    gen.write_h5ad(tmp_path / "gen.h5ad")
    pred.write_h5ad(tmp_path / "pred.h5ad")


def test_predict_without_a_condition_column_warns(annotated):
    model = _small(annotated)
    ctrl = annotated[annotated.obs["condition"] == "ctrl"][:8].copy()
    del ctrl.obs["cell_type"]
    with pytest.warns(GRNDiffWarning, match=r"no obs column \['cell_type'\].*unconditional"):
        model.predict(ctrl, {"condition": "stim"}, n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GRNDiffWarning)
        model.predict(ctrl, {"condition": "stim", "cell_type": "Mo"}, n_steps=2)  # given: silent


def test_lower_case_symbols_matched_up_to_case_warn():
    a = gd.datasets.krumsiek11()
    a.var_names = [g.upper() for g in a.var_names]
    GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    with pytest.warns(GRNDiffWarning, match=r"9 prior gene names matched your genes only up to case.*Gata1.*organism="):
        _small(a)
    b = gd.datasets.krumsiek11()
    GRNDiff.setup_anndata(b, condition_keys=["cell_type"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GRNDiffWarning)
        _small(b)  # exact names: no warning


def test_evaluate_normalises_raw_counts_like_the_cli():
    a = gd.datasets.kang2018_tiny()
    counts = a.copy()
    counts.X = a.layers["counts"].copy() if "counts" in a.layers else a.X.copy()
    logged = gd.data.log1p_normalized_copy(counts)
    half = counts.n_obs // 2
    with pytest.warns(GRNDiffWarning, match="looks like raw counts"):
        raw = gd.metrics.evaluate(counts[:half], counts[half:], n_pcs=5)
    ok = gd.metrics.evaluate(logged[:half], logged[half:], n_pcs=5)
    assert np.allclose(raw["value"].to_numpy(float), ok["value"].to_numpy(float), equal_nan=True)


# ------------------------------------------------------------------ the README
def _snippet(marker: str) -> str:
    at = README.index(marker)
    start = README.index("```", at)
    start = README.index("\n", start) + 1
    return README[start:README.index("```", start)]


@pytest.mark.slow
def test_readme_generation_and_interpretation_snippets(tmp_path, monkeypatch):
    """The generation snippet top to bottom (3,000 steps shortened to 3, sampling to 5 Euler
    steps), `real` defined before use, then the Interpretation block on that model."""
    import matplotlib
    matplotlib.use("Agg")
    code = _snippet("<!-- generation:")
    assert "model.train(max_steps=3000)" in code and "real = " in code.split("gd.metrics.evaluate")[0]
    code = code.replace("max_steps=3000", "max_steps=3").replace("seed=0)\nreal", "seed=0, n_steps=5)\nreal")
    assert "n_steps=5" in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(code + _snippet("## Interpretation"), ns)  # noqa: S102 — our own README
    assert ns["report"]["value"].notna().any() and ns["gen"].n_obs == 500
    assert isinstance(ns["model"], GRNDiff) and "grndiff_tokens" in ns["adata"].obsm
    assert "rank_tokens" in ns["adata"].uns


@pytest.mark.slow
def test_readme_cli_block(tmp_path):
    """The CLI block as a newcomer types it (training shortened to 2 steps), in a clean folder."""
    block = [ln.split("  #")[0].strip() for ln in _snippet("<!-- cli:").splitlines() if ln.strip()]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for line in block:
        cmd = line.replace("grndiff ", f"{sys.executable} -m grndiff.cli ", 1) if line.startswith("grndiff ") else \
            line.replace("python ", f"{sys.executable} ", 1)
        if "fit --config configs/kang.yaml" in line:
            cmd += " --trainer.max_steps=2 --trainer.callbacks=[] --trainer.logger=false"
        if "--n-cells 500" in line:
            cmd += " --n-steps 2"
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, (line, r.stderr[-2000:])
    assert (tmp_path / "gen.h5ad").is_file() and (tmp_path / "runs" / "kang" / "model" / "model.pt").is_file()
