"""`attngen search`: a pattern per (layer, head) of a causal LM under a density budget.

    plan = search(model, tokenizer, SearchOptions(density=0.3, lengths=(1024, 2048, 4096)))
    write_plan(plan, "plan.json")

1. calibrate: passkey and kv-retrieval haystacks at every length (data.py), run dense;
2. score every candidate on every head (scoring.py): output error and recall;
3. cost: density (allowed ÷ causal pairs) at each length;
4. choose one candidate per head (or per KV head) by the exact knapsack (knapsack.py):
   mean density over all heads and layers, averaged over the calibration lengths, ≤ the
   budget (`budget_at="mean"`, the default: measured best on SmolLM2, docs/profiler.md),
   with at least `floor` × the budget at every length, so the mean cannot starve the
   longest one (on SmolLM2 it kept passkey retrieval at 4K: docs/profiler.md); or ≤ the
   budget at every calibration length (`budget_at="each_length"`);
5. validate at a length not used in calibration: the plan's density there, and the answer
   tokens' loss under dense attention and under the plan on held-out samples.
"""
from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch

import attngen
from attngen.integrations import hf
from attngen.integrations.masks import MaskCache, head_mask
from attngen.integrations.plan import ModelPlan
from attngen.ir.pattern import Pattern
from attngen.profile.candidates import candidates
from attngen.profile.data import Haystack, Sample
from attngen.profile.knapsack import choose, grouped
from attngen.profile.runner import running
from attngen.profile.scoring import HeadScorer, Scores, load_scores, save_scores, static_density

BUDGET_AT = ("each_length", "mean")


@dataclass(frozen=True)
class SearchOptions:
    density: float = 0.3  # budget: mean density over heads and layers (and lengths)
    budget_at: str = "mean"  # or "each_length": the budget holds at every length
    floor: float = 0.7  # with the mean budget: every length ≥ floor × density (0: none)
    length_weights: tuple[float, ...] | None = None  # of the objective (default: equal)
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    validate_length: int | None = None  # default: between the two longest lengths
    samples: int = 6  # calibration samples per length, passkey and kv alternating
    per: str = "head"  # "head" (query heads) or "kv_head" (a group shares its pattern)
    families: tuple[str, ...] | None = None  # candidate families (default all)
    answer_weight: float = 0.2  # weight of the answer rows against the spread rows
    objective: str = "output_error"  # or "influence" (gradient, MoA; see profiler.md)
    seed: int = 0

    def __post_init__(self):  # checked here, before any calibration is spent
        if self.per not in ("head", "kv_head"):
            raise ValueError(f"per must be 'head' or 'kv_head', got {self.per!r}")
        if self.budget_at not in BUDGET_AT:
            raise ValueError(f"budget_at must be one of {BUDGET_AT}, got {self.budget_at!r}")
        if not 0 <= self.floor <= 1:
            raise ValueError(f"floor must be in [0, 1] (a share of the budget), got "
                             f"{self.floor}")

    def validation_length(self) -> int:
        if self.validate_length is not None:
            return self.validate_length
        top = sorted(self.lengths)[-2:]
        return (top[0] + top[-1]) // 2 if len(top) == 2 else top[0] * 3 // 2


def calibration_samples(haystack: Haystack, lengths, count: int, seed: int
                        ) -> dict[int, list[Sample]]:
    rng = random.Random(seed)
    return {length: [haystack.sample(("passkey", "kv")[i % 2], length, rng.uniform(0.1, 0.9),
                                     rng) for i in range(count)]
            for length in lengths}


def search(model, tokenizer, options: SearchOptions, haystack: Haystack | None = None,
           model_name: str = "", progress: bool = True, scores_path=None) -> ModelPlan:
    """scores_path: an .npz the per-head scores are saved to, and read from when they were
    computed with the same model, data, lengths, samples, seed and candidates (a search at
    another budget or objective then skips calibration)."""
    if options.validation_length() in options.lengths:
        raise ValueError("the validation length must not be a calibration length")
    haystack = haystack or Haystack.documentation("calibration", tokenizer)
    cands = candidates(options.families)
    samples = calibration_samples(haystack, options.lengths, options.samples, options.seed)
    influence = options.objective == "influence"
    key = {"model": model_name, "lengths": list(options.lengths), "samples": options.samples,
           "seed": options.seed, "data": haystack.fingerprint(), "influence": influence,
           "candidates": [c.text for c in cands]}
    timing: dict[str, float] = {}
    start = time.perf_counter()
    scores = load_scores(scores_path, cands, key) if scores_path else None
    if scores is None:
        scorer = HeadScorer(model, cands, influence=influence)
        scores = scorer.run(samples, progress)
        timing = {"calibration_forward_s": scorer.seconds["forward"],
                  "scoring_s": scorer.seconds["scoring"]}
        if scores_path:
            save_scores(scores, scores_path, key)
    timing["calibration_total_s"] = time.perf_counter() - start
    start = time.perf_counter()
    choice = select(scores, options, model.config.num_key_value_heads)
    plan = build_plan(scores, choice, options, model_name)
    timing["selection_s"] = time.perf_counter() - start
    start = time.perf_counter()
    validation = validate(model, haystack, plan, options, progress)
    timing["validation_s"] = time.perf_counter() - start
    timing = {name: round(seconds, 3) for name, seconds in timing.items()}
    return ModelPlan(plan.layers, {**plan.meta, "validation": validation, "timing": timing},
                     plan.layer_rows)


