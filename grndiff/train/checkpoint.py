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
    """``torch.load(weights_only=True)`` with an error that says what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"refusing to load {path}: it is truncated, corrupted, or contains objects other than tensors "
            f"and plain Python types ({type(e).__name__}: {str(e)[:300]}). grndiff never unpickles code from "
            "checkpoints; retrain or re-save the model with this version of grndiff.") from e
