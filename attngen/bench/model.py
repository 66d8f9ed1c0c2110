"""`attngen bench --model SPEC`: a searched plan on a long-context model, end to end (GPU).

In one process, for each length N and batch (1, and 4 ragged rows left-padded as generate
pads them), three systems run the same model on the same tokens:

    dense    attn_implementation="sdpa" under sdpa_kernel(cuDNN), else FlashAttention,
             else memory-efficient (the one that ran is recorded)
    flex     transformers' flex_attention forward with the plan as block masks
             (attngen.bench.flex: static heads built once, dynamic heads from attngen's
             estimate in every call)
    attngen  hf.apply(model, plan, backend="kernels")

Prefill is timed as `generate` runs it: one forward over the prompt, logits_to_keep=1,
use_cache=True (a fresh DynamicCache), no grad; the median of CUDA-event timings after
warm-up. Peak memory: torch.cuda.max_memory_allocated() after a reset, minus the weights.
Decode: a StaticCache of `decode_cache` random keys and values per row (written directly,
no prefill), one step (M = 1) captured in a CUDA graph per system (eager, and said so, when
capture fails); host synchronisations of one eager step are counted too.

The ideal (module `ideal`): dense attention of one layer is timed alone (SDPA causal on
random q, k, v of the model's shape, same back-end); attention = layers × that;
non-attention = dense end to end − attention; ideal = non-attention + Σ_layers density ×
one layer's attention, density = allowed ÷ causal pairs of the layer's plan at N
(`layer_density`: dynamic heads count min(1, (v + s) / ((N + 1) / 2)) for
vertical_slash(v, s), min(1, t·g / ((N + 1) / 2)) for block_topk(t, g), 1 otherwise).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

import attngen
from attngen.bench.kernels import cuda_graph
from attngen.integrations.plan import expand_template, read_plan
from attngen.integrations.shapes import ModelSpec, build_model, parse_spec
from attngen.ir.pattern import Pattern

DEFAULT_PLAN = "duo_quarter"
SYSTEMS = ("dense", "flex", "attngen")
PEAK_RULE = 1.05  # the issue's rule: attngen's peak memory ÷ dense's at most this
RAGGED = (1.0, 0.75, 0.6, 0.9)  # the rows of a batch of 4, as fractions of N
IDEAL_RULE = ("ideal = (dense e2e - layers x one layer's dense attention) + sum over layers "
              "of density x one layer's dense attention; density = allowed / causal pairs "
              "of the layer's plan at N; a dynamic head counts min(1, (v + s) / ((N + 1) / 2)) "
              "for vertical_slash(v, s) (keys per row over the mean causal row), "
              "min(1, t*g / ((N + 1) / 2)) for block_topk(t, g), else 1")


# -- the model -----------------------------------------------------------------------------
def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size()
               for t in [*model.parameters(), *model.buffers()])


# -- the plan ------------------------------------------------------------------------------
def plan_file(source: str | Path | None) -> Path:
    """A plan file: a path, or a bundled plan's name (patterns/plans/NAME.json)."""
    source = DEFAULT_PLAN if source is None else source
    if os.path.isfile(source):
        return Path(source)
    bundled = Path(str(resources.files("attngen.patterns") / "plans" / f"{source}.json"))
    if bundled.is_file():
        return bundled
    raise ValueError(f"--plan {source!r}: no such file and no bundled plan of that name")


def load_plan(source: str | Path | dict | None, layers: int) -> dict:
    """The plan (DESIGN §7) for a model of `layers` layers. A template file holds
    `"every_layer": PATTERN` instead of a `layers` list: it expands to that pattern on every
    layer. A plan that names a layer the model lacks is an error."""
    data = source if isinstance(source, dict) else json.loads(plan_file(source).read_text())
    if not isinstance(data, dict):
        raise ValueError("a plan is a JSON object (DESIGN §7)")
    if "every_layer" in data:
        data = expand_template(data, layers)
    plan = read_plan(data)
    extra = sorted(i for i in plan.layers if not 0 <= i < layers)
    if extra:
        raise ValueError(f"the plan names layers {extra}; the model has {layers}")
    return data