def select(scores: Scores, options: SearchOptions, kv_heads: int) -> np.ndarray:
    """Candidate index per (layer, query head)."""
    density, per = options.density, options.per
    loss = objective(scores, options)  # [layers, heads, C]
    # one budget row per length, or one row for the mean over lengths
    cost = scores.density if options.budget_at == "each_length" else scores.density.mean(
        0, keepdims=True)  # [rows, layers, heads, C]
    layers, heads, C = loss.shape
    budget = [density * layers * heads] * len(cost)
    if options.budget_at == "mean" and options.floor > 0:  # ≥ floor × budget at each length
        cost = np.concatenate([cost, -scores.density])
        budget += [-options.floor * density * layers * heads] * len(scores.density)
    rows = len(cost)
    if per == "head":
        picked = choose(loss.reshape(-1, C), cost.reshape(rows, -1, C), budget)
        return picked.reshape(layers, heads)
    group = heads // kv_heads
    picked = choose(grouped(loss.reshape(-1, C), layers * kv_heads),
                    grouped(cost.reshape(rows, -1, C), layers * kv_heads), budget)
    return np.repeat(picked.reshape(layers, kv_heads), group, axis=1)


def length_mean(values: np.ndarray, options: SearchOptions) -> np.ndarray:
    """values[L, …] averaged over the lengths with options.length_weights (default equal)."""
    if options.length_weights is None:
        return values.mean(0)
    w = np.asarray(options.length_weights, dtype=float)
    if w.shape != values.shape[:1] or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"length_weights must be {values.shape[0]} non-negative numbers, "
                         f"not all 0, got {options.length_weights}")
    return np.tensordot(w / w.sum(), values, axes=1)


def objective(scores: Scores, options: SearchOptions) -> np.ndarray:
    """[layers, heads, C]: what the knapsack minimises, averaged over the lengths (weighted
    by options.length_weights).

    "influence": the first-order increase of the loss (mean next-token loss over the
    sequence, and over the answer rows, mixed by answer_weight); an estimate below zero
    counts as no increase, and the output error breaks ties among those.
    "output_error": the relative output error of the head (module doc of scoring.py)."""
    error = length_mean(scores.mixed("loss", options.answer_weight), options)
    if options.objective == "output_error":
        return error
    if options.objective != "influence":
        raise ValueError(f"objective must be 'influence' or 'output_error', got "
                         f"{options.objective!r}")
    influence = length_mean(scores.mixed("influence", options.answer_weight), options)
    return np.maximum(influence, 0) + TIE_BREAK * error


TIE_BREAK = 1e-3  # weight of the output error next to the influence


def layer_pattern(texts: list[str]) -> str:
    """One layer's per-head patterns as a `heads { … }` mixture, the commonest as `*`."""
    common = Counter(texts).most_common(1)[0][0]
    if all(t == common for t in texts):
        return common
    entries: dict[str, list[int]] = {}
    for h, t in enumerate(texts):
        if t != common:
            entries.setdefault(t, []).append(h)
    parts = [f"{', '.join(_ranges(hs))}: {t}" for t, hs in entries.items()]
    return "heads { " + "; ".join(parts + [f"*: {common}"]) + " }"


