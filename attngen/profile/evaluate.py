"""`attngen eval`: a plan side by side with dense and uniform baselines of the same density.

    results = evaluate(model, tokenizer, methods, EvalOptions())
    methods = baselines(plan, layers)     # dense, the plan, StreamingLLM, MoA uniform

- passkey retrieval by length × depth: greedy generation, exact match of the first number;
- kv retrieval by length × depth, the same way;
- RULER-style tasks the search never calibrates on (`task_lengths`, data.UNSEEN_TASKS):
  multi-key and multi-value needles, variable tracking, common-word extraction;
- perplexity on held-out text (windows of the evaluation half of Python's docs text).

Every method sees the same samples (fixed seeds): the comparison is paired, also for a
run stopped early (see `evaluate`).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from attngen.integrations import hf
from attngen.integrations.masks import MaskCache
from attngen.integrations.plan import ModelPlan, uniform_plan
from attngen.profile.candidates import library_call
from attngen.profile.data import UNSEEN_TASKS, Haystack, Sample, answered
from attngen.profile.scoring import static_density
from attngen.profile.search import measured_density, plan_density


@dataclass(frozen=True)
class EvalOptions:
    passkey_lengths: tuple[int, ...] = (512, 1536, 3072, 4096)
    kv_lengths: tuple[int, ...] = (1024, 3072)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    per_cell: int = 4  # samples per (length, depth): n per length = per_cell × len(depths)
    kv_per_cell: int = 2
    ppl_length: int = 2048
    ppl_windows: int = 8
    max_new_tokens: int = 7
    seed: int = 0
    rounds: tuple[int, ...] | None = None  # which sample rounds to run (default all)
    perplexity: bool = True  # False: leave perplexity to another shard of the run
    task_lengths: tuple[int, ...] = ()  # lengths of the unseen tasks (none by default)
    task_per_cell: int = 1
    tasks: tuple[str, ...] = UNSEEN_TASKS


@dataclass
class MethodResult:
    name: str
    pattern: str  # how the method is described in the report
    density: dict[int, float]  # at each evaluated length
    passkey: dict[str, list[bool]] = field(default_factory=dict)  # "length/depth" → hits
    kv: dict[str, list[bool]] = field(default_factory=dict)
    ppl: float = math.nan
    tasks: dict[str, list[bool]] = field(default_factory=dict)  # "task/length/depth" → hits


def matched_width(density: float, lengths: list[int], make, each: bool = False
                  ) -> tuple[int, float]:
    """The largest integer parameter x with mean density of make(x) over `lengths` ≤ density
    (with `each`: the density at every length ≤ density; density grows with x), by
    bisection. Returns x and that mean (with `each`: the largest) density."""
    def density_of(x: int) -> float:  # the mean over lengths, or with `each` the largest
        values = [static_density(make(x), n, n) for n in lengths]
        return float(max(values) if each else np.mean(values))

    lo, hi = 1, max(lengths)
    if density_of(lo) > density:
        return lo, density_of(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if density_of(mid) <= density else (lo, mid - 1)
    return lo, density_of(lo)


def baselines(plan: ModelPlan, layers: int) -> dict[str, ModelPlan]:
    """dense, the plan, and uniform StreamingLLM and MoA plans of the plan's density: for a
    plan searched with the budget on the mean over lengths (the default), the widest
    baseline whose mean over the search lengths is ≤ the plan's mean; for a plan searched
    with the budget at each length, the widest whose density at every search length is ≤
    the plan's largest density at a search length."""
    lengths = plan.meta.get("lengths") or [2048]
    per_length = plan.meta.get("density_per_length")
    each = (plan.meta.get("budget") or {}).get("at") == "each_length" and bool(per_length)
    target = (max(per_length.values()) if each else
              plan.meta.get("density") or plan_density(plan, lengths[-1]))
    recent, _ = matched_width(target, lengths,
                              lambda w: library_call("streaming", f"streaming_llm(4, {w})"),
                              each)
    streaming = library_call("streaming", f"streaming_llm(4, {recent})")
    permille, _ = matched_width(target, lengths,
                                lambda b: library_call("moa", f"moa(0, {b / 1000}, 0)"), each)
    moa = library_call("moa", f"moa(0, {permille / 1000}, 0)")
    return {"dense": uniform_plan("causal", layers),
            "plan": plan,
            f"StreamingLLM (4 sinks + {recent})": uniform_plan(streaming, layers),
            f"MoA uniform (beta={permille / 1000})": uniform_plan(moa, layers)}


