"""GPU smoke of hf.apply(..., backend="kernels") on a random-weight Llama-3-8B-shaped model:
causal plan vs SDPA logits, the reference plan's prefill time vs SDPA, a padded batch vs its
rows alone, and a decode step with a static cache captured in a CUDA graph (with the host
synchronisations of an eager step counted). Writes JSON to $OUT (or ./).

    python benchmarks/hf_gpu_smoke.py --lengths 8192 32768 --layers 2
"""
import argparse
import json
import os
import time

import torch
import transformers

from attngen.integrations import hf

PLAN_TEXT = ("heads { 0..7: causal; 8..15: causal & (sink(128) | local(4096)); "
             "16..23: vertical_slash(1000, 6000); *: causal & (local(1024) | strided(128)) }")


def model_of(layers: int):
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rope_theta=500000.0, max_position_embeddings=1 << 20)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model


def plan(text: str, layers: int) -> dict:
    return {"layers": [{"layer": i, "pattern": text} for i in range(layers)]}


def timed(fn, repeats=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def prefill(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, logits_to_keep=1).logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--decode-cache", type=int, default=32768)
    ap.add_argument("--decode-batch", type=int, default=8)
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "transformers": transformers.__version__, "rows": []}
    model = model_of(args.layers)
    g = torch.Generator(device="cuda").manual_seed(0)
    for N in args.lengths:
        ids = torch.randint(0, 128000, (1, N), device="cuda", generator=g)
        hf.remove(model)
        model.set_attn_implementation("sdpa")
        dense = prefill(model, ids)
        dense_ms = timed(lambda: prefill(model, ids))
        hf.apply(model, plan("causal", args.layers), backend="kernels")
        t0 = time.perf_counter()
        causal = prefill(model, ids)
        first_s = time.perf_counter() - t0
        causal_ms = timed(lambda: prefill(model, ids))
        err = (causal.float() - dense.float()).abs().max().item()
        hf.apply(model, plan(PLAN_TEXT, args.layers), backend="kernels")
        t0 = time.perf_counter()
        prefill(model, ids)
        plan_first_s = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        plan_ms = timed(lambda: prefill(model, ids))
        plan_peak = torch.cuda.max_memory_allocated() / 2**30
        row = dict(N=N, sdpa_ms=dense_ms, attngen_causal_ms=causal_ms,
                   causal_first_call_s=first_s, causal_vs_sdpa_max_logit_err=err,
                   logit_scale=dense.float().abs().max().item(),
                   attngen_plan_ms=plan_ms, plan_first_call_s=plan_first_s,
                   plan_peak_gib=plan_peak)
        print(row, flush=True)
        out["rows"].append(row)
    # a padded batch: row 1 left-padded, vs that row alone
    N = args.lengths[0]
    ids = torch.randint(0, 128000, (2, N), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    mask[1, :N // 4] = 0
    hf.apply(model, plan(PLAN_TEXT, args.layers), backend="kernels")
    with torch.no_grad():
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        both = model(ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        alone = model(ids[1:, N // 4:], logits_to_keep=1).logits
    out["padded_row_vs_alone_max_err"] = (both[1].float() - alone[0].float()).abs().max().item()
    print("padded", out["padded_row_vs_alone_max_err"], flush=True)
    out["decode"] = decode(model, args)
    print(out["decode"], flush=True)
    path = os.path.join(os.environ.get("OUT", "."), "hf_gpu_smoke.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


def decode(model, args) -> dict:
    """One decode step (M = 1) with a StaticCache filled with random K/V, eager and under a
    captured CUDA graph, for SDPA and for attngen's plan."""
    B, C = args.decode_batch, args.decode_cache
    result = {}
    for name in ("sdpa", "attngen"):
        hf.remove(model)
        model.set_attn_implementation("sdpa")
        if name == "attngen":
            hf.apply(model, plan(PLAN_TEXT, args.layers), backend="kernels")
        cache = transformers.StaticCache(config=model.config, max_cache_len=C + 64)
        ids = torch.randint(0, 128000, (B, 1), device="cuda")
        with torch.no_grad():  # lay the cache out, then fill it as if C tokens were seen
            model(ids, past_key_values=cache, cache_position=torch.tensor([0], device="cuda"))
        for layer in cache.layers:
            layer.keys.normal_()
            layer.values.normal_()
        position = torch.tensor([C - 1], device="cuda")

        def step():
            for layer in cache.layers:  # transformers >= 5.2x counts seen tokens on the device
                if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                    layer.cumulative_length.fill_(C - 1)
            with torch.no_grad():
                return model(ids, past_key_values=cache, cache_position=position,
                             position_ids=position.view(1, 1).expand(B, 1)).logits

        step()
        eager_ms = timed(step, 5)
        syncs = None
        if name == "attngen":
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()
                syncs = 0
            except RuntimeError as e:
                syncs = f"synchronising op: {str(e)[:200]}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        graph_ms, graph = None, None
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            graph_ms = timed(graph.replay, 10)
        except Exception as e:  # report why capture failed
            graph_ms = f"{type(e).__name__}: {str(e)[:300]}"
        result[name] = dict(eager_ms=eager_ms, graph_ms=graph_ms, syncs_eager_step=syncs)
        cache = graph = None  # free this system's cache before the next one's
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
