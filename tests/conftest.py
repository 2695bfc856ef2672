"""Shared fixtures. The whole test session runs offline: any socket connect fails loudly."""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


class NetworkAccessError(RuntimeError):
    pass


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Fail any test that tries to reach the network (loopback stays allowed for DDP/gloo)."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                      or self.family == socket.AF_UNIX):
            return real_connect(self, address)
        raise NetworkAccessError(f"test tried to reach the network: {address!r}")

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture
def krumsiek_knockouts():
    """krumsiek11 (fresh) with every 4th cell a Gata2 and every 4th+1 a Pu.1 knock-out, registered with
    ``perturbation_key="perturbation"`` and ``cell_type`` as the condition."""
    import numpy as np

    import grndiff as gd

    a = gd.datasets.krumsiek11()
    labels = np.array(["control"] * a.n_obs, dtype=object)
    labels[1::4], labels[2::4] = "Gata2", "Pu.1"
    a.obs["perturbation"] = labels
    gd.GRNDiff.setup_anndata(a, perturbation_key="perturbation", condition_keys=["cell_type"])
    return a