def evaluate(model, tokenizer, methods: dict[str, ModelPlan], options: EvalOptions,
             haystack: Haystack | None = None, progress: bool = True,
             checkpoint: Callable[[list[MethodResult]], None] | None = None
             ) -> list[MethodResult]:
    """Every method on the same samples, in rounds: perplexity first, then round r adds the
    r-th sample of every (task, length, depth) cell for every method, and `checkpoint`
    sees the results after each round. A run stopped early still holds paired results
    with the same n for every method."""
    haystack = haystack or Haystack.documentation("evaluation", tokenizer)
    layers = len(hf.attention_modules(model))
    rounds = sample_rounds(haystack, options)
    results = {name: MethodResult(name, _describe(plan, layers),
                                  densities(model, plan, rounds[0] if rounds else [], options,
                                            haystack))
               for name, plan in methods.items()}
    if options.rounds is not None:
        rounds = [rounds[r] for r in options.rounds]
    windows = (haystack.text_windows(options.ppl_length, options.ppl_windows)
               if options.perplexity else [])
    total = len(methods) * (len(windows) + sum(len(r) for r in rounds))
    bar = tqdm(total=total, desc="evaluating", unit="run", disable=not progress)
    masks = MaskCache()

    def run(name: str, work):
        hf.apply(model, methods[name], masks=masks)
        try:
            return work()
        finally:
            hf.remove(model)

    for name in methods if windows else []:
        bar.set_postfix_str(f"{name[:24]} perplexity")
        results[name].ppl = run(name, lambda: perplexity(model, windows, bar))
    for cases in rounds:
        for kind, L, d, sample in cases:
            for name, result in results.items():
                bar.set_postfix_str(f"{name[:24]} {kind} {L}")
                hit = run(name, lambda: retrieved(model, tokenizer, sample,
                                                  options.max_new_tokens))
                if kind in ("passkey", "kv"):
                    getattr(result, kind).setdefault(f"{L}/{d}", []).append(hit)
                else:
                    result.tasks.setdefault(f"{kind}/{L}/{d}", []).append(hit)
                bar.update()
        if checkpoint is not None:
            checkpoint(list(results.values()))
    bar.close()
    return list(results.values())


def densities(model, plan: ModelPlan, first_round, options: EvalOptions,
              haystack: Haystack) -> dict[int, float]:
    """The plan's mean density at every evaluated length: exact for static plans; measured
    on the first sample of that length when the plan has dynamic heads."""
    prompts = {L: sample.prompt_ids for _, L, _, sample in reversed(first_round)}
    prompts[options.ppl_length] = haystack.text_windows(options.ppl_length, 1)[0]
    dynamic = any(p.is_dynamic for p in plan.layers.values())
    return {n: round(measured_density(model, plan, prompts[n]) if dynamic
                     else plan_density(plan, n), 4) for n in sorted(prompts)}


def sample_rounds(haystack: Haystack, options: EvalOptions
                  ) -> list[list[tuple[str, int, float, Sample]]]:
    """Round r: the r-th passkey and kv sample of every (length, depth) cell. The samples
    are drawn in a fixed order from one seeded generator, whatever gets evaluated."""
    rng = random.Random(options.seed)
    cells = [("passkey", L, d, options.per_cell) for L in options.passkey_lengths
             for d in options.depths]
    cells += [("kv", L, d, options.kv_per_cell) for L in options.kv_lengths
              for d in options.depths]
    drawn = {(kind, L, d): [haystack.sample(kind, L, d, rng) for _ in range(n)]
             for kind, L, d, n in cells}
    # the unseen tasks from their own generator: adding them changes no other sample
    task_rng = random.Random(options.seed + 1)
    tasks = [(t, L, d, options.task_per_cell) for t in options.tasks
             for L in options.task_lengths for d in options.depths]
    drawn.update({(t, L, d): [haystack.sample(t, L, d, task_rng) for _ in range(n)]
                  for t, L, d, n in tasks})
    cells += tasks
    return [[(kind, L, d, drawn[kind, L, d][r]) for kind, L, d, n in cells if r < n]
            for r in range(max(n for *_, n in cells))]


