"""The speed work (issue 17): the gene-major graph stack, the interleaved head layout, weight caches
while sampling, the CPU runtime, and ``benchmarks/speed.py --quick``."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from grndiff.nn import GraphAttention, GraphDiTBlock, GRNTransformer, ModulePooling
from grndiff.nn.graph_attention import HeadGraph
from grndiff.train import runtime

G, D, H = 12, 16, 4
ROOT = Path(__file__).resolve().parents[1]


def _graph(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, G - 2, (40,), generator=g)  # genes G-2, G-1 isolated
    dst = torch.randint(0, G - 2, (40,), generator=g)
    keep = src != dst
    ei = torch.unique(torch.stack([src[keep], dst[keep]]), dim=1)
    sign = torch.randint(-1, 2, (ei.shape[1],), generator=g).float()
    return ei, sign, torch.rand(ei.shape[1], generator=g)


def _nontrivial(module: torch.nn.Module) -> torch.nn.Module:
    """Randomise every parameter (adaLN-Zero makes blocks the identity at init)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def test_head_graph_is_the_interleaved_per_head_matrix_and_its_transpose():
    ei, _, _ = _graph()
    layer = GraphAttention(D, H, G, ei, mode="shared")
    hg = HeadGraph(layer.src, layer.dst, G, H)
    vals = torch.randn(layer.n_edges, H)  # (E, H) in the layer's edge order
    dense = torch.zeros(G * H, G * H)
    for h in range(H):
        dense[layer.dst * H + h, layer.src * H + h] = vals[:, h]
    flat = vals.reshape(-1)[hg.order]
    A = torch.sparse_csr_tensor(hg.crow, hg.col, flat, (G * H, G * H), check_invariants=True)
    At = torch.sparse_csr_tensor(hg.crow_t, hg.col_t, flat[hg.perm_t], (G * H, G * H), check_invariants=True)
    torch.testing.assert_close(A.to_dense(), dense)
    torch.testing.assert_close(At.to_dense(), dense.T)


@pytest.mark.parametrize("mode", ["shared", "dynamic"])
def test_gene_major_block_equals_batch_major_block(mode):
    ei, sign, w = _graph()
    blk = _nontrivial(GraphDiTBlock(D, H, G, ei, sign, w, mode=mode))
    h, c = torch.randn(3, G, D, requires_grad=True), torch.randn(3, D)
    y_b = blk(h, c)  # (B, G, D)
    y_g = blk.forward_genes(h.transpose(0, 1).contiguous(), c)  # (G, B, D)
    torch.testing.assert_close(y_g.transpose(0, 1), y_b, atol=1e-5, rtol=1e-4)
    g_b, = torch.autograd.grad(y_b.square().sum(), h)
    g_g, = torch.autograd.grad(y_g.square().sum(), h)
    torch.testing.assert_close(g_g, g_b, atol=1e-4, rtol=1e-3)


