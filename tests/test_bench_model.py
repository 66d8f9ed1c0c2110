"""`attngen bench --model`: what runs without a GPU (SPEC parsing, the bundled plan, the
ideal arithmetic, the writers) and a CPU smoke of the whole flow on a tiny model."""
from __future__ import annotations

import json

import pytest
import torch

import attngen
from attngen import cli
from attngen.bench import model as bm
from attngen.integrations import shapes
from attngen.integrations.plan import read_plan

DUO = ("heads { 0..7: causal; 8..15: causal & (sink(128) | local(4096)); "
       "16..23: vertical_slash(1000, 6000); *: causal & (local(1024) | strided(128)) }")


def test_named_shapes_have_the_exact_numbers():
    llama = shapes.parse_spec("llama3-8b:layers=4")
    c = llama.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size,
            c.vocab_size) == ("llama", 4, 4096, 14336, 128256)
    assert llama.heads == (32, 8, 128) and llama.layers == 4 and llama.folder is None
    assert shapes.rope_theta(c) == 500000.0 and c.max_position_embeddings >= 1 << 20
    qwen = shapes.parse_spec("qwen2.5-7b:layers=4")
    c = qwen.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size,
            c.vocab_size) == ("qwen2", 4, 3584, 18944, 152064)
    assert qwen.heads == (28, 4, 128) and shapes.rope_theta(c) == 1e6
    assert shapes.parse_spec("qwen2.5-7b").layers == 28  # the full depth without :layers


def test_tiny_shapes_build_on_the_device_with_their_biases():
    llama = shapes.build_model(shapes.parse_spec("tiny-llama:layers=1"), "cpu")
    qwen = shapes.build_model(shapes.parse_spec("tiny-qwen2:layers=1"), "cpu")
    assert len(llama.model.layers) == 1 and not llama.training
    assert next(llama.parameters()).dtype == torch.bfloat16
    attn = qwen.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and llama.model.layers[0].self_attn.q_proj.bias is None
    # the rotary frequencies stay float32 (a bf16 inv_freq would garble positions at 128K)
    assert llama.model.rotary_emb.inv_freq.dtype == torch.float32
    assert bm.weight_bytes(llama) > 0


