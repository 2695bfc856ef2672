"""OpenMP's wait policy, chosen before torch loads it (imported first by ``grndiff/__init__.py``).

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch's runtime starts. Idle worker threads then either
spin (``ACTIVE``, GNU OpenMP's default for a while after each parallel region) or sleep
(``PASSIVE``). On a machine whose cores other jobs also use, spinning threads that wait on a
descheduled one waste the cores: the demo's training beside two busy single-thread jobs on 2 cores
took 4.1× its idle time with 2 spinning threads, 2.4× with 1 thread and 1.8× with 2 passive
threads, and the passive threads cost nothing on the idle machine
(``benchmarks/results/shared_cpu.md``). So grndiff sets ``PASSIVE`` unless the user set a policy —
which only takes effect when ``grndiff`` is imported before ``torch``.

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