def _ranges(heads: list[int]) -> list[str]:
    out, start = [], heads[0]
    for a, b in zip(heads, heads[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return out


def build_plan(scores: Scores, choice: np.ndarray, options: SearchOptions,
               model_name: str) -> ModelPlan:
    cands = scores.candidates
    loss = objective(scores, options)
    recall = scores.mixed("recall", options.answer_weight).mean(0)
    cost = scores.density.mean(0)
    layers, rows = {}, {}
    for layer, picks in enumerate(choice):
        texts = [cands[c].text for c in picks]
        layers[layer] = attngen.parse(layer_pattern(texts))
        rows[layer] = {"heads": [
            {"head": h, "pattern": cands[c].text, "family": cands[c].family,
             "recall": round(float(recall[layer, h, c]), 4),
             "density": round(float(cost[layer, h, c]), 4),
             "loss": round(float(loss[layer, h, c]), 6)}
            for h, c in enumerate(picks)]}
    heads = choice.shape[1]
    chosen = scores.density[:, np.arange(len(choice))[:, None], np.arange(heads)[None, :],
                            choice]  # [L, layers, heads]
    meta = {"model": model_name, "attngen_version": attngen.__version__,
            "lengths": list(options.lengths),
            "budget": {"density": options.density, "at": options.budget_at,
                       "floor": options.floor},
            "density": round(float(chosen.mean()), 4),
            "density_per_length": {str(n): round(float(d), 4)
                                   for n, d in zip(scores.lengths, chosen.mean((1, 2)))},
            "search": {k: v for k, v in asdict(options).items() if k != "density"},
            "candidates": [{"family": c.family, "pattern": c.text} for c in cands]}
    return ModelPlan(layers, meta, rows)


@torch.no_grad()
def answer_loss(model, samples: list[Sample]) -> dict:
    """Mean negative log-likelihood of the answer tokens, and how many answers are
    reproduced token for token under teacher forcing."""
    nll, exact = [], 0
    device = next(model.parameters()).device
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.answer_ids], device=device)
        logits = model(ids, use_cache=False, logits_to_keep=len(s.answer_ids) + 1).logits[0]
        logp = torch.log_softmax(logits[:-1].float(), -1)  # predictions of the answer tokens
        target = torch.tensor(s.answer_ids, device=device)
        nll.append(-logp.gather(1, target[:, None]).mean().item())
        exact += bool((logp.argmax(-1) == target).all())
    return {"answer_nll": round(float(np.mean(nll)), 4), "answers_exact": exact,
            "samples": len(samples)}


def plan_density(plan: ModelPlan, length: int, device: str | None = None) -> float:
    """Mean density over layers and heads at `length`: exact for static heads (counted on
    `device` when given, see `static_density`); dynamic heads count at the density
    measured during calibration."""
    values = []
    for layer, pattern in plan.layers.items():
        for row in plan.layer_rows.get(layer, {}).get("heads", []):
            p = attngen.parse(row["pattern"])
            values.append(row["density"] if p.is_dynamic
                          else static_density(p, length, length, device))
        if layer not in plan.layer_rows:
            values.append(static_density(pattern, length, length, device))
    return float(np.mean(values)) if values else 1.0


@torch.no_grad()
def measured_density(model, plan: ModelPlan, ids: list[int]) -> float:
    """Mean density over layers and heads of `plan` on one prompt, run under the plan:
    exact for static heads, allowed ÷ causal pairs of the estimated masks for dynamic ones."""
    L = len(ids)
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    group, masks, values = heads // kv_heads, MaskCache(), []

    def record(layer: int, query, key, value) -> None:
        pattern = plan.pattern(layer) or attngen.parse("causal")
        heads_of: dict = {}
        for h, node in enumerate(pattern.head_nodes(heads, kv_heads)):
            heads_of.setdefault(node, []).append(h)
        for node, hs in heads_of.items():
            if node.is_dynamic:  # the node's heads estimated as one batch
                kv = torch.tensor(hs) // group
                mask = head_mask(node, query[0, hs], key[0, kv], masks)
                values.extend((mask.sum((1, 2)).double() / (L * (L + 1) / 2)).tolist())
            else:
                values.extend([static_density(Pattern(node), L, L)] * len(hs))

    hf.apply(model, plan, backend="masks", record=record)
    try:
        model(torch.tensor([ids], device=next(model.parameters()).device), use_cache=False,
              logits_to_keep=1)
    finally:
        hf.remove(model)
    return float(np.mean(values))


def validate(model, haystack: Haystack, plan: ModelPlan, options: SearchOptions,
             progress: bool) -> dict:
    length = options.validation_length()
    held_out = calibration_samples(haystack, [length], 2, options.seed + 1)[length]
    dense = answer_loss(model, held_out)
    with running(model, plan):  # exact masks, a chunk of rows at a time (runner.py)
        sparse = answer_loss(model, held_out)
    device = next(model.parameters()).device
    counted = str(device) if device.type == "cuda" else None
    return {"length": length, "density": round(plan_density(plan, length, counted), 4),
            "dense": dense, "plan": sparse,
            "answer_ppl_ratio": round(math.exp(sparse["answer_nll"] - dense["answer_nll"]), 4)}
