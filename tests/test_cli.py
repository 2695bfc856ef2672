"""The command line as a user meets it: every error is one line on stderr and exit status 2 (a
traceback only with ``--debug``), checkpoints are refused with the messages of ``GRNDiff.load``,
and a fit prints nothing but its result."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grndiff as gd
from grndiff import GRNDiff
from grndiff.cli import main
from grndiff.data import UnknownConditionError

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    a = gd.datasets.krumsiek11()
    GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    model = GRNDiff(a, prior="krumsiek11", modules=None, hidden=8, heads=2, depth=1, token_depth=0, ema_decay=0.0)
    model.save(tmp / "model")
    data = (tmp / "model" / "model.pt").read_bytes()
    (tmp / "half.ckpt").write_bytes(data[: len(data) // 2])
    good = torch.load(tmp / "model" / "model.pt", weights_only=True)
    torch.save({"state_dict": good["state_dict"], "hyper_parameters": {"x": _Evil(tmp / "PWNED")}},
               tmp / "evil.ckpt")
    (tmp / "evil.pkl").write_bytes(pickle.dumps(_Evil(tmp / "PWNED")))
    return tmp


def _fails_with_one_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grndiff: error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def test_unknown_label_is_one_clear_line(saved, tmp_path, capsys):
    line = _fails_with_one_line(["sample", "--ckpt", str(saved / "model"), "--conditions", "cell_type=Moo",
                                 "--out", str(tmp_path / "g.h5ad")], capsys)
    assert "condition 'cell_type': unknown value(s) 'Moo'. Did you mean 'Mo'?" in line and "--debug" in line
    with pytest.raises(UnknownConditionError):  # --debug: the exception itself, with its traceback
        main(["sample", "--ckpt", str(saved / "model"), "--conditions", "cell_type=Moo",
              "--out", str(tmp_path / "g.h5ad"), "--debug"])


@pytest.mark.parametrize("name", ["half.ckpt", "evil.ckpt", "evil.pkl"])
def test_bad_checkpoints_give_the_messages_of_grndiff_load(saved, name, capsys):
    with pytest.raises(ValueError) as api:
        GRNDiff.load(saved / name)
    for argv in (["sample", "--ckpt", str(saved / name), "--out", str(saved / "x.h5ad")],
                 ["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--ckpt_path", str(saved / name)]):
        line = _fails_with_one_line(argv, capsys)
        assert str(api.value) in line, (line, str(api.value))
    assert "cannot load" in str(api.value) and "never unpickles code" in str(api.value)
    assert not (saved / "PWNED").exists()


def test_missing_inputs_are_one_line(saved, tmp_path, capsys):
    line = _fails_with_one_line(["sample", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "g.h5ad")],
                                capsys)
    assert "no saved grndiff model" in line
    line = _fails_with_one_line(["evaluate", "--real", str(tmp_path / "r.h5ad"), "--generated",
                                 str(tmp_path / "g.h5ad")], capsys)
    assert "--real: no .h5ad file at" in line and "r.h5ad" in line
    line = _fails_with_one_line(["sample", "--ckpt", str(saved / "model"), "--conditions", "cell_type",
                                 "--out", str(tmp_path / "g.h5ad")], capsys)
    assert "--conditions expects key=value pairs" in line and "'cell_type'" in line


@pytest.mark.slow  # a subprocess end to end
def test_fit_prints_only_its_result(tmp_path):
    """A shipped config through the real entry point (a subprocess, as from a shell): no banners,
    no warnings, no progress bar in a log; only the export line."""
    out = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    r = subprocess.run([sys.executable, "-m", "grndiff.cli", "fit", "--config", "configs/tiny.yaml",
                        "--trainer.max_steps", "5", f"--export={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = (r.stdout + r.stderr).splitlines()
    assert printed == [f"saved model to {out}"], printed