def dynamic_density(prim, N: int) -> float:
    """A dynamic primitive's density by the documented rule (IDEAL_RULE)."""
    from attngen.runtime.dynamic import parameters

    mean_row = (N + 1) / 2
    if prim.name == "vertical_slash":
        v, s = parameters(prim, N, N)[:2]
        return min(1.0, (v + s) / mean_row)
    if prim.name == "block_topk":
        t, g = parameters(prim, N, N)[:2]
        return min(1.0, t * g / mean_row)
    return 1.0


def layer_density(pattern: Pattern | None, N: int, heads: int, kv_heads: int,
                  device="cpu") -> float:
    """Mean over query heads of allowed ÷ causal pairs at M = N, static heads counted
    exactly on `device` (IDEAL_RULE for dynamic heads; a dynamic head's static union adds
    its own density, capped at 1)."""
    if pattern is None:
        return 1.0
    nodes = pattern.head_nodes(heads, kv_heads)
    per_node = {n: _node_density(n, N, str(device)) for n in dict.fromkeys(nodes)}
    return sum(per_node[n] for n in nodes) / len(nodes)


@functools.lru_cache(maxsize=256)
def _node_density(node, N: int, device: str) -> float:
    from attngen.codegen.torch_predicate import count_allowed
    from attngen.lower.decompose import decompose

    if not node.is_dynamic:
        return count_allowed(node, N, N, device) / (N * (N + 1) / 2)
    term = decompose(node)[-1].dynamic
    d = dynamic_density(term.prim, N)
    if term.static is not None:
        d += _node_density(term.static, N, device)
    return min(1.0, d)


def ideal(dense_ms: float, attention_layer_ms: float, densities: list[float]) -> dict:
    """The ideal end-to-end time of a sparse plan (IDEAL_RULE)."""
    attention = len(densities) * attention_layer_ms
    other = dense_ms - attention
    return {"attention_ms": attention, "non_attention_ms": other,
            "attention_share": attention / dense_ms if dense_ms > 0 else None,
            "ideal_ms": other + sum(d * attention_layer_ms for d in densities)}


