"""`attngen bench --backward | --decode`: the parts that run without a GPU (the bytes a
pattern needs, the report, the command line). The timing itself is GPU-only and no test
asserts a time (TESTING.md)."""
import json

import pytest
import torch

import attngen
from attngen import cli
from attngen.bench import serve as bench_serve


def test_needed_keys_count_each_kv_heads_union_of_allowed_keys():
    N = 1000
    p = attngen.parse("kv_heads { 0: causal; *: causal & (sink(8) | local(100)) }")
    assert bench_serve.needed_keys(p, 4, 2, 1, N) == [N, 108]
    assert bench_serve.needed_keys(attngen.parse("local(100)"), 2, 1, 3, N) == [102]
    # a query-head mixture: the kv head reads the union of its two query heads' keys
    mix = attngen.parse("heads { 0: causal & local(10); *: causal & sink(5) }")
    assert bench_serve.needed_keys(mix, 2, 1, 1, N) == [15]


def _result(kind):
    meta = {"bench": kind, "device": "GPU", "torch": "t", "triton": "tr", "attngen": "a",
            "date": "d", "shape": {"B": 8}, "statistic": "median", "repeats": 3}
    if kind == "backward":
        rows = [{"pattern": "causal", "N": 64, "check": "grad", "attngen": 1e-2, "flex": 1e-2,
                 "ratio": 1.0},
                {"pattern": "causal", "N": 4096, "system": "attngen", "fwd_bwd_ms": 2.0,
                 "fwd_ms": 0.5, "bwd_ms": 1.5, "vs_flex": 0.9,
                 "config": {"dkdv": [32, 128, 4, 2], "dq": [128, 32, 4, 2]}},
                {"pattern": "causal", "N": 4096, "system": "sdpa-fa2", "error": "RuntimeError"}]
    else:
        rows = [{"pattern": "causal", "N": 4096, "system": "attngen", "eager_ms": 0.1,
                 "graph_ms": 0.05, "needed_bytes": 10 ** 8, "cache_bytes": 10 ** 8,
                 "needed_TBps": 2.0, "cache_TBps": 2.0, "max_err": 1e-3,
                 "config": {"block_n": 64}},
                {"pattern": "causal", "N": 4096, "system": "flex", "needed_bytes": 10 ** 8,
                 "cache_bytes": 10 ** 8, "error": "RuntimeError: no"}]
    return {"meta": meta, "rows": rows}


@pytest.mark.parametrize("kind", ["backward", "decode"])
def test_reports_are_json_and_a_table(tmp_path, kind):
    result = _result(kind)
    bench_serve.save(result, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text()) == result
    table = (tmp_path / "r.md").read_text().splitlines()
    assert table[2].startswith("| pattern |") and len(table) == 4 + len(result["rows"])
    assert all(line.count("|") == table[2].count("|") for line in table[2:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
@pytest.mark.parametrize("flag", ["--backward", "--decode"])
def test_bench_modes_need_a_gpu(flag, tmp_path, capsys):
    """A failure, not a usage error: status 1 and one line, no traceback."""
    assert cli.main(["bench", flag, "--out", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.usefixtures("interpreter")
def test_decode_reference_of_the_benchmark_matches_decode():
    """The fp32 reference the decode benchmark reports errors against."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 2, 16, generator=g)
    k, v = (torch.randn(2, 2, 80, 16, generator=g) for _ in range(2))
    p = attngen.parse("kv_heads { 0: causal; *: causal & (sink(4) | local(20)) }")
    want = attngen.decode(q, k, v, torch.tensor([80, 80]), p)
    got = bench_serve._decode_reference(q, k, v, p, 2, 80)
    assert (got - want).abs().max() <= 1e-5
