"""Work and data never lost (issue 29): a model folder is saved as a whole, atomically; concurrent
saves take turns; a kill leaves the old model and temporary files the next save removes; a
flipped byte is caught by the checksum at load."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grndiff.train.checkpoint import read_model_file, write_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _payload(tag: int, size: int = 1000) -> dict:
    return {"grndiff_version": "test", "config": {"tag": tag, "options": {}, "source": {"name": "noise"}}, "setup": {},
            "state_dict": {"w": torch.full((size,), float(tag))}}


def _consistent(d: Path) -> int:
    """The tag of the model in ``d``, after checking that config.json and model.pt agree."""
    payload = read_model_file(d, "test")  # verifies the checksum
    meta = json.loads((d / "config.json").read_text())
    assert meta["config"]["tag"] == payload["config"]["tag"]
    assert float(payload["state_dict"]["w"][0]) == payload["config"]["tag"]
    return payload["config"]["tag"]


def _save_at(args):
    d, tag, start = args
    while time.time() < start:  # every process starts writing at the same moment
        time.sleep(0.001)
    try:
        write_model_dir(_payload(tag, 200_000), d, overwrite=False)
        return tag
    except FileExistsError:
        return None


@pytest.mark.skipif(os.name != "posix", reason="fork start method")
def test_concurrent_saves_without_overwrite_one_wins(tmp_path):
    """Two processes `save(overwrite=False)` to one folder: both used to report success."""
    ctx = mp.get_context("fork")
    for trial in range(3):
        d = tmp_path / f"m{trial}"
        start = time.time() + 0.3
        with ctx.Pool(4) as pool:
            results = pool.map(_save_at, [(d, t, start) for t in range(1, 5)])
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        assert _consistent(d) == winners[0]


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _overwrite_loop(d, n):
    for i in range(n):
        write_model_dir(_payload(i % 7 + 1, 50_000), d, overwrite=True)


@pytest.mark.skipif(os.name != "posix", reason="fork start method")
def test_readers_never_see_config_and_model_disagree(tmp_path):
    d = tmp_path / "m"
    write_model_dir(_payload(1, 50_000), d)
    proc = mp.get_context("fork").Process(target=_overwrite_loop, args=(d, 40))
    proc.start()
    reads = snapshots = 0
    try:
        while proc.is_alive():
            payload = read_model_file(d, "test")  # never a mismatched pair, never an error
            assert float(payload["state_dict"]["w"][0]) == payload["config"]["tag"]
            reads += 1
            try:  # the folder as one snapshot: config.json and model.pt of the same save
                fd = os.open(d, os.O_RDONLY)
                try:
                    meta = json.loads(_read_at(fd, "config.json"))
                    data = _read_at(fd, "model.pt")
                finally:
                    os.close(fd)
            except FileNotFoundError:  # that save's folder was already replaced and removed
                continue
            assert hashlib.sha256(data).hexdigest() == meta["model_sha256"]
            snapshots += 1
    finally:
        proc.join()
    assert proc.exitcode == 0 and reads > 0 and snapshots > 0
    _consistent(d)
    assert sorted(p.name for p in d.parent.iterdir()) == ["m"]  # no temporary folder left behind


def test_flipped_byte_is_refused_and_a_clean_save_loads(tmp_path):
    d = write_model_dir(_payload(3, 10_000), tmp_path / "m")
    assert _consistent(d) == 3
    meta = json.loads((d / "config.json").read_text())
    assert len(meta["model_sha256"]) == 64
    data = bytearray((d / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (d / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        read_model_file(d, "test")
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        read_model_file(d / "model.pt", "test")  # the file itself, next to its config.json


def test_overwrite_replaces_a_model_but_never_other_files(tmp_path):
    d = write_model_dir(_payload(1), tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_model_dir(_payload(2), d)
    write_model_dir(_payload(2), d, overwrite=True)
    assert _consistent(d) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a saved grndiff model"):
        write_model_dir(_payload(3), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    assert _consistent(write_model_dir(_payload(4), tmp_path / "empty")) == 4  # an empty folder is fine
    with pytest.raises(FileExistsError, match="is a file"):
        write_model_dir(_payload(5), tmp_path / "mine" / "notes.txt")


_KILLED_SAVER = """
import sys, torch
from grndiff.train.checkpoint import write_model_dir
d, i = sys.argv[1], 0
while True:
    i += 1
    write_model_dir({"config": {"tag": i % 5 + 1, "options": {}, "source": {"name": "noise"}}, "setup": {},
                     "state_dict": {"w": torch.full((3_000_000,), float(i % 5 + 1))}}, d, overwrite=True)
    print(i, flush=True)
"""


@pytest.mark.slow  # starts a Python with torch per kill
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_during_save_keeps_a_model_and_the_next_save_cleans_up(tmp_path):
    """`kill -9` during save: the old model must survive whole (config.json too), and the
    temporary files (12 MB each) must not pile up."""
    d = tmp_path / "m"
    write_model_dir(_payload(1), d)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for delay in (0.9, 1.7):
        p = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(d)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        p.stdout.readline()  # one save done: the next ones are under way
        time.sleep(delay / 4)
        p.send_signal(signal.SIGKILL)
        p.wait()
        _consistent(d)  # a whole model, old or new, with a config.json that matches it
    write_model_dir(_payload(2), d, overwrite=True)
    assert _consistent(d) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.pt"]


def test_old_in_place_temporary_files_are_removed(tmp_path):
    d = write_model_dir(_payload(1), tmp_path / "m")
    (d / ".tmp-abc.pt").write_bytes(b"x" * 100)  # left by earlier versions killed mid-save
    (tmp_path / ".m.tmp-xyz").mkdir()
    write_model_dir(_payload(2), d, overwrite=True)
    assert not (d / ".tmp-abc.pt").exists() and not (tmp_path / ".m.tmp-xyz").exists()


def test_checkpoint_temp_files_are_removed_on_the_next_write(tmp_path):
    from grndiff.train import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"partial")
    io.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert not stale.exists() and (tmp_path / "last.ckpt").is_file()


def test_save_is_fsynced(tmp_path, monkeypatch):
    """docs/errors.md says saves are fsynced: the files and the folder rename."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_model_dir(_payload(1), tmp_path / "m")
    assert len(synced) >= 3  # model.pt, config.json, the folders
