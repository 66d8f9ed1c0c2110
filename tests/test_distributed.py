"""attngen.distributed on gloo (CPU), world sizes 2 and 4 in spawned processes, kernels under
the interpreter: shard → attention → unshard equals single-process attention, gradients
too, and a window moves O(w) keys per rank, not O(N)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen import distributed
from attngen.bench import world as distributed_bench
from tests.patterns_gen import oracle_mask, text, trees

# (pattern, query heads, kv heads, length, packed documents)
CASES = [
    ("causal", 2, 1, 97, False),
    ("local(24)", 2, 2, 131, False),
    ("causal & (sink(8) | local(16))", 4, 2, 88, False),
    ("causal & strided(5)", 2, 1, 75, False),
    ("causal & document", 2, 2, 110, True),
    ("heads { 0: causal; 1: local(9); *: causal & (sink(4) | local(20)) }", 4, 2, 101, False),
    ("causal", 2, 2, 40, False),  # fewer blocks than ranks at world 4: empty shards
    # N means the whole sequence's length, not a rank's prefix (tri-shape, MoA-style widths)
    ("causal & (local(8) | sink(4) | where(q >= N - 6)) | causal & local(N // 5)", 2, 1, 93,
     False),
]
TOL = 1e-4  # fp32; the same kernels on different key buffers (zeros where never visited)


def _inputs(H: int, Hkv: int, N: int, documents: bool):
    g = torch.Generator().manual_seed(N * 31 + H)
    q = torch.randn(1, H, N, 16, generator=g)
    k, v = (torch.randn(1, Hkv, N, 16, generator=g) for _ in range(2))
    doc = (torch.arange(N) * 3 // N) if documents else None
    return q, k, v, doc, torch.randn(1, H, N, 16, generator=g)


def _worker(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for text, H, Hkv, N, documents in CASES:
            q, k, v, doc, w = _inputs(H, Hkv, N, documents)
            full = [t.clone().requires_grad_() for t in (q, k, v)]
            ref = attngen.attention(*full, text, doc_ids=doc, backend="reference")
            (ref * w).sum().backward()
            local = [distributed.shard(t, text, doc_ids=doc).detach().requires_grad_()
                     for t in (q, k, v)]
            out = distributed.attention(*local, text, doc_ids=doc)
            whole = distributed.unshard(out.detach(), text, doc_ids=doc)
            assert (whole - ref).abs().max() <= TOL, (text, world, rank)
            (out * distributed.shard(w, text, doc_ids=doc)).sum().backward()
            for name, mine, theirs in zip("qkv", local, full):
                want = distributed.shard(theirs.grad, text, doc_ids=doc)
                err = (mine.grad - want).abs().max() if want.numel() else 0.0
                assert err <= TOL, (text, world, rank, name, float(err))
        # a window: each rank receives its neighbour's last blocks, not the sequence
        N, w = 4096, 64
        q, k, v, _, _ = _inputs(1, 1, N, False)
        local = [distributed.shard(t, "local(64)") for t in (q, k, v)]
        distributed.attention(*local, "local(64)")
        shards = distributed.plan_shards("local(64)", N, world)
        got = distributed.LAST_EXCHANGE
        assert got.received_positions == shards.received(rank)
        assert got.received_positions <= w + shards.block, got
        assert got.received_bytes == 2 * got.received_positions * 16 * 4  # K and V, fp32
        lo, hi = shards.rows(rank)  # and holds them in a buffer of O(rows + w), not O(N)
        assert got.buffer_positions <= hi - lo + w + shards.block, got
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_attention_equals_one_process(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", os.environ.get("ATTNGEN_CACHE_DIR", "") or
                       str(tmp_path / "cache"))
    mp.spawn(_worker, args=(world, f"file://{tmp_path / 'rendezvous'}"), nprocs=world)


def test_the_split_balances_work_and_names_what_each_rank_needs():
    causal = distributed.plan_shards("causal", 4096, 4, block=128)
    assert causal.bounds[0] == 0 and causal.bounds[-1] == 4096
    assert all(b % 128 == 0 for b in causal.bounds[:-1])
    assert max(causal.work) - min(causal.work) <= 32 + 1  # a causal row of blocks at most
    assert causal.bounds[1] > 4096 // 4 > causal.bounds[4] - causal.bounds[3]  # not tokens
    window = distributed.plan_shards("local(300)", 4096, 4, block=128)
    for rank in range(1, 4):  # the previous rank's last 3 blocks at most (300 keys)
        assert window.wanted(rank, rank - 1)[-1][1] == window.bounds[rank]
        assert 300 <= window.received(rank) <= 3 * 128 + 128
        assert all(not window.wanted(rank, p) for p in range(rank - 1))
    sinks = distributed.plan_shards("causal & (sink(64) | local(128))", 4096, 4, block=64)
    assert sinks.wanted(3, 0)[0] == (0, 64)  # the sink block comes from rank 0


@settings(max_examples=60, deadline=None)
@given(tree=trees, N=st.integers(1, 260), world=st.integers(1, 5),
       block=st.sampled_from([None, 16, 32]))
def test_every_allowed_key_is_in_its_rank_s_needs(tree, N, world, block):
    """Random patterns (within causal) against the independent NumPy oracle: the split
    covers 0..N in order, and every key an allowed pair of a rank's rows names lies in the
    ranges that rank receives or holds, none after its last row."""
    pattern = f"causal & ({text(tree)})"
    shards = distributed.plan_shards(pattern, N, world, block=block)
    assert shards.bounds[0] == 0 and shards.bounds[-1] == N
    assert all(a <= b for a, b in zip(shards.bounds, shards.bounds[1:]))
    allowed = oracle_mask(tree, N, N) & np.tri(N, N, dtype=bool)
    for rank in range(world):
        lo, hi = shards.rows(rank)
        inside = np.zeros(N, dtype=bool)
        for a, b in shards.needs[rank]:
            inside[a:b] = True
        assert not inside[hi:].any(), (pattern, rank)
        assert not (allowed[lo:hi].any(0) & ~inside).any(), (pattern, rank, shards)


@pytest.mark.parametrize("text, error, message", [
    ("strided(4)", ValueError, "not within causal"),
    ("vertical_slash(8, 16)", NotImplementedError, "static patterns only"),
])
def test_patterns_it_cannot_split_say_why(text, error, message):
    with pytest.raises(error, match=message):
        distributed.plan_shards(text, 256, 2)


def test_bench_world_under_torchrun_writes_every_pattern(tmp_path):
    """`attngen bench --world 2` end to end on gloo (reference backend: no interpreter)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out, md = tmp_path / "w.json", tmp_path / "w.md"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2",
                    "-m", "attngen", "bench", "--world", "2", "--lengths", "512", "--heads",
                    "2", "--kv-heads", "1", "--head-dim", "16", "--repeats", "1", "--out",
                    str(out), "--md", str(md)], check=True, env=env, capture_output=True,
                   cwd=tmp_path, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert [r["pattern"] for r in rows] == distributed_bench.PATTERNS
    for r in rows:
        assert r["world"] == 2 and r["bounds"][0] == 0 and r["bounds"][-1] == 512
        assert r["attngen_ms"] > 0 and r["dense_ms"] > 0
    document = rows[-1]  # packed documents: a rank needs none of the others' keys but one
    assert document["attngen_received_bytes_max"] < document["dense_received_bytes_per_rank"]
    assert "| `causal` | 512 |" in md.read_text()


def test_bench_world_says_how_to_launch(capsys):
    from attngen.cli import main

    assert main(["bench", "--world", "2", "--out", "w.json"]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err