def _describe(plan: ModelPlan, layers: int) -> str:
    texts = {str(p) for p in plan.layers.values()}
    if len(texts) == 1 and len(plan.layers) == layers:
        return texts.pop()
    return f"searched, {len(plan.layers)} layers ({plan.meta.get('model', '')})"


@torch.no_grad()
def retrieved(model, tokenizer, sample: Sample, max_new_tokens: int) -> bool:
    """Greedy generation reproduces the answer: its first number, or without a tokenizer
    (random-token samples, data.RandomTokens) the answer's ids."""
    prompt = torch.tensor([sample.prompt_ids], device=next(model.parameters()).device)
    # one answer's worth of tokens per expected value (multivalue asks for several)
    new = (max_new_tokens * len(sample.answer.split()) if tokenizer is not None
           else len(sample.answer_ids))
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=new,
                         pad_token_id=tokenizer.eos_token_id if tokenizer is not None else 0)
    if tokenizer is None:
        return out[0, prompt.shape[1]:].tolist() == sample.answer_ids
    text = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    return answered(text, sample)


@torch.no_grad()
def perplexity(model, windows: list[list[int]], bar=None) -> float:
    nll, count = 0.0, 0
    for ids in windows:
        x = torch.tensor([ids], device=next(model.parameters()).device)
        logits = model(x, use_cache=False).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
        if bar is not None:
            bar.update()
    return math.exp(nll / count)


def accuracy(hits: dict[str, list[bool]], length: int) -> tuple[float, int]:
    """(accuracy, n) over every depth at one length."""
    cells = [v for k, v in hits.items() if int(k.split("/")[0]) == length]
    flat = [h for cell in cells for h in cell]
    return (float(np.mean(flat)) if flat else math.nan), len(flat)


def task_accuracy(hits: dict[str, list[bool]], task: str, length: int) -> tuple[float, int]:
    """(accuracy, n) of one unseen task over every depth at one length."""
    flat = [h for k, v in hits.items() if k.split("/")[:2] == [task, str(length)] for h in v]
    return (float(np.mean(flat)) if flat else math.nan), len(flat)


def to_json(results: list[MethodResult], options: EvalOptions) -> dict:
    return {"options": asdict(options), "methods": [asdict(r) for r in results]}


def merge(shards: list[dict]) -> tuple[list[MethodResult], EvalOptions]:
    """Results of shards of one run (results.json of runs with different --rounds, the
    same samples): hits concatenated per cell, perplexity from the shard that has it, and
    the lengths that some shard measured."""
    merged: dict[str, MethodResult] = {}
    for shard in shards:
        for m in shard["methods"]:
            density = {int(n): v for n, v in m["density"].items()}
            into = merged.setdefault(m["name"], MethodResult(m["name"], m["pattern"], density))
            for kind in ("passkey", "kv", "tasks"):
                for cell, hits in m.get(kind, {}).items():
                    getattr(into, kind).setdefault(cell, []).extend(hits)
            if m["ppl"] is not None and not math.isnan(m["ppl"]):
                into.ppl = m["ppl"]
    measured = {kind: sorted({int(cell.split("/")[0]) for r in merged.values()
                              for cell in getattr(r, kind)}) for kind in ("passkey", "kv")}
    fields = {**shards[0]["options"], "rounds": None, "perplexity": True,
              "passkey_lengths": measured["passkey"], "kv_lengths": measured["kv"]}
    options = EvalOptions(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in fields.items()})
    return list(merged.values()), options