def test_gene_major_pooling_equals_batch_major_pooling():
    M = (torch.rand(G, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    pool = _nontrivial(ModulePooling(G, D, M, n_learned=2))
    h = torch.randn(2, G, D)
    tok = pool.pool(h)
    torch.testing.assert_close(pool.pool_genes(h.transpose(0, 1).contiguous()), tok)
    torch.testing.assert_close(pool.unpool_genes(tok).transpose(0, 1), pool.unpool(tok))


def test_sampling_cache_gives_the_uncached_output_and_follows_weight_updates():
    ei, sign, w = _graph()
    net = _nontrivial(GRNTransformer(G, ei, sign, w, membership=(torch.rand(G, 3) > 0.5).float(), hidden=D, heads=H,
                                     n_learned_modules=2)).eval()
    x, t = torch.randn(4, G), torch.rand(4)
    ref = net(x, t)  # autograd on: nothing cached
    with torch.no_grad():
        first, again = net(x, t), net(x, t)  # the second call reads the cached edge/pooling weights
    torch.testing.assert_close(first, ref)
    torch.testing.assert_close(again, ref)
    layer = net.graph_layers()[0]
    assert "shared" in layer.__dict__.get("_weight_cache", {})
    with torch.no_grad():
        layer.gene_id.mul_(3.0)  # an in-place update (optimizer, EMA, load_state_dict) bumps the version
        net.pooling.assign_logits.add_(1.0)
        updated = net(x, t)
    torch.testing.assert_close(updated, net(x, t))  # equals the fresh, uncached computation
    assert not torch.allclose(updated, ref)
    twin = copy.deepcopy(net)  # a copy (EMA shadow) never reads the original's cache
    with torch.no_grad():
        twin.graph_layers()[0].gene_id.zero_()
        torch.testing.assert_close(twin(x, t), twin.train()(x, t).detach())


def test_cpu_runtime_uses_every_free_core_unless_the_user_chose(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", before)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(runtime, "PASSIVE_WAIT", False)  # spinning OpenMP threads: leave busy cores alone
    for busy, want in ((0.0, 4), (1.2, 3), (2.6, 1), (9.0, 1)):  # other runnable processes → threads
        monkeypatch.setattr(runtime, "busy_elsewhere", lambda busy=busy: busy)
        assert runtime.default_threads() == want
    monkeypatch.setattr(runtime, "PASSIVE_WAIT", True)  # sleeping threads: every core, whatever else runs
    assert runtime.default_threads() == 4
    monkeypatch.setattr(runtime, "busy_elsewhere", lambda: 0.0)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    with runtime.cpu_runtime():
        assert torch.get_num_threads() == 2
        torch.ones(1000, 1000).sum()  # allocations work with the allocator settings
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with runtime.cpu_runtime():
        assert torch.get_num_threads() == before  # the environment wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(runtime, "_TORCH_DEFAULT_THREADS", before + 1)  # as if the user had set `before`
    with runtime.cpu_runtime():
        assert torch.get_num_threads() == before


def _fake_libc(monkeypatch) -> list:
    """Replace glibc for :mod:`grndiff.train.runtime` by a recorder; returns the list of its calls
    (``(param, value)`` per ``mallopt``, ``("trim", pad)`` per ``malloc_trim``)."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(runtime, "_libc", lambda: FakeLibc())
    return calls


def test_freed_memory_is_kept_only_for_models_below_the_checkpoint_size(monkeypatch):
    """The heap policy (no fresh mmap per large tensor) fragments memory on large models: it is
    chosen by the size of one 64-cell node-state tensor, the same size that turns checkpointing on."""
    from grndiff.nn import GRNTransformer

    calls = _fake_libc(monkeypatch)
    assert runtime.KEEP_FREED_MAX_VALUES == GRNTransformer.checkpoint_above
    seen = []

    class Model:
        def __init__(self, genes, hidden):
            self.module = type("M", (), {"net": type("N", (), {"n_genes": genes, "n_latent": 0, "hidden": hidden})()})()

        @runtime.model_runtime
        def train(self):
            seen.append(list(calls))
            return "done"

    assert Model(7000, 32).train() == "done" and (runtime._M_MMAP_MAX, 0) in seen[-1]  # 57 MB tensors: heap
    assert ("trim", 0) in calls  # and the defaults come back after
    calls.clear()
    assert Model(20000, 32).train() == "done" and seen[-1] == [] and calls == []  # 164 MB: glibc's default
    monkeypatch.setenv("GRNDIFF_MALLOC", "heap")  # the user's choice: speed over memory
    assert Model(20000, 32).train() == "done" and (runtime._M_MMAP_MAX, 0) in seen[-1]
    assert runtime.node_state_values(torch.nn.Linear(2, 2)) == 0  # no gene tokens: small


def test_a_nested_runtime_block_keeps_the_outer_settings(monkeypatch):
    """``train`` calls ``predict`` (the validation gate): the inner block must not put glibc's
    defaults or the thread count back while the outer one runs — that put every later training
    step on fresh pages (2.3× the step time on Kang)."""
    calls = _fake_libc(monkeypatch)
    monkeypatch.setattr(runtime, "default_threads", lambda: 3)
    before = torch.get_num_threads()
    try:
        with runtime.cpu_runtime():
            set_up = list(calls)
            assert (runtime._M_MMAP_MAX, 0) in set_up and torch.get_num_threads() == 3
            with runtime.cpu_runtime(), runtime.cpu_runtime():
                pass
            assert calls == set_up and torch.get_num_threads() == 3  # nothing restored inside
        assert ("trim", 0) in calls and (runtime._M_MMAP_MAX, runtime._DEFAULT_MMAP_MAX) in calls
        assert torch.get_num_threads() == before and runtime._DEPTH == 0
        with pytest.raises(RuntimeError), runtime.cpu_runtime():  # an error inside still closes the block
            raise RuntimeError("boom")
        assert runtime._DEPTH == 0 and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_busy_elsewhere_counts_other_runnable_processes():
    """Two spinning child processes are seen as (about) two busy cores; this process's own threads are not."""
    import subprocess
    import sys
    import time

    if runtime._running_elsewhere() is None:
        pytest.skip("no /proc")
    base = runtime.busy_elsewhere(samples=10)
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        loaded = runtime.busy_elsewhere(samples=10)
    finally:
        for p in spin:
            p.kill()
    assert loaded >= base + 1.0  # at least one of the two is runnable at every read, usually both


def _load_speed():
    spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed_quick_writes_the_documented_records(tmp_path):
    speed = _load_speed()
    assert speed.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    obj = json.loads((tmp_path / "speed.json").read_text())
    assert (tmp_path / "speed.md").exists() and obj["command"].startswith("python benchmarks/speed.py --quick")
    assert str(tmp_path) not in obj["command"]  # no absolute paths of this machine
    recs = obj["records"]
    assert {r["dataset"] for r in recs} == {"speed"} and {r["method"] for r in recs} == {"grndiff"}
    assert {r["group"] for r in recs} == {f"G{g}_B{speed.QUICK['batch']}" for g in speed.QUICK["genes"]}
    assert set(speed.METRICS) <= {r["metric"] for r in recs}
    for r in recs:  # a one-step run may spend no measurable system time
        assert r["value"] is not None and (r["value"] > 0 or (r["metric"] == "system_frac" and r["value"] == 0)), r


def test_checkpointed_gene_blocks_give_the_same_loss_and_gradients():
    ei, sign, w = _graph()
    net = _nontrivial(GRNTransformer(G, ei, sign, w, membership=(torch.rand(G, 3) > 0.5).float(), hidden=D, heads=H))
    x, t = torch.randn(4, G), torch.rand(4)
    grads = []
    for above in (10**12, 0):  # never, always
        net.checkpoint_above = above
        net.zero_grad()
        net(x, t).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_shared_cpu_benchmark_quick(tmp_path):
    """benchmarks/shared_cpu.py --quick: idle and loaded runs of two settings, written as a results file."""
    import shared_cpu  # benchmarks/ is on pytest's pythonpath

    assert shared_cpu.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "shared_cpu.json").read_text())
    rows = {(r["method"], r["group"], r["metric"]): r["value"] for r in res["records"]}
    assert rows[("threads1", "loaded", "threads")] == 1
    assert rows[("auto", "idle", "train_s")] > 0 and rows[("auto", "loaded", "vs_idle_auto")] > 0


def test_openmp_wait_policy_is_passive_when_grndiff_loads_before_torch():
    """A fresh interpreter importing grndiff first gets OMP_WAIT_POLICY=PASSIVE; a user's policy, or
    torch loaded first, is left alone (and PASSIVE_WAIT says so)."""
    import os
    import subprocess
    import sys

    code = ("import grndiff, os; from grndiff import _openmp; "
            "print(os.environ.get('OMP_WAIT_POLICY'), _openmp.PASSIVE_WAIT)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda c, **e: subprocess.run([sys.executable, "-c", c], capture_output=True, text=True,  # noqa: E731
                                        env={**env, **e}, check=True).stdout.split()
    assert run(code) == ["PASSIVE", "True"]
    assert run(code, OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "False"]
    assert run("import torch; " + code) == ["None", "False"]
