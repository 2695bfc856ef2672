"""Atomic, safe checkpoints: a kill never leaves a truncated file, and loading never unpickles code."""
from __future__ import annotations

import os
import tempfile
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


def safe_load(path, map_location="cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with the one error message of every loader (``GRNDiff.load``,
    ``AtomicCheckpointIO``, ``grndiff fit --ckpt_path``) for a truncated, corrupted or unsafe file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupted, or carrying pickled code
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise ValueError(
            f"cannot load {path}: the file is truncated, corrupted, or holds objects other than tensors and plain "
            f"Python types ({type(e).__name__}: {first}). grndiff never unpickles code from checkpoints, so it "
            "refuses to load it; re-save or retrain the model with this version of grndiff.") from e


# ------------------------------------------------------------------ GRNDiff model files
FORMAT = "grndiff-model"
FORMAT_VERSION = 2  # 2: config {"source": {...}, "options": {...}, "seed"}; state dict key "source.*"


def write_model_file(payload: dict, dir_path, overwrite: bool = False) -> Path:
    """Write ``payload`` (tensors and plain types) atomically to ``dir_path/model.pt``; returns the folder."""
    d = Path(dir_path)
    if d.exists() and any(d.iterdir()) and not overwrite:
        raise FileExistsError(f"{d} exists and is not empty; pass overwrite=True to replace it")
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, d / "model.pt")  # atomic on POSIX: never a truncated model.pt
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return d


def write_model_dir(payload: dict, dir_path, overwrite: bool = False) -> Path:
    """A saved model folder: ``model.pt`` (the payload, atomically) and a readable ``config.json``."""
    import json

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    d = write_model_file(payload, dir_path, overwrite=overwrite)
    meta = {k: payload[k] for k in ("format", "format_version", "grndiff_version", "config", "setup") if k in payload}
    (d / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    return d


def read_model_file(path: Path, version: str) -> dict:
    """The payload of a saved model folder / ``model.pt`` or of a CLI Lightning checkpoint, upgraded
    to the current format. Refuses (``ValueError``) truncated files and pickled code."""
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no saved grndiff model at {path}")
    payload = safe_load(path)  # truncated, corrupted, or carrying pickled code: one message everywhere
    if isinstance(payload, dict) and "grndiff" in payload and "state_dict" in payload:  # Lightning .ckpt
        return upgrade_payload({**payload["grndiff"], "state_dict": payload["state_dict"], "is_trained": True})
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a grndiff model file")
    if payload.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path} was written with model format {payload.get('format_version')} "
                         f"(grndiff {payload.get('grndiff_version')}); this grndiff {version} reads format {FORMAT_VERSION} "
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