@pytest.mark.parametrize("spec, message", [
    ("gpt9", "not a local model folder nor a named shape"),
    ("llama3-8b:layers=0", "layers=N \\(N >= 1\\)"),
    ("llama3-8b:weights=trained", r"weights=random\|structured"),
    ("llama3-8b:heads=4", "unknown option 'heads=4'"),
    ("llama3-8b:layers", "unknown option 'layers'"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        shapes.parse_spec(spec)


def _picked_slashes_near_the_diagonal(model, N: int = 256, s: int = 32) -> torch.Tensor:
    """Per layer and head: the share of the s offsets q - k with the most attention over the
    last 64 queries (vertical_slash's estimate, DESIGN §5) that lie below 2s."""
    ids = torch.randint(0, 512, (1, N), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    offsets = (torch.arange(N - 64, N)[:, None] - torch.arange(N)[None, :]).clamp(min=0)
    shares = []
    for a in out.attentions:
        a = a[0, :, -64:, :].float()
        sums = torch.zeros(a.shape[0], N).scatter_add_(
            1, offsets.flatten().expand(a.shape[0], -1), a.reshape(a.shape[0], -1))
        shares.append((sums.topk(s, dim=-1).indices < 2 * s).float().mean(-1))
    return torch.stack(shares)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_structured_weights_put_the_slash_lines_next_to_the_diagonal(name):
    shares = {}
    for weights in shapes.WEIGHTS:
        spec = shapes.parse_spec(f"{name}:layers=2,weights={weights}")
        spec.config._attn_implementation = "eager"  # attention weights out
        shares[weights] = _picked_slashes_near_the_diagonal(
            shapes.build_model(spec, "cpu", torch.float32))
    assert shares["structured"].min() >= 0.9  # the picks cluster at small offsets
    assert shares["random"].max() <= 0.6  # 2s of 256 offsets: 0.25 if spread evenly


def test_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        shapes.parse_spec(str(tmp_path))
    model = shapes.build_model(shapes.parse_spec("tiny-llama:layers=2"), "cpu")
    model.save_pretrained(tmp_path)
    spec = shapes.parse_spec(f"{tmp_path}:layers=1")
    assert spec.folder == tmp_path and spec.layers == 1 and spec.heads == (4, 2, 16)
    with pytest.raises(ValueError, match="applies to named shapes"):
        shapes.parse_spec(f"{tmp_path}:weights=structured")
    loaded = shapes.build_model(spec, "cpu")
    assert len(loaded.model.layers) == 1
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_the_reference_plan_expands_to_the_model():
    for layers, heads, kv in ((4, 32, 8), (3, 28, 4)):
        plan = bm.load_plan(None, layers)
        assert [r["layer"] for r in plan["layers"]] == list(range(layers))
        parsed = read_plan(plan)
        assert all(p == attngen.parse(DUO) for p in parsed.layers.values())
        nodes = parsed.pattern(0).head_nodes(heads, kv)
        assert str(attngen.Pattern(nodes[0])) == "causal"
        assert nodes[16].is_dynamic and not nodes[15].is_dynamic
        assert str(attngen.Pattern(nodes[heads - 1])) == str(attngen.Pattern(nodes[24]))
        assert "strided(128)" in str(attngen.Pattern(nodes[heads - 1]))
    assert bm.plan_file("duo_quarter") == bm.plan_file(None)


def test_plan_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file and no bundled plan"):
        bm.plan_file("no_such_plan")
    with pytest.raises(ValueError, match="not both"):
        bm.load_plan({"every_layer": "causal", "layers": [{"layer": 0, "pattern": "causal"}]},
                     2)
    with pytest.raises(ValueError, match=r"names layers \[5\]; the model has 4"):
        bm.load_plan({"layers": [{"layer": 5, "pattern": "causal"}]}, 4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"layers": [{"layer": 1, "pattern": "local(8)"}]}))
    assert read_plan(bm.load_plan(str(path), 2)).layers == {1: attngen.parse("local(8)")}


def test_ideal_arithmetic_by_hand():
    # 4 layers, 10 ms of dense attention each, 100 ms end to end: 40 ms attention, 60 other;
    # ideal 60 + 10 * (0.5 + 0.25 + 1 + 0.25) = 80
    got = bm.ideal(100.0, 10.0, [0.5, 0.25, 1.0, 0.25])
    assert got == pytest.approx({"attention_ms": 40.0, "non_attention_ms": 60.0,
                                 "attention_share": 0.4, "ideal_ms": 80.0})


def test_layer_density_by_hand():
    # N = 8: 36 causal pairs; causal & sink(2) allows 1 + 7 * 2 = 15 of them
    p = attngen.parse("heads { 0: causal & sink(2); *: causal }")
    assert bm.layer_density(p, 8, 2, 2) == pytest.approx((15 / 36 + 1) / 2)
    # vertical_slash(10, 20) at N = 99: 30 keys per row over a mean causal row of 50 = 0.6
    p = attngen.parse("heads { 0..1: causal; *: vertical_slash(10, 20) }")
    assert bm.layer_density(p, 99, 4, 2) == pytest.approx((1 + 1 + 0.6 + 0.6) / 4)
    vs = attngen.parse("vertical_slash(1000, 6000)").node
    assert bm.dynamic_density(vs, 8192) == 1.0  # capped
    assert bm.dynamic_density(vs, 32768) == pytest.approx(7000 / 16384.5)
    assert bm.layer_density(None, 64, 4, 2) == 1.0  # a layer the plan leaves dense


def test_ragged_batch_is_left_padded_as_generate_pads():
    ids, mask, lengths = bm.ragged_batch(20, 4, 50, "cpu")
    assert lengths == [20, 15, 12, 18]
    assert mask.sum(-1).tolist() == lengths and (ids[mask == 0] == 0).all()
    assert (mask[:, -1] == 1).all() and mask[1, :5].sum() == 0
    pos = bm._position_ids(mask, 20, 4, "cpu")
    assert pos[1, 5:].tolist() == list(range(15)) and pos[1, 0] == 1
    ids, mask, lengths = bm.ragged_batch(20, 1, 50, "cpu")
    assert mask is None and lengths == [20] and ids.shape == (1, 20)


def _result() -> dict:
    meta = {"model": "llama3-8b:layers=4", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11",
            "triton": "3.6", "transformers": "5.17", "attngen": "0.1.0", "date": "today",
            "plan": "duo_quarter", "statistic": "median", "ideal_rule": bm.IDEAL_RULE,
            "prefill_rule": "one forward", "ragged": "rows",
            "shape": {"layers": 4, "hidden": 4096, "heads": 32, "kv_heads": 8,
                      "head_dim": 128, "weights": "random"}}
    prefill = [{"N": 32768, "batch": 1, "system": "dense", "backend": "CUDNN_ATTENTION",
                "ms": 200.0, "peak_mib": 1000.0, "speedup_vs_dense": 1.0, "note": ""},
               {"N": 32768, "batch": 1, "system": "attngen", "ms": 125.0, "peak_mib": 1020.0,
                "speedup_vs_dense": 1.6, "vs_ideal": 1.25, "peak_vs_dense": 1.02,
                "peak_rule_met": True,
                "first_call_s": 12.5, "note": "first call"}]
    summary = [{"N": 32768, "batch": 1, "attention_layer_ms": 30.0, "attention_share": 0.6,
                "ideal_ms": 100.0, "attngen_vs_ideal": 1.25, "densities": [0.5, 0.5],
                "ragged_check": {"dense": {"relative": 0.001}, "attngen": {"note": "OOM: x"}}}]
    decode = [{"system": "attngen", "cache": 131072, "batch": 8, "ms": 0.5,
               "speedup_vs_dense": 2.0, "host_syncs_per_step": 0, "note": "CUDA graph"}]
    return {"meta": meta, "prefill": prefill, "summary": summary, "decode": decode}


def test_markdown_and_json(tmp_path):
    result = _result()
    bm.save(result, tmp_path / "r.json", tmp_path / "sub" / "r.md")
    assert json.loads((tmp_path / "r.json").read_text()) == result
    md = (tmp_path / "sub" / "r.md").read_text()
    assert md.count("NVIDIA H100 80GB HBM3") >= 4  # every table names its card
    assert "| 32768 | 1 | attngen | 125.0 | 1.60 | 1.25 | 1020 | 1.020 ✓ | 12.5 |" in md
    assert "| 32768 | 1 | dense (CUDNN_ATTENTION) | 200.0 | 1.00 | — |" in md
    assert "| 32768 | 1 | 30.00 | 0.60 | 100.0 | 1.25 | 0.500 | dense 1.00e-03, " \
           "attngen OOM: x |" in md
    assert "| 131072 | 8 | attngen | 0.500 | 2.00 | 0 | CUDA graph |" in md
    assert "density x one layer's dense attention" in md


def test_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert cli.main(["bench", "--model", "gpt9", "--out", out]) == 2
    assert "not a local model folder nor a named shape" in capsys.readouterr().err
    assert cli.main(["bench", "--decode", "--batch", "1", "4", "--out", out]) == 2
    assert "--batch takes one size" in capsys.readouterr().err
    assert cli.main(["bench", "--plan", "duo_quarter", "--out", out]) == 2
    assert "--plan goes with --model" in capsys.readouterr().err
    # the default plan names heads 0..23: too many for tiny-llama's 4
    assert cli.main(["bench", "--model", "tiny-llama", "--out", out]) == 2
    assert "head index 7 is out of range" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a failure, not a usage error: status 1, no traceback
        assert cli.main(["bench", "--model", "llama3-8b:layers=1", "--out", out]) == 1
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_the_whole_flow_on_a_tiny_model_on_the_cpu(tmp_path):
    """Plumbing only: CPU timings mean nothing, Flex needs CUDA (its rows say so)."""
    plan = tmp_path / "tiny.json"
    plan.write_text(json.dumps({"every_layer": "heads { 0: causal; 1: causal & (sink(2) | "
                                "local(8)); *: vertical_slash(2, 4) }", "layers": []}))
    rows = []
    result = bm.bench_model("tiny-llama:layers=2", str(plan), lengths=[24], batches=[1, 4],
                            decode_cache=16, decode_batch=2, repeats=1, device="cpu",
                            log=rows.append)
    prefill = {(r["batch"], r["system"]): r for r in result["prefill"]}
    assert sorted(prefill) == [(b, s) for b in (1, 4) for s in sorted(bm.SYSTEMS)]
    for b in (1, 4):
        assert prefill[b, "dense"]["ms"] > 0 and prefill[b, "attngen"]["ms"] > 0
        assert "CUDA" in prefill[b, "flex"]["note"]
    assert prefill[4, "attngen"]["lengths"] == [24, 18, 14, 21]
    summary = {u["batch"]: u for u in result["summary"]}
    assert summary[1]["densities"] == [summary[1]["densities"][0]] * 2
    assert summary[1]["ideal_ms"] == pytest.approx(bm.ideal(
        prefill[1, "dense"]["ms"], summary[1]["attention_layer_ms"],
        summary[1]["densities"])["ideal_ms"])
    check = summary[4]["ragged_check"]
    assert check["dense"]["relative"] < 0.05 and "relative" in check["attngen"]
    decode = {r["system"]: r for r in result["decode"]}
    assert decode["dense"]["ms"] > 0 and decode["attngen"]["ms"] > 0
    assert len(rows) == len(result["prefill"]) + len(result["decode"])
    bm.save(result, tmp_path / "r.json", tmp_path / "r.md")
    assert "tiny-llama:layers=2" in (tmp_path / "r.md").read_text()


@pytest.mark.parametrize("M, padded", [(200, True), (200, False), (1, False)])
def test_flex_plan_allows_exactly_what_the_mask_reference_allows(M, padded):
    """The Flex system's block masks (static heads, estimated heads, padding) against
    attngen.integrations.hf's exact masks, with eager flex_attention on the CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    from attngen.bench.flex import FlexPlan
    from attngen.integrations.hf import masked_attention
    from attngen.integrations.masks import MaskCache

    # vertical_slash always keeps 30 columns and 100 diagonals: these pick beyond them
    text = ("heads { 0: causal & (sink(3) | local(9)); 1: causal & strided(5); "
            "*: vertical_slash(34, 110) }")
    p = attngen.parse(text)
    B, H, Hkv, N, D = 2, 4, 2, 200, 8
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, M, D, generator=g)
    k, v = (torch.randn(B, Hkv, N, D, generator=g) for _ in range(2))
    mask = torch.ones(B, N, dtype=torch.long)
    if padded:
        mask[1, :45] = 0  # 45 pad keys: the third 16-key block holds pads and real keys
    flex = FlexPlan(read_plan({"layers": [{"layer": 0, "pattern": text}]}), H, Hkv, "cpu",
                    block=16)
    flex.set_padding(mask)
    bm = flex.layer(p, q, k).block_mask(q, k, None)
    out = flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    padding = mask.bool()[:, None, None, :].expand(B, 1, M, N) if padded else None
    ref = masked_attention(q, k, v, p.head_nodes(H, Hkv), MaskCache(), None, padding)
    assert (out - ref).abs().max() < 1e-5


def test_a_replayed_decode_step_starts_from_the_filled_cache_every_time():
    """transformers advances the cache's own counters in every forward (a tensor in 5.25,
    other names or plain ints elsewhere); the bench restores them all, or a replayed step
    would attend one key further per call, past the cache's end."""
    from attngen.profile.model import named_model

    model = named_model("tiny-llama:layers=2", dtype=torch.bfloat16)
    cfg = model.config
    cache = bm._static_cache(model, 2, 17, "cpu")
    bm.fill_cache(cache, 2, 2, cfg.num_key_value_heads, cfg.head_dim, 16, "cpu")
    counters = bm._counters(cache)
    step = bm.decode_step(model, cache, 2, 16, "cpu", counters)
    first = step()
    assert torch.equal(step(), first) and torch.equal(step(), first)
    assert int(cache.get_seq_length()) == 17  # one step past the 16 filled keys, not three
    nonzero = cache.layers[0].keys[0, 0].abs().sum(-1) != 0
    assert int(nonzero.sum()) == 17  # so a cache counting its non-empty slots agrees

    class Layer:  # an older cache: a plain int and a one-element tensor
        def __init__(self):
            self.seen, self.offset, self.keys = 16, torch.tensor([16]), torch.zeros(3)

    fake = type("Cache", (), {})()
    fake.layers = [Layer()]
    saved = bm._counters(fake)
    fake.layers[0].seen += 5
    fake.layers[0].offset += 5
    bm._restore(saved)
    assert fake.layers[0].seen == 16 and fake.layers[0].offset.item() == 16
