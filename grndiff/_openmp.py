"""OpenMP's wait policy, chosen before torch loads it (imported first by ``grndiff/__init__.py``).

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch's runtime starts. Idle worker threads then either
spin (``ACTIVE``, GNU OpenMP's default for a while after each parallel region) or sleep
(``PASSIVE``). On a machine whose cores other jobs also use, spinning threads that wait on a
descheduled one waste the cores, and passive ones cost nothing measurable on an idle machine
(``benchmarks/results/shared_cpu.md`` measures both, side by side). So grndiff sets ``PASSIVE``
unless the user set a policy — which only takes effect when ``grndiff`` is imported before ``torch``.

``PASSIVE_WAIT``: whether torch's OpenMP threads wait passively in this process (as far as can be
known: the policy was set before torch was loaded).
"""
from __future__ import annotations

import os
import sys

_torch_loaded = "torch" in sys.modules
if not _torch_loaded:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
PASSIVE_WAIT = not _torch_loaded and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