# -- inputs --------------------------------------------------------------------------------
def ragged_batch(N: int, batch: int, vocab: int, device, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """(input_ids [B, N], attention_mask [B, N] or None, real lengths): batch 1 is one row of
    N tokens; a larger batch has rows of RAGGED fractions of N, left-padded (pad id 0)."""
    g = torch.Generator().manual_seed(seed + N)
    fractions = [1.0] if batch == 1 else [RAGGED[i % len(RAGGED)] for i in range(batch)]
    lengths = [max(1, int(N * f)) for f in fractions]
    ids = torch.zeros(batch, N, dtype=torch.long)
    mask = torch.zeros(batch, N, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, N - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[b, N - n:] = 1
    padded = any(n < N for n in lengths)
    return ids.to(device), (mask.to(device) if padded else None), lengths


def _position_ids(mask: torch.Tensor | None, N: int, batch: int, device) -> torch.Tensor:
    """As generate computes them: the cumulative count of real tokens minus one (pads 1)."""
    if mask is None:
        return torch.arange(N, device=device)[None].expand(batch, N)
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _logits_kwarg(model: torch.nn.Module) -> dict:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def prefill_fn(model, ids, mask) -> Callable[[], torch.Tensor]:
    """One forward over the prompt as generate runs it; returns the last logits [B, V]."""
    extra = _logits_kwarg(model)
    pos = _position_ids(mask, ids.shape[1], ids.shape[0], ids.device)

    def run():
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                        **extra)
        return out.logits[:, -1]

    return run


# -- timing --------------------------------------------------------------------------------
class Timer:
    """Median-ready timings of a callable: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable, repeats: int, warmup: int = 1,
                 before: Callable | None = None) -> list[float]:
        """Times of `repeats` calls after `warmup` untimed ones; `before` runs untimed ahead
        of each timed call (attngen.bench.world: a barrier, so ranks start together)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            if before is not None:
                before()
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None


def default_repeats(N: int) -> int:
    return 5 if N >= 131072 else 7 if N >= 65536 else 10


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free(failed: bool = False) -> None:
    """Give cached GPU memory back between systems; after a failure also collect the
    cycles (an exception's traceback holds the frames and their tensors)."""
    if failed:
        import gc

        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- systems -------------------------------------------------------------------------------
SDPA_ORDER = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def sdpa_context(name: str | None):
    """sdpa_kernel([SDPBackend.name]), or nothing for None (the default dispatch)."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


class Systems:
    """Switches one model between the three systems."""

    def __init__(self, model, plan: dict, device):
        from attngen.bench.flex import FlexPlan

        self.model, self.plan, self.device = model, read_plan(plan), device
        H, Hkv = _model_heads(model)
        self.flex = FlexPlan(self.plan, H, Hkv, device) if torch.device(device).type == \
            "cuda" else None
        if self.flex is not None:
            self.flex.register()
        self.sdpa_backend: str | None = None  # the one that ran last
        self.attngen_backend = "kernels"

    @contextlib.contextmanager
    def use(self, system: str, mask: torch.Tensor | None = None):
        from attngen.integrations import hf

        model = self.model
        if system == "dense":  # the caller enters sdpa_context(self.sdpa_backend)
            model.set_attn_implementation("sdpa")
            yield
            return
        if system == "flex":
            if self.flex is None:
                raise NotImplementedError("flex: transformers' flex attention runs on CUDA here")
            self.flex.set_padding(mask)
            model.set_attn_implementation(self.flex.name)
            yield
            return
        try:
            hf.apply(model, self.plan, backend=self.attngen_backend)
        except ValueError:
            if torch.device(self.device).type == "cuda":
                raise
            self.attngen_backend = "masks"  # CPU smoke on an hf without "kernels"
            hf.apply(model, self.plan, backend="masks")
        try:
            yield
        finally:
            hf.remove(model)

    def pick_sdpa(self, fn: Callable) -> str:
        """Run fn under each back-end of SDPA_ORDER until one runs; keep it."""
        if torch.device(self.device).type != "cuda":
            self.sdpa_backend = None
            return "default (CPU)"
        errors = []
        for name in SDPA_ORDER:
            self.sdpa_backend = name
            try:
                with sdpa_context(name):
                    fn()
                return name
            except RuntimeError as e:
                if _oom(e):
                    raise
                errors.append(f"{name}: {_short(e)}")
        self.sdpa_backend = None
        raise RuntimeError("no SDPA back-end ran: " + "; ".join(errors))


def _model_heads(model) -> tuple[int, int]:
    c = model.config
    H = int(c.num_attention_heads)
    return H, int(getattr(c, "num_key_value_heads", None) or H)


def attention_layer_ms(batch: int, N: int, heads: int, kv_heads: int, head_dim: int,
                       backend: str | None, timer: Timer, repeats: int, device) -> float:
    """One layer's dense causal attention alone (SDPA on random q, k, v; same back-end)."""
    g = torch.Generator(device=device).manual_seed(N)
    shape = lambda h: (batch, h, N, head_dim)  # noqa: E731
    q = torch.randn(shape(heads), device=device, dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(shape(kv_heads), device=device, dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    r = heads // kv_heads
    sdpa = torch.nn.functional.scaled_dot_product_attention

    run = lambda: sdpa(q, k, v, is_causal=True, enable_gqa=r > 1)  # noqa: E731
    with sdpa_context(backend):
        try:
            run()
        except (TypeError, RuntimeError) as e:  # torch or a back-end without enable_gqa
            if _oom(e):
                raise
            k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
            run = lambda: sdpa(q, k, v, is_causal=True)  # noqa: E731

    def timed():
        with sdpa_context(backend):
            return run()

    return statistics.median(timer(timed, repeats))


# -- the benchmark -------------------------------------------------------------------------
def prefill_rows(systems: Systems, spec: ModelSpec, N: int, batch: int, weights: int,
                 timer: Timer, repeats: int, log: Callable, check: bool) -> tuple[list, dict]:
    """Every system at (N, batch): timing, peak memory, first call; the ideal; the ragged
    check (padded batch vs each row alone) when `check`."""
    model = systems.model
    H, Hkv, D = spec.heads
    ids, mask, lengths = ragged_batch(N, batch, int(spec.config.vocab_size), systems.device)
    rows, last_logits = [], {}
    for system in SYSTEMS:
        row = {"N": N, "batch": batch, "lengths": lengths, "system": system, "ms": None,
               "note": ""}
        failed = False
        try:
            with systems.use(system, mask):
                fn = prefill_fn(model, ids, mask)
                if system == "dense":  # runs fn once per back-end tried
                    row["backend"] = systems.pick_sdpa(fn)
                with sdpa_context(systems.sdpa_backend if system == "dense" else None):
                    timer.reset_peak()
                    t0 = time.perf_counter()
                    logits = fn()
                    timer.sync()
                    row["first_call_s"] = time.perf_counter() - t0
                    times = timer(fn, repeats, warmup=1)
                peak = timer.peak()
                row.update(ms=statistics.median(times), times_ms=times,
                           peak_mib=None if peak is None else (peak - weights) / 2**20)
                if system == "flex":
                    row["block_mask_build_s"] = systems.flex.build_s
                    if any(p.is_dynamic for p in systems.plan.layers.values()):
                        systems.flex.per_call_s = []  # one more call, its builds timed
                        try:
                            fn()
                            row["dynamic_mask_ms_per_call"] = 1e3 * sum(systems.flex.per_call_s)
                        except Exception as e:  # the timings above stand
                            row["dynamic_mask_ms_per_call_error"] = _short(e)
                        finally:
                            systems.flex.per_call_s = None
                    row["note"] = _flex_note(row)
                if system == "attngen":
                    row["backend"] = systems.attngen_backend
                    row["note"] = "first call includes kernel compile / tuning"
                if check:
                    last_logits[system] = logits.float()
        except Exception as e:  # one system failing must not end the run
            row["note"] = ("OOM: " if _oom(e) else "failed: ") + _short(e)
            failed = True
        finally:
            _free(failed)
        rows.append(row)
        log(row)
    summary = {"N": N, "batch": batch, "lengths": lengths}
    by = {r["system"]: r for r in rows}
    dense = by["dense"].get("ms")
    for r in rows:
        if dense and r["ms"]:
            r["speedup_vs_dense"] = dense / r["ms"]
        if by["dense"].get("peak_mib") and r.get("peak_mib") is not None:
            r["peak_vs_dense"] = r["peak_mib"] / by["dense"]["peak_mib"]
            r["peak_rule_met"] = r["peak_vs_dense"] <= PEAK_RULE
    if dense:
        failed = False
        try:
            layer_ms = attention_layer_ms(batch, N, H, Hkv, D, systems.sdpa_backend, timer,
                                          repeats, systems.device)
            densities = [layer_density(systems.plan.pattern(i), N, H, Hkv, systems.device)
                         for i in range(spec.layers)]
            summary.update(ideal(dense, layer_ms, densities), attention_layer_ms=layer_ms,
                           densities=densities)
            if summary["non_attention_ms"] < 0:
                summary["note"] = ("attention alone took longer than the whole dense model: "
                                   "the ideal means nothing here")
            if by["attngen"]["ms"]:
                by["attngen"]["vs_ideal"] = by["attngen"]["ms"] / summary["ideal_ms"]
                summary["attngen_vs_ideal"] = by["attngen"]["vs_ideal"]
        except Exception as e:
            summary["note"] = "ideal not computed: " + _short(e)
            failed = True
        finally:
            _free(failed)
    if check and mask is not None:
        summary["ragged_check"] = ragged_check(systems, ids, lengths, last_logits)
    return rows, summary


def _flex_note(row: dict) -> str:
    note = f"static block masks built once: {row['block_mask_build_s']:.2f} s (not timed)"
    if "dynamic_mask_ms_per_call" in row:
        note += ("; dynamic heads: attngen's estimate and a block mask in every call "
                 f"(timed), alone {row['dynamic_mask_ms_per_call']:.1f} ms per call")
    return note


def ragged_check(systems: Systems, ids: torch.Tensor, lengths: list[int],
                 batch_logits: dict) -> dict:
    """Per system: max |last-token logits of the padded batch − each row alone| ÷ the
    largest |logit| of the rows alone (bf16 model)."""
    out = {}
    N = ids.shape[1]
    for system, padded in batch_logits.items():
        if system == "flex":
            continue  # the check covers attngen and the dense control
        failed = False
        try:
            alone = []
            with systems.use(system, None):
                for b, n in enumerate(lengths):
                    row_ids = ids[b:b + 1, N - n:]
                    with sdpa_context(systems.sdpa_backend if system == "dense" else None):
                        alone.append(prefill_fn(systems.model, row_ids, None)()[0].float())
            alone = torch.stack(alone)
            scale = alone.abs().max().item()
            diff = (padded - alone).abs().amax(-1)
            out[system] = {"max_abs_diff": diff.max().item(), "logit_scale": scale,
                           "relative": diff.max().item() / scale if scale else None,
                           "per_row": diff.tolist()}
        except Exception as e:
            out[system] = {"note": ("OOM: " if _oom(e) else "failed: ") + _short(e)}
            failed = True
        finally:
            _free(failed)
    return out


def _static_cache(model, batch: int, max_len: int, device):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kw = {"config": model.config, "max_cache_len": max_len}
    for name, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device),
                        ("dtype", torch.bfloat16)):
        if name in params:
            kw[name] = value
    return StaticCache(**kw)


def fill_cache(cache, layers: int, batch: int, kv_heads: int, head_dim: int, length: int,
               device, seed: int = 0) -> None:
    """Random keys and values at positions 0 … length − 1 of every layer (no prefill)."""
    g = torch.Generator(device=device).manual_seed(seed)
    pos = torch.arange(length, device=device)
    for layer in range(layers):
        k, v = (torch.randn(batch, kv_heads, length, head_dim, device=device,
                            dtype=torch.bfloat16, generator=g) for _ in range(2))
        cache.update(k, v, layer, {"cache_position": pos})
        del k, v


def _counters(cache) -> list[tuple[object, str, object]]:
    """The cache's own position counters as (owner, attribute, value now): every integer
    attribute, or integer tensor of at most one element, of the cache and of its layers
    (transformers 5.25: StaticLayer.cumulative_length, a tensor; other versions keep other
    names or plain ints). A replayed step writes the same slot only if each call starts
    from these values: a counter left to advance moves the step's cache position, and its
    key range with it, one further per call, past the cache's end."""
    found = []
    for owner in [cache, *getattr(cache, "layers", [])]:
        for name, value in vars(owner).items():
            if isinstance(value, torch.Tensor):
                if value.numel() <= 1 and not value.is_floating_point() and \
                        value.dtype != torch.bool:
                    found.append((owner, name, value.clone()))
            elif isinstance(value, int) and not isinstance(value, bool):
                found.append((owner, name, value))
    return found


def _restore(counters: list[tuple[object, str, object]]) -> None:
    """Sets each counter `_counters` found back to its value (in place for tensors: a
    captured graph keeps their addresses)."""
    for owner, name, value in counters:
        if isinstance(value, torch.Tensor):
            getattr(owner, name).copy_(value)
        else:
            setattr(owner, name, value)


def decode_step(model, cache, batch: int, length: int, device,
                counters: list | None = None) -> Callable[[], torch.Tensor]:
    """One decoding step at position `length` (M = 1) with static input buffers; every call
    empties the slot it writes and restores the cache's counters (`counters`, default: as
    they are now) first, so it writes the same slot: it can be replayed."""
    ids = torch.ones(batch, 1, dtype=torch.long, device=device)
    pos = torch.full((batch, 1), length, dtype=torch.long, device=device)
    extra = _logits_kwarg(model)
    if "cache_position" in inspect.signature(model.forward).parameters:
        extra["cache_position"] = torch.full((1,), length, dtype=torch.long, device=device)
    params = inspect.signature(model.forward).parameters
    extra["cache" if "cache" in params else "past_key_values"] = cache  # 5.25+: `cache`
    counters = _counters(cache) if counters is None else counters
    slots = [t for layer in getattr(cache, "layers", []) for name in ("keys", "values")
             if isinstance(t := getattr(layer, name, None), torch.Tensor) and t.dim() == 4
             and t.shape[2] > length]

    def step():
        # the slot this step writes is emptied first: a cache that counts its length by
        # its non-empty slots (older transformers) would otherwise count it once more
        for t in slots:
            t[:, :, length].zero_()
        _restore(counters)
        with torch.no_grad():
            return model(input_ids=ids, position_ids=pos, use_cache=True, **extra).logits

    return step


def count_syncs(step: Callable) -> int | None:
    """Host synchronisations torch reports (sync debug mode "warn") in one eager call."""
    if not torch.cuda.is_available():
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def graph_timing(step: Callable, timer: Timer, repeats: int) -> tuple[list[float], str]:
    """Times of `step` replayed from a CUDA graph, else eagerly (the reason noted)."""
    if not timer.cuda:
        return timer(step, repeats, warmup=1), "eager (no CUDA)"
    try:
        replay = cuda_graph(step, warmups=3)
    except Exception as e:
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return timer(step, repeats, warmup=2), "eager: CUDA graph capture failed: " + _short(e)
    times = timer(replay, repeats, warmup=3)
    del replay  # the graph and its memory
    return times, "CUDA graph"


def decode_rows(systems: Systems, spec: ModelSpec, length: int, batch: int, timer: Timer,
                repeats: int, log: Callable) -> list[dict]:
    """Per system: per-token latency of one decode step against `length` cached keys."""
    H, Hkv, D = spec.heads
    model, device = systems.model, systems.device
    rows = []
    try:
        cache = _static_cache(model, batch, length + 1, device)
        fill_cache(cache, spec.layers, batch, Hkv, D, length, device)
        counters = _counters(cache)  # every system's steps start from the filled cache
    except Exception as e:
        row = {"system": "all", "cache": length, "batch": batch, "ms": None,
               "note": ("OOM: " if _oom(e) else "failed: ") + "filling the cache: " + _short(e)}
        log(row)
        return [row]
    for system in SYSTEMS:
        row = {"system": system, "cache": length, "batch": batch, "ms": None, "note": ""}
        failed = False
        try:
            with systems.use(system, None):
                step = decode_step(model, cache, batch, length, device, counters)
                if system == "dense":
                    row["backend"] = systems.pick_sdpa(step)
                ctx = sdpa_context(systems.sdpa_backend if system == "dense" else None)
                with ctx:
                    step()
                    timer.sync()
                    row["host_syncs_per_step"] = count_syncs(step)
                    if system == "flex" and any(p.is_dynamic
                                                for p in systems.plan.layers.values()):
                        times = timer(step, repeats, warmup=2)
                        how = ("eager: the per-call estimate and block-mask build of dynamic "
                               "heads are not captured")
                    else:
                        times, how = graph_timing(step, timer, repeats)
                row.update(ms=statistics.median(times), times_ms=times, note=how)
        except Exception as e:
            row["note"] = ("OOM: " if _oom(e) else "failed: ") + _short(e)
            failed = True
        finally:
            _free(failed)
        rows.append(row)
        log(row)
    dense = rows[0]["ms"]
    for r in rows:
        if dense and r["ms"]:
            r["speedup_vs_dense"] = dense / r["ms"]
    return rows


def run_meta(spec: ModelSpec, device, plan: dict, plan_source: str) -> dict:
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.device(device).type == "cuda"
    H, Hkv, D = spec.heads
    return {"bench": "model", "model": spec.text, "device": torch.cuda.get_device_name()
            if cuda else "cpu", "torch": torch.__version__, "triton": triton_version,
            "transformers": transformers.__version__, "attngen": attngen.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "shape": {"layers": spec.layers, "hidden": int(spec.config.hidden_size),
                      "heads": H, "kv_heads": Hkv, "head_dim": D,
                      "intermediate": int(spec.config.intermediate_size),
                      "vocab": int(spec.config.vocab_size), "dtype": "bfloat16",
                      "weights": spec.weights if spec.folder is None else str(spec.folder)},
            "plan": plan_source, "plan_patterns": sorted({r["pattern"] for r in plan["layers"]}),
            "statistic": "median of CUDA-event timings after warm-up",
            "ideal_rule": IDEAL_RULE,
            "prefill_rule": "one forward over the prompt as generate runs it: logits_to_keep=1, "
                            "use_cache=True (a DynamicCache), no grad",
            "ragged": f"batch > 1: rows of {list(RAGGED)} x N tokens, left-padded"}


def bench_model(spec_text: str, plan_source: str | None = None,
                lengths: list[int] | None = None, batches: list[int] | None = None,
                decode_cache: int | None = 131072, decode_batch: int = 8,
                repeats: int | None = None, device=None, log: Callable = print,
                check: bool = True) -> dict:
    """The whole benchmark (module doc); `device` defaults to CUDA. repeats: per length
    (default_repeats) unless given. check: the ragged check at the first length."""
    spec = parse_spec(spec_text)
    plan = load_plan(plan_source, spec.layers)
    H, Hkv, _ = spec.heads
    for p in read_plan(plan).layers.values():
        p.head_nodes(H, Hkv)  # a mixture that does not fit the model's heads fails here
    device = torch.device(device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("attngen bench --model needs a CUDA GPU, and this machine has none")
    lengths = lengths or [32768, 65536, 131072]
    batches = batches or [1, 4]
    timer = Timer(device)
    t0 = time.perf_counter()
    model = build_model(spec, device)
    weights = weight_bytes(model)
    result = {"meta": {**run_meta(spec, device, plan, str(plan_source or DEFAULT_PLAN)),
                       "build_s": time.perf_counter() - t0, "weights_mib": weights / 2**20},
              "prefill": [], "summary": [], "decode": []}
    systems = Systems(model, plan, device)
    if decode_cache:  # first: short, so a run cut off in the long prefills still has it
        result["decode"] = decode_rows(systems, spec, decode_cache, decode_batch, timer,
                                       repeats or 20, log)
    for N in lengths:
        for batch in batches:
            rows, summary = prefill_rows(systems, spec, N, batch, weights, timer,
                                         repeats or default_repeats(N), log,
                                         check and N == lengths[0] and batch > 1)
            result["prefill"] += rows
            result["summary"].append(summary)
    return result


# -- output --------------------------------------------------------------------------------
def _fmt(x, f: str) -> str:
    return "—" if x is None else format(x, f)


def markdown(result: dict) -> str:
    m = result["meta"]
    s = m["shape"]
    card = m["device"]
    lines = [f"**{m['model']}** ({s['layers']} layers, hidden {s['hidden']}, {s['heads']} q / "
             f"{s['kv_heads']} kv heads × {s['head_dim']}, {s['weights']} weights, bf16) on "
             f"**{card}**; torch {m['torch']}, triton {m['triton']}, transformers "
             f"{m['transformers']}, attngen {m['attngen']}, {m['date']}. Plan: {m['plan']}. "
             f"{m['statistic']}.", "",
             f"Prefill ({m['prefill_rule']}); {m['ragged']}. Every time on {card}.", "",
             "| N | batch | system | ms | × dense speed | ÷ ideal | peak MiB (− weights) | "
             f"peak ÷ dense (rule ≤ {PEAK_RULE}) | first call s | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["prefill"]:
        mark = {True: " ✓", False: " ✗"}.get(r.get("peak_rule_met"), "")
        lines.append(
            f"| {r['N']} | {r['batch']} | {r['system']}"
            f"{' (' + r['backend'] + ')' if r.get('backend') else ''} | {_fmt(r['ms'], '.1f')} "
            f"| {_fmt(r.get('speedup_vs_dense'), '.2f')} | {_fmt(r.get('vs_ideal'), '.2f')} | "
            f"{_fmt(r.get('peak_mib'), '.0f')} | {_fmt(r.get('peak_vs_dense'), '.3f')}{mark} | "
            f"{_fmt(r.get('first_call_s'), '.1f')} | {r.get('note', '')} |")
    lines += ["", f"Ideal and attention share ({card}): {m['ideal_rule']}.", "",
              "| N | batch | dense attention / layer ms | attention share | ideal ms | "
              "attngen ÷ ideal | mean density | ragged check (max |Δlogit| ÷ scale) |",
              "|---|---|---|---|---|---|---|---|"]
    for u in result["summary"]:
        dens = u.get("densities")
        check = u.get("ragged_check") or {}
        text = ", ".join(f"{k} {_fmt(v.get('relative'), '.2e')}" if "relative" in v
                         else f"{k} {v.get('note')}" for k, v in check.items())
        lines.append(
            f"| {u['N']} | {u['batch']} | {_fmt(u.get('attention_layer_ms'), '.2f')} | "
            f"{_fmt(u.get('attention_share'), '.2f')} | {_fmt(u.get('ideal_ms'), '.1f')} | "
            f"{_fmt(u.get('attngen_vs_ideal'), '.2f')} | "
            f"{_fmt(sum(dens) / len(dens) if dens else None, '.3f')} | "
            f"{text or '—'}{' ' + u['note'] if u.get('note') else ''} |")
    if result["decode"]:
        lines += ["", f"Decode, one token per step ({card}):", "",
                  "| cache | batch | system | ms / token | × dense speed | host syncs / step | "
                  "note |", "|---|---|---|---|---|---|---|"]
        for r in result["decode"]:
            lines.append(
                f"| {r['cache']} | {r['batch']} | {r['system']}"
                f"{' (' + r['backend'] + ')' if r.get('backend') else ''} | "
                f"{_fmt(r['ms'], '.3f')} | {_fmt(r.get('speedup_vs_dense'), '.2f')} | "
                f"{_fmt(r.get('host_syncs_per_step'), 'd')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def line(row: dict) -> str:
    """One row as it comes (the log)."""
    what = (f"N={row['N']} B={row['batch']}" if "N" in row
            else f"decode cache={row.get('cache')} B={row.get('batch')}")
    ms = _fmt(row.get("ms"), ".2f")
    return f"{row['system']:8} {what:20} {ms:>10} ms  {row.get('note', '')}"


def save(result: dict, json_path: str | Path, md_path: str | Path | None = None) -> None:
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(markdown(result))
