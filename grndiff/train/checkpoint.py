"""Atomic, safe checkpoints: a kill never leaves a truncated file, and loading never unpickles code."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, fsyncs it, then renames
    it over the target (``os.replace`` is atomic on POSIX); loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, file_mode())  # mkstemp creates 0600; give the file the permissions open() would
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return safe_load(path, map_location=map_location or "cpu")


def file_mode() -> int:
    """Permissions a new file gets from ``open()`` under the current umask (e.g. 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def safe_load(path, map_location="cpu", data: bytes | None = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with the one error message of every loader (``GRNDiff.load``,
    ``AtomicCheckpointIO``, ``grndiff fit --ckpt_path``) for a truncated, corrupted or unsafe file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        import io
        return torch.load(io.BytesIO(data) if data is not None else path, map_location=map_location,
                          weights_only=True)
    except Exception as e:  # truncated, corrupted, or carrying pickled code
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise ValueError(
            f"cannot load {path}: the file is truncated, corrupted, or holds objects other than tensors and plain "
            f"Python types ({type(e).__name__}: {first}). grndiff never unpickles code from checkpoints, so it "
            "refuses to load it; re-save or retrain the model with this version of grndiff.") from e


# ------------------------------------------------------------------ GRNDiff model files
FORMAT = "grndiff-model"
FORMAT_VERSION = 2  # 2: config {"source": {...}, "options": {...}, "seed"}; state dict key "source.*"


MODEL_FILES = ("model.pt", "config.json")


def write_model_dir(payload: dict, dir_path, overwrite: bool = False) -> Path:
    """A saved model folder — ``model.pt`` (the payload) and a readable ``config.json`` carrying
    ``model.pt``'s SHA-256 — written as a whole, atomically.

    Both files are written to a hidden temporary folder next to ``dir_path``, fsynced, and the
    folder is then renamed into place (exchanged with the old one where the OS can, so a reader
    never sees a new ``config.json`` with an old ``model.pt``). A lock on the parent folder makes
    concurrent saves take turns: with ``overwrite=False`` exactly one of them succeeds and the
    others raise ``FileExistsError``. Temporary folders of a save that was killed are removed by
    the next save. ``overwrite=True`` replaces a folder holding a saved model (or nothing), never a
    folder with other files in it.
    """
    import hashlib
    import io
    import json
    import shutil

    d = Path(dir_path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)  # serialise before taking the lock: an unsaveable payload changes nothing
    data = buf.getvalue()
    meta = {k: payload[k] for k in ("format", "format_version", "grndiff_version", "config", "setup") if k in payload}
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps(meta, indent=2, default=str)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"{d} is a file; save a model to a directory")
    d.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(d.parent):
        _remove_stale(d)
        if d.exists():
            _check_replaceable(d, overwrite)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}.tmp-"))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder mkdir's permissions
            _write_synced(tmp / "model.pt", data)
            _write_synced(tmp / "config.json", text.encode())
            _fsync_dir(tmp)
            if d.exists() and _exchange(tmp, d):  # tmp now holds the old model
                pass
            else:
                if d.exists():  # no atomic exchange here: move the old folder aside first
                    old = tmp.with_name(tmp.name + "-old")
                    os.replace(d, old)
                    os.replace(tmp, d)
                    tmp = old
                else:
                    os.replace(tmp, d)  # fails if another process created a non-empty d meanwhile
            _fsync_dir(d.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return d


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _dir_lock:
    """An exclusive ``flock`` on a folder (POSIX); a no-op where there is none."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl
            self.fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


def _remove_stale(d: Path) -> None:
    """Temporary files of saves that were killed (called with the lock held, so none is running)."""
    import shutil
    for p in d.parent.glob(f".{d.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if d.is_dir():
        for p in d.glob(".tmp-*.pt"):  # left by grndiff versions that wrote model.pt in place
            p.unlink(missing_ok=True)


def _check_replaceable(d: Path, overwrite: bool) -> None:
    if not d.is_dir():
        raise FileExistsError(f"{d} is a file; save a model to a directory")
    entries = [p.name for p in d.iterdir()]
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{d} exists and is not empty; pass overwrite=True to replace it")
    other = sorted(n for n in entries if n not in MODEL_FILES and not n.startswith(".tmp-"))
    if other or "model.pt" not in entries:
        raise FileExistsError(f"{d} holds files that are not a saved grndiff model ({other[:5] or entries[:5]}); "
                              "a save replaces the whole folder, so choose a new or empty directory")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def read_verified(path: Path, attempts: int = 20) -> bytes:
    """The bytes of ``model.pt``, checked against the SHA-256 its ``config.json`` carries (saves of
    this version; older saves have none and are returned unchecked). A mismatch while
    ``config.json`` stays the same — a flipped byte, a partial copy — raises ``ValueError``; a
    mismatch because a concurrent save replaced the folder between the two reads is read again."""
    import hashlib
    want = _saved_sha256(path)
    for _ in range(attempts):
        data = path.read_bytes()
        if want is None or hashlib.sha256(data).hexdigest() == want:
            return data
        again = _saved_sha256(path)
        if again == want:
            break
        want = again  # the folder was replaced while reading: read the new pair
        time.sleep(0.01)
    raise ValueError(f"cannot load {path}: its SHA-256 does not match the one saved with it in config.json, so the "
                     "file was corrupted or changed after saving (a bad disk, an incomplete copy). Copy the model "
                     "again, or re-save or retrain it.")


def _saved_sha256(path: Path) -> str | None:
    import json
    cfg = path.parent / "config.json"
    try:
        want = json.loads(cfg.read_text()).get("model_sha256")
    except (ValueError, OSError, AttributeError):
        return None  # no or unreadable config.json: only metadata; the model file itself is checked by torch
    return want or None


def read_model_file(path: Path, version: str) -> dict:
    """The payload of a saved model folder / ``model.pt`` or of a CLI Lightning checkpoint, upgraded
    to the current format. Refuses (``ValueError``) truncated files and pickled code."""
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no saved grndiff model at {path}")
    data = read_verified(path)  # a model saved by this version carries model.pt's SHA-256 in config.json
    payload = safe_load(path, data=data)  # truncated, corrupted, or carrying pickled code: one message everywhere
    if isinstance(payload, dict) and "grndiff" in payload and "state_dict" in payload:  # Lightning .ckpt
        return upgrade_payload({**payload["grndiff"], "state_dict": payload["state_dict"], "is_trained": True})
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a grndiff model file")
    if payload.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path} was written with model format {payload.get('format_version')} "
                         f"(grndiff {payload.get('grndiff_version')}); "
                         f"this grndiff {version} reads format {FORMAT_VERSION} "
                         "(and upgrades format 1). Load it with the grndiff version that wrote it, or retrain.")
    return upgrade_payload(payload)


_V1_FLOW = ("time_schedule", "ot_pairing", "lr", "weight_decay", "warmup_steps", "ema_decay", "token_aux_weight",
            "prediction")


def upgrade_payload(payload: dict) -> dict:
    """Every old-format conversion in one place. Format 1 (flat config with ``source_comps`` …,
    state dict ``source_dist.*``) → format 2. A payload already current is returned unchanged."""
    cfg = payload.get("config", {})
    if "options" in cfg and isinstance(cfg.get("source"), dict):
        return payload
    cfg = dict(cfg)
    name = cfg.get("source", "gaussian")
    if name == "gaussian":  # format-1 defaults of models saved before each option existed
        source = {"name": "gaussian", "k": cfg.get("source_comps", 30), "residual": cfg.get("source_residual", 0.5),
                  "coupling": cfg.get("source_coupling") or "independent", "space": cfg.get("source_space") or "scaled"}
    else:
        source = {"name": name}
    options = {k: cfg[k] for k in _V1_FLOW if cfg.get(k) is not None}
    options.update(cfg.get("net_kwargs") or {})
    new_cfg = {"backbone": cfg.get("backbone", "grn"), "prior": cfg.get("prior"), "modules": cfg.get("modules"),
               "organism": cfg.get("organism", "human"), "match_keys": cfg.get("match_keys"), "seed": 0,
               "source": source, "options": options}
    state = {}
    for k, v in payload.get("state_dict", {}).items():
        if k.startswith("source_dist."):
            k = "source.dist." + k[len("source_dist."):]
        state[k] = v
    if source["name"] == "gaussian":
        state.setdefault("source.dist.scale", torch.ones_like(state["source.dist.resid_std"]))
        state.setdefault("source._fitted", state.get("source.dist.fitted", torch.tensor(False)))
    else:
        state.setdefault("source._fitted", torch.tensor(True))
    return {**payload, "config": new_cfg, "state_dict": state, "format_version": FORMAT_VERSION}
