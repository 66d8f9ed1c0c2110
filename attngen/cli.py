"""`attngen` on the command line: a thin front over the public API (DESIGN §8).

    attngen show "causal & (sink(128) | local(4096))" --n 32
    attngen layout streaming --n 8192 --block 128 --out layout.pt
    attngen demo

Every error about the user's input (a PatternError, a bad argument, a missing file) is
printed to stderr and exits with status 2; a failure (no GPU, a file that cannot be written,
an error at run time) exits with status 1. No traceback is shown unless `--debug` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import torch

import attngen
from attngen import library, viz
from attngen.dsl import load_text
from attngen.errors import PatternError, did_you_mean
from attngen.ir.node import walk
from attngen.ir.pattern import check_sizes
from attngen.lower.layout import check_dense
from attngen.profile import commands as profile_commands

MAX_ASCII_N = 64  # element picture up to this many keys (and queries)
MAX_ASCII_BLOCKS = 64  # block picture up to this many query and kv blocks
MAX_DYNAMIC_PAIRS = 1 << 26  # a dynamic picture materialises the M×N mask of each head
MAX_SAVED_CLASSES = 1 << 26  # `layout --out` saves classes() up to H·QB·KB of this


# -- arguments -----------------------------------------------------------------------------
def resolve(spec: str, name: str | None = None) -> attngen.Pattern:
    """PATTERN as a path to a .attn file, a bundled file's stem, or pattern-language text."""
    if os.path.isfile(spec):
        return attngen.load(spec, name)
    stems = library.files()
    if spec in stems:
        return attngen.load(stems[spec], name)
    if spec.endswith(".attn"):
        raise ValueError(f"no such file: {spec}")
    try:
        return load_text(spec, name, "<pattern>")
    except PatternError as e:
        if re.fullmatch(r"[A-Za-z_]\w*", spec) and did_you_mean(spec, set(stems)):
            raise PatternError(e.message, e.span, did_you_mean(spec, set(stems))
                               + " (a bundled pattern file)") from None
        raise


def block_arg(text: str) -> int | tuple[int, int]:
    """`64` or `64x128` (BM x BN)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m or int(m[1]) < 1 or (m[2] is not None and int(m[2]) < 1):
        raise argparse.ArgumentTypeError(
            f"expected a block size such as 64 or 64x128, got {text!r}")
    return int(m[1]) if m[2] is None else (int(m[1]), int(m[2]))


def default_heads(p: attngen.Pattern) -> int:
    """Enough heads to show every entry of a `heads { … }` mixture (and `*`); else 1."""
    if not p.is_mixture:
        return 1
    n = p.node
    heads = max((r.hi for r in n.ranges), default=-1) + 1 + (n.default >= 0)
    try:
        check_sizes(heads=heads)
    except ValueError as e:
        raise ValueError(f"showing every head of the {n.name} block needs {heads} heads: {e}; "
                         "pass --heads") from None
    return heads


def check_heads(heads: int, kv_heads: int | None) -> None:
    """--heads and --kv-heads: positive, and the query heads a multiple of the kv heads (as
    for a `heads { … }` pattern, also for a plain one)."""
    for what, v in (("--heads", heads), ("--kv-heads", kv_heads)):
        if v is not None and v < 1:
            raise ValueError(f"{what} must be at least 1, got {v}")
    if kv_heads is not None and heads % kv_heads:
        raise ValueError(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")


def positive(what: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


def uses_document(p: attngen.Pattern) -> bool:
    return any(n.op == "prim" and n.name == "document" for n in walk(p.node))


class Problem:
    """The sizes a command works at, checked, and the illustrative doc_ids if it needs them."""

    def __init__(self, p: attngen.Pattern, args: argparse.Namespace):
        self.pattern = p
        self.N = args.n
        self.M = args.n if args.m is None else args.m
        self.block = args.block
        self.heads = default_heads(p) if args.heads is None else args.heads
        self.kv_heads = getattr(args, "kv_heads", None)
        for what, v in (("--n", self.N), ("--m", self.M)):
            positive(what, v)
        check_heads(self.heads, self.kv_heads)
        check_sizes(self.M, self.N, self.heads)
        self.doc_ids = None
        self.docs = getattr(args, "docs", 4)
        if uses_document(p):  # ids are a run-time input; show equal-length documents
            if self.docs < 1:
                raise ValueError(f"--docs must be at least 1, got {self.docs}")
            self.doc_ids = torch.arange(self.N) * self.docs // self.N

    @property
    def kw(self) -> dict:
        return {"heads": self.heads, "kv_heads": self.kv_heads}

    def layout(self) -> attngen.BlockLayout:
        return attngen.layout(self.pattern, self.M, self.N, block=self.block,
                              doc_ids=self.doc_ids, **self.kw)

    def plan_summary(self) -> str:
        try:
            plan = attngen.lower(self.pattern, self.M, self.N, block=self.block, **self.kw)
        except (KeyError, PatternError):
            if self.doc_ids is None:
                raise
            return "plan: not available yet for `document` (its ids are a run-time input)"
        return plan.summary() + "\n" + self.useful_work(plan)

    def useful_work(self, plan) -> str:
        """Allowed pairs ÷ the pairs the plan's visited blocks compute (issue 18: the share
        of the kernel's work that is not masked away)."""
        if self.pattern.is_dynamic:
            return "  useful work: known at run time (the blocks come from the estimate)"
        try:
            allowed = self.layout().allowed_elements()
        except ValueError as e:
            return f"  useful work: not computed ({e})"
        return (f"  useful work {allowed / max(1, plan.elements):.1%}: {allowed} allowed pairs "
                f"of the {plan.elements} its blocks compute")

    @property
    def docs_note(self) -> str:
        if self.doc_ids is None:
            return ""
        return f"doc_ids: {self.docs} equal documents (a run-time input; see --docs)"

    def describe(self) -> str:
        bm, bn = (self.block, self.block) if isinstance(self.block, int) else self.block
        text = f"M={self.M} N={self.N} heads={self.heads} block={bm}x{bn}"
        return f"{text}  {self.docs_note}" if self.docs_note else text


def _block_chars() -> str:
    try:
        viz.BLOCK_CHARS.encode(getattr(sys.stdout, "encoding", None) or "ascii")
        return viz.BLOCK_CHARS
    except (UnicodeEncodeError, LookupError):
        return viz.ASCII_BLOCK_CHARS


def _density_lines(lay: attngen.BlockLayout) -> list[str]:
    partial, full = lay.block_counts()
    try:
        density = f"density    {lay.density():.4f}  (allowed pairs / causal pairs, exact)"
    except ValueError as e:  # too many partial-block elements to count
        density = f"density    not computed: {e}"
    return [density,
            (f"blocks     {partial} partial + {full} full of {viz.causal_blocks(lay)} causal "
             f"blocks: block density {viz.block_density(lay):.2%}")]


# -- commands ------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace) -> int:
    p = resolve(args.pattern, args.name)
    pb = Problem(p, args)
    print(f"pattern    {p}")
    print(f"shape      {pb.describe()}")
    if p.is_dynamic:
        _show_dynamic(p, pb, args)
    else:
        lay = pb.layout()
        g = lay.grid
        if pb.N <= MAX_ASCII_N and pb.M <= MAX_ASCII_N:
            print("mask       (# allowed, . masked; a row per query, a column per key)")
            print(viz.ascii_mask(p, pb.M, pb.N, doc_ids=pb.doc_ids, **pb.kw))
        elif g.QB <= MAX_ASCII_BLOCKS and g.KB <= MAX_ASCII_BLOCKS:
            c = _block_chars()
            print(f"blocks     ({c[2]} full, {c[1]} partial, {c[0]} empty; "
                  f"{g.QB} query blocks x {g.KB} kv blocks)")
            print(viz.ascii_blocks(lay, c))
        else:
            print(f"picture    {g.QB}x{g.KB} blocks are too many for the terminal; use --png")
        print("\n".join(_density_lines(lay)))
        if args.png:
            path = viz.save_png(p, pb.M, pb.N, pb.block, args.png, doc_ids=pb.doc_ids, **pb.kw)
            print(f"wrote      {path}")
    print(pb.plan_summary())
    return 0


def _dynamic_inputs(pb: Problem, args: argparse.Namespace
                    ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """q [1, H, M, D], k [1, Hkv, N, D] from --inputs (batch 0), else seeded random."""
    kv_heads = pb.kv_heads or pb.heads
    if args.inputs:
        q, k = _load_inputs(args.inputs)
        if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"{args.inputs}: want q [B, H, M, D] and k [B, Hkv, N, D], got "
                             f"{list(q.shape)} and {list(k.shape)}")
        pb.M, pb.N, pb.heads = q.shape[2], k.shape[2], q.shape[1]
        pb.kv_heads = k.shape[1]
        return q[:1].float(), k[:1].float(), f"q, k from {args.inputs} (batch 0)"
    positive("--head-dim", args.head_dim)
    g = torch.Generator().manual_seed(args.seed)
    q = torch.randn(1, pb.heads, pb.M, args.head_dim, generator=g)
    k = torch.randn(1, kv_heads, pb.N, args.head_dim, generator=g)
    return q, k, f"random q, k (seed {args.seed}, head dim {args.head_dim})"


def _load_inputs(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k from a torch.save file of {'q': …, 'k': …} (or a sequence q, k, …)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--inputs: no such file: {path}")
    want = "a torch.save file of {'q': [B, H, M, D], 'k': [B, Hkv, N, D]}"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file it cannot read
        first = (str(e).splitlines() or [""])[0]
        raise ValueError(f"--inputs {path} is not {want} ({type(e).__name__}: {first})") from None
    if isinstance(saved, dict):
        if "q" not in saved or "k" not in saved:
            raise ValueError(f"--inputs {path} has keys {sorted(map(str, saved))}; want {want}")
        q, k = saved["q"], saved["k"]
    elif isinstance(saved, list | tuple) and len(saved) >= 2:
        q, k = saved[:2]
    else:
        raise ValueError(f"--inputs {path} holds a {type(saved).__name__}; want {want}")
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)):
        raise ValueError(f"--inputs {path}: q and k must be tensors; want {want}")
    if not (q.is_floating_point() and k.is_floating_point()):
        raise ValueError(f"--inputs {path}: q and k must be floating point, got {q.dtype} and "
                         f"{k.dtype}")
    return q, k


def _show_dynamic(p: attngen.Pattern, pb: Problem, args: argparse.Namespace) -> None:
    """The pairs the run-time estimate picks on given or random inputs, drawn like a static
    pattern's mask and blocks."""
    from attngen.runtime import dynamic

    q, k, source = _dynamic_inputs(pb, args)
    if pb.M * pb.N > MAX_DYNAMIC_PAIRS:
        raise ValueError(f"a dynamic picture is drawn from the dense mask: M·N must be at most "
                         f"{MAX_DYNAMIC_PAIRS}, got {pb.M}·{pb.N} (use a smaller --n)")
    masks = dynamic.allowed(p, q, k, 1.0 / q.shape[-1] ** 0.5)[0]
    causal_pairs = sum(max(0, min(pb.N, i + pb.N - pb.M + 1)) for i in range(pb.M))
    print(f"dynamic    picked at run time from {source} (DESIGN §5)")
    for h, m in enumerate(masks):
        print(f"head {h:<5} density {m.sum().item() / max(1, causal_pairs):.4f}  "
              "(allowed pairs / causal pairs, this input)")
    if pb.N <= MAX_ASCII_N and pb.M <= MAX_ASCII_N:
        print("mask       (# allowed, . masked; a row per query, a column per key)")
        print(viz._grouped([viz._draw(m.numpy(), ".#") for m in masks]))
    bm, bn = (pb.block, pb.block) if isinstance(pb.block, int) else pb.block
    if args.png:
        rows = [(f"head {h}: ", None, m.numpy(), viz.mask_classes(m.numpy(), bm, bn))
                for h, m in enumerate(masks[:viz.MAX_PNG_ROWS])]
        title = f"{p}\nM={pb.M}  N={pb.N}: the estimate on {source}"
        print(f"wrote      {viz.save_panels(rows, title, (bm, bn), args.png)}")


def _stats(counts: np.ndarray) -> str:
    return f"{int(counts.min())} / {counts.mean():.2f} / {int(counts.max())}"


def cmd_layout(args: argparse.Namespace) -> int:
    p = resolve(args.pattern, args.name)
    pb = Problem(p, args)
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a file name such as "
                         f"{Path(args.out) / 'layout.pt'}")
    lay = pb.layout()
    g = lay.grid
    print(f"pattern    {p}")
    print(f"shape      {pb.describe()}: {g.QB} query blocks x {g.KB} kv blocks")
    for i, node in enumerate(lay.nodes):
        hs = [h for h in range(lay.heads) if lay.head_index[h] == i]
        print(f"{viz.heads_text(hs)}: {node.text}")
        print(f"  {'':<8} {'nnz':>10}   kv blocks per query block min / mean / max")
        part, full = lay.partial[i].counts, lay.full[i].counts
        for label, c in (("partial", part), ("full", full), ("total", part + full)):
            print(f"  {label:<8} {int(c.sum()):>10}   {_stats(c)}")
    print("\n".join(_density_lines(lay)))
    if args.out:
        width = max(int(c.counts.max(initial=1)) for c in lay.partial + lay.full)
        check_dense("layout --out's FlexAttention tensors", lay.heads * g.QB * width)
        saved = {**lay.to_flex(), "pattern": str(p), "M": g.M, "N": g.N,
                 "block": (g.BM, g.BN), "heads": lay.heads}
        if lay.heads * g.QB * g.KB <= MAX_SAVED_CLASSES:
            saved["classes"] = lay.classes()
        else:
            print(f"note       classes() left out: {lay.heads}x{g.QB}x{g.KB} is too large")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "wb") as f:  # an unwritable path fails here as an OSError
            torch.save(saved, f)
        print(f"wrote      {args.out}  ({', '.join(saved)})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    N, block = args.n, 128
    print(f"attngen {attngen.__version__} demo: the bundled pattern library at N={N} "
          f"(plans with {block}x{block} blocks)\n")
    for stem, path in sorted(library.files().items()):
        defs = re.findall(r"^def (\w+)", path.read_text(), re.MULTILINE)
        p = attngen.load(path)
        pb = Problem(p, argparse.Namespace(n=N, m=None, block=block, heads=None))
        count = f"{len(defs)} definition{'s' * (len(defs) != 1)}"
        print(f"== {stem}.attn: {defs[-1] if defs else 'its expression'}  ({count})")
        print(f"   {p}")
        if p.is_dynamic:
            print("   density    picked at run time (dynamic)")
        else:
            note = f"  ({pb.docs_note})" if pb.docs_note else ""
            print(f"   density    {pb.layout().density():.4f} of causal{note}")
        print("   " + pb.plan_summary().replace("\n", "\n   ") + "\n")

    streaming = library.files()["streaming"].read_text()
    a_shape = load_text(streaming + "\na_shape(64, 256)", file=str(library.files()["streaming"]))
    lay = attngen.layout(a_shape, 1024, 1024, block=64)
    c = _block_chars()
    print("A-shape from streaming.attn, a_shape(s=64, w=256), at N=1024 with 64x64 blocks "
          f"({c[2]} full, {c[1]} partial, {c[0]} empty):")
    print(f"   {a_shape}")
    print(viz.ascii_blocks(lay, c))
    print("\n".join(_density_lines(lay)))
    png = viz.save_png(a_shape, 1024, 1024, 64, Path(args.out_dir) / "a_shape.png")
    print(f"wrote      {png.resolve()}")
    _demo_kernel(a_shape)
    if args.skip_profiler:
        return 0
    if not profile_commands.profiler_available(default_model=True):
        print(f"\nprofiler   skipped: {profile_commands.MISSING_EXTRA}")
        return 0
    report = profile_commands.demo(Path(args.out_dir), density=args.density)
    print(f"\nreport     {report.resolve()}")
    return 0


def _demo_kernel(pattern: attngen.Pattern) -> None:
    """Compile the pattern's Triton kernel and check it against the reference."""
    from attngen.env import use_interpreter_without_gpu
    from attngen.reference import attention as reference

    interpreted = use_interpreter_without_gpu()
    device = "cpu" if interpreted else "cuda"
    dtype = torch.float32 if interpreted else torch.bfloat16
    M = N = 300 if interpreted else 4096
    H, D = 2, 64
    kern = attngen.compile(pattern, head_dim=D, dtype=dtype, heads=H, device=device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, generator=g).to(device, dtype) for n in (M, N, N))
    out = kern(q, k, v)
    ref = reference(q.float(), k.float(), v.float(), pattern)
    err = (out.float() - ref.to(out.device)).abs().max().item()
    where = "Triton interpreter (CPU)" if interpreted else torch.cuda.get_device_name()
    entry = kern.path / "kernel.py" if kern.path is not None else "(built in memory)"
    print(f"\nkernel     {entry} "
          f"({'rendered now' if kern.rendered else 'from the cache'})")
    print(f"ran        M=N={N}, {H} heads, head_dim {D}, {str(dtype)[6:]} on {where}: "
          f"max |out - reference| = {err:.1e}")
    print(f"           `attngen compile \"{pattern}\"` prints the generated source")


# -- the parser ----------------------------------------------------------------------------
_PATTERN_HELP = ("pattern-language text, a path to a .attn file, or a bundled pattern file's "
                 "name (" + ", ".join(sorted(library.files())) + ")")


def cmd_compile(args: argparse.Namespace) -> int:
    p = resolve(args.pattern, args.name)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    positive("--head-dim", args.head_dim)
    check_heads(args.heads, args.kv_heads)
    check_sizes(heads=args.heads)
    _check_device(args.device)
    kern = attngen.compile(p, head_dim=args.head_dim, dtype=dtype, heads=args.heads,
                           kv_heads=args.kv_heads, device=args.device)
    if args.o:
        Path(args.o).write_text(kern.source)
        print(f"wrote {args.o}")
    else:
        print(kern.source, end="")
    state = "rendered now" if kern.rendered else "cache hit"
    print(f"# cache entry: {kern.path or '(built in memory)'} ({state})",
          file=sys.stderr)
    return 0


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device must be cpu or cuda, got {device!r}") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise NoDevice("--device cuda: this torch has no CUDA device (use --device cpu for "
                       "the Triton interpreter)")


class NoDevice(RuntimeError):
    """The command needs hardware this machine lacks (exit status 1)."""


def _bench_serve(args: argparse.Namespace) -> int:
    """`attngen bench --backward | --decode` (attngen.bench.serve)."""
    from attngen.bench import serve as bench_serve

    partial = Path(args.out + ".rows.jsonl")  # each row as it comes: survives a cut-off run
    partial.unlink(missing_ok=True)

    def log(row: dict) -> None:
        print({k: v for k, v in row.items() if k not in ("times_ms", "tuning")}, flush=True)
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if args.backward:
        result = bench_serve.backward(args.patterns, args.lengths, heads=args.heads,
                                      head_dim=args.head_dim, repeats=args.repeats,
                                      check=args.check, inputs=args.inputs, log=log)
    else:
        result = bench_serve.decode(args.patterns, args.lengths, batch=args.batch,
                                    heads=args.heads, kv_heads=args.kv_heads,
                                    head_dim=args.head_dim, queries=args.queries,
                                    page=args.page, repeats=args.repeats, log=log)
    bench_serve.save(result, args.out, args.md)
    print(bench_serve.markdown(result))
    print(f"wrote {args.out}" + (f" and {args.md}" if args.md else ""))
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    """`attngen bench --model SPEC` (attngen.bench.model)."""
    from attngen.bench import model as bench_model

    partial = Path(args.out + ".rows.jsonl")  # each row as it comes: survives a cut-off run
    partial.unlink(missing_ok=True)

    def log(row: dict) -> None:
        print(bench_model.line(row), flush=True)
        with partial.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    result = bench_model.bench_model(args.model, args.plan, lengths=args.lengths,
                                     batches=args.batch or [1, 4],
                                     decode_cache=args.decode_cache,
                                     decode_batch=args.decode_batch, repeats=args.repeats,
                                     log=log)
    bench_model.save(result, args.out, args.md)
    print(bench_model.markdown(result))
    print(f"wrote {args.out}" + (f" and {args.md}" if args.md else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from attngen.bench import kernels as bench

    if args.model:  # checks its spec and plan first (usage errors), then the GPU
        return _bench_model(args)
    if args.world:
        from attngen.bench import world

        return world.main_world(args.world, args.lengths, args.patterns, args.heads,
                                args.kv_heads, args.head_dim, args.repeats or 10, args.out,
                                args.md)
    if args.plan:
        raise ValueError("--plan goes with --model")
    if args.batch and len(args.batch) > 1:
        raise ValueError("--batch takes one size, except with --model")
    if not torch.cuda.is_available():
        raise NoDevice("attngen bench needs a CUDA GPU (it times kernels on one), and this "
                       "machine has none")
    args.batch = args.batch[0] if args.batch else 8
    args.repeats = 20 if args.repeats is None else args.repeats
    if args.backward or args.decode:
        return _bench_serve(args)

    result = bench.bench(args.patterns, args.lengths, heads=args.heads, head_dim=args.head_dim,
                         repeats=args.repeats, check_max_n=args.check_max_n,
                         inputs=args.inputs, variants={"attngen": {}, **({
                             "attngen-split-loops": {"fused_loops": False},
                             "attngen-pointers": {"tma": False},
                             "attngen-split-pointers": {"fused_loops": False, "tma": False}}
                             if args.variants else {})},
                         log=lambda row: print(bench.line(row), flush=True))
    bench.save(result, args.out, args.md)
    print(bench.markdown(result))
    print(f"wrote {args.out}" + (f" and {args.md}" if args.md else ""))
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_cache(args: argparse.Namespace) -> int:
    from attngen.env import cache_dir, cache_key_file, models_dir
    from attngen.runtime import cache

    if args.models and args.action != "clear":
        raise ValueError(f"--models only applies to `cache clear`, not `cache {args.action}`")
    if args.action == "clear":
        cleared = cache.clear()
        print(f"removed {cleared.removed} entries from {cache_dir()}")
        if cleared.left:
            print(f"left {len(cleared.left)} items attngen did not write: "
                  + ", ".join(p.name for p in cleared.left))
        if args.models:
            print(f"removed {_mb(cache.clear_models())} of converted models from {models_dir()}")
        elif models := cache.models():
            print(f"kept {len(models)} converted models in {models_dir()} "
                  f"({_mb(sum(n for _, n in models))}; `attngen cache clear --models` removes "
                  "them)")
        return 0
    entries = cache.entries()
    cache.check_key()
    bad = [(e, why) for e in entries if (why := cache.verify(e)) is not None]
    if args.action == "verify":
        for e, why in bad:
            print(f"  {e.name[:16]}: {why}")
        print(f"{len(entries) - len(bad)} ok, {len(bad)} corrupt")
        return 1 if bad else 0
    problems = dict(bad)
    print(f"{cache_dir()}: {len(entries)} entries" + (f" ({len(bad)} corrupt)" if bad else ""))
    for e in entries:
        if e in problems:
            print(f"  {e.name[:16]}  corrupt: {problems[e]}")
            continue
        meta = cache.read_meta(e) or {}
        print(f"  {e.name[:16]}  {str(meta.get('created', '?')):19}  {meta.get('dtype', '')}"
              f"  {meta.get('pattern', '?')}")
    if left := cache.foreign():
        print(f"  not attngen's (clear leaves them): {', '.join(p.name for p in left)}")
    print(f"  entries signed with the key in {cache_key_file()}")
    models = cache.models()
    print(f"{models_dir()}: {len(models)} converted models, {_mb(sum(n for _, n in models))}")
    for p, n in models:
        print(f"  {p.name}  {_mb(n)}")
    return 0


def _sizes(sub: argparse.ArgumentParser, n_default: int | None) -> None:
    sub.add_argument("--n", type=int, default=n_default, required=n_default is None,
                     help="number of keys N" + (f" (default {n_default})" if n_default else ""))
    sub.add_argument("--m", type=int, default=None, help="number of queries M, bottom-right "
                     "aligned (default N)")
    sub.add_argument("--block", type=block_arg, default=64,
                     help="block size: 64 or BMxBN such as 128x64 (default 64)")
    sub.add_argument("--heads", type=int, default=None, help="query heads (default 1, or "
                     "enough for every entry of a heads { … } mixture)")
    sub.add_argument("--kv-heads", type=int, default=None, help="kv heads (GQA; default heads)")
    sub.add_argument("--name", default=None, help="the definition to use (default the last)")
    sub.add_argument("--docs", type=int, default=4, help="patterns with `document`: split "
                     "the N keys into this many equal documents (default 4)")


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="attngen", formatter_class=fmt,
        description="attngen: a compiler for sparse attention.",
        epilog="examples:\n  attngen show \"causal & (sink(128) | local(4096))\" --n 32\n"
               "  attngen layout streaming --n 8192 --out layout.pt\n  attngen demo\n\n"
               "`attngen COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"attngen {attngen.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of "
                        "an error")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    show = subs.add_parser(
        "show", formatter_class=fmt, help="picture, density and plan of a pattern",
        description=_wrap("Print the canonical pattern, a picture (the mask when N <= 64, else the "
                    "block classes when there are at most 64x64 blocks), the exact density, "
                    "the block counts and the plan (strategy per term)."),
        epilog="examples:\n  attngen show \"causal & (sink(128) | local(4096))\" --n 32\n"
               "  attngen show streaming --name tri_shape --n 4096 --png tri.png\n"
               "  attngen show patterns/longlora.attn --n 2048 --heads 8")
    show.add_argument("pattern", metavar="PATTERN", help=_PATTERN_HELP)
    _sizes(show, 4096)
    show.add_argument("--png", default=None, help="also draw mask and blocks into this PNG")
    show.add_argument("--inputs", default=None, help="dynamic patterns: a torch.save file "
                      "of {'q': [B, H, M, D], 'k': [B, Hkv, N, D]} to estimate from "
                      "(default: random inputs)")
    show.add_argument("--seed", type=int, default=0, help="dynamic patterns: seed of the "
                      "random inputs (default 0)")
    show.add_argument("--head-dim", type=int, default=64, help="dynamic patterns: head dim "
                      "of the random inputs (default 64)")
    show.set_defaults(run=cmd_show)

    lay = subs.add_parser(
        "layout", formatter_class=fmt, help="CSR block-layout statistics; save Flex tensors",
        description=_wrap("Print, per distinct head pattern, the partial and full kv blocks per "
                    "query block (nnz, min / mean / max). --out saves the FlexAttention "
                    "tensors of BlockLayout.to_flex() and classes() with torch.save."),
        epilog="example:\n  attngen layout \"causal & (sink(128) | local(4096))\" --n 32768 "
               "--block 128 --out a_shape.pt\n  python -c \"import torch; "
               "print(torch.load('a_shape.pt').keys())\"")
    lay.add_argument("pattern", metavar="PATTERN", help=_PATTERN_HELP)
    _sizes(lay, None)
    lay.add_argument("--out", default=None, help="torch.save the layout tensors to this file")
    lay.set_defaults(run=cmd_layout)

    comp = subs.add_parser(
        "compile", formatter_class=fmt, help="print or write the generated Triton kernel",
        description=_wrap("Render (or fetch from the cache) the forward kernel specialised for "
                          "PATTERN; print its source, or write it with -o. The cache entry's "
                          "path goes to stderr."),
        epilog="examples:\n  attngen compile \"causal & (sink(128) | local(4096))\" "
               "--head-dim 128 --dtype bf16\n  attngen compile streaming -o a_shape_kernel.py")
    comp.add_argument("pattern", metavar="PATTERN", help=_PATTERN_HELP)
    comp.add_argument("--name", default=None, help="the definition to use (default the last)")
    comp.add_argument("--head-dim", type=int, default=128)
    comp.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    comp.add_argument("--heads", type=int, default=32)
    comp.add_argument("--kv-heads", type=int, default=None)
    comp.add_argument("--device", default=None, help="cuda or cpu (the interpreter); "
                      "default cuda when present")
    comp.add_argument("-o", default=None, help="write the source to this file")
    comp.set_defaults(run=cmd_compile)

    ben = subs.add_parser(
        "bench", formatter_class=fmt, help="time kernels against FlexAttention and SDPA (GPU)",
        description=_wrap("On a CUDA GPU, time the attngen kernel of each pattern, FlexAttention "
                          "with a block mask built from the same pattern, and SDPA causal "
                          "(cuDNN, FlashAttention-2) in one process; median of --repeats runs. "
                          "Writes JSON and a markdown table."),
        epilog="examples:\n  attngen bench --lengths 8192 32768 --out bench.json --md bench.md\n"
               "  attngen bench --backward --lengths 32768 --out bwd.json --md bwd.md\n"
               "  attngen bench --decode --lengths 131072 --out decode.json --md decode.md\n"
               "  attngen bench --model llama3-8b:layers=4 --out e2e.json --md e2e.md\n"
               "  torchrun --nproc-per-node 2 -m attngen bench --world 2 --out w.json")
    ben.add_argument("--patterns", nargs="+", default=None, help="patterns (default: causal, "
                     "local, A-shape, local+strided, dilated, strided, fixed, power, radial)")
    ben.add_argument("--lengths", nargs="+", type=int, default=None)
    ben.add_argument("--heads", type=int, default=32)
    ben.add_argument("--head-dim", type=int, default=128)
    ben.add_argument("--repeats", type=int, default=None, help="timed runs (default 20; "
                     "--model: 10 below 64K, 7 below 128K, 5 from 128K, 20 for decode)")
    ben.add_argument("--check-max-n", type=int, default=8192,
                     help="compare with an fp32 reference up to this length")
    ben.add_argument("--variants", action="store_true", help="also time the non-default "
                     "variants: three loops per block run instead of one, pointer loads "
                     "instead of tensor descriptors, and both")
    ben.add_argument("--inputs", choices=("random", "structured"), default="random",
                     help="q, k values: standard normal, or rotary-embedded around a shared "
                     "direction with sink keys (LLM-like; matters for dynamic patterns)")
    ben.add_argument("--out", default="bench.json")
    ben.add_argument("--md", default=None)
    mode = ben.add_mutually_exclusive_group()
    mode.add_argument("--backward", action="store_true", help="time forward + backward "
                      "(default patterns: causal, local, A-shape, local+strided; length 32768)")
    mode.add_argument("--decode", action="store_true", help="time decode against a KV cache, "
                      "contiguous and paged (default: causal, window, A-shape, a kv-head "
                      "mixture; cache 131072, B=8, 32 query heads, 8 kv heads); reports "
                      "bandwidth on the bytes each pattern needs")
    ben.add_argument("--check", nargs="+", default=None, help="--backward: patterns whose "
                     "gradients are checked against fp32 (default: all)")
    ben.add_argument("--batch", type=int, nargs="+", default=None, help="--decode: batch "
                     "rows (default 8); --model: batch sizes (default 1 4; a batch above 1 "
                     "holds ragged rows, left-padded)")
    ben.add_argument("--kv-heads", type=int, default=8, help="--decode: kv heads")
    ben.add_argument("--queries", type=int, default=1, help="--decode: queries per row")
    ben.add_argument("--page", type=int, default=64, help="--decode: keys per cache page")
    mode.add_argument("--model", metavar="SPEC", default=None, help="a model end to end: a "
                      "local Hugging Face model folder or a named shape with random weights ("
                      "llama3-8b, qwen2.5-7b, tiny-llama, tiny-qwen2), optionally :layers=N and "
                      ",weights=structured (LLM-like attention near the diagonal); "
                      "times dense SDPA, transformers' flex attention with the plan and "
                      "attngen with the plan, prefill (default lengths 32768 65536 131072) "
                      "and decode; see docs/benchmarks.md")
    mode.add_argument("--world", type=int, default=None, metavar="N", help="attngen.distributed "
                      "on N processes launched by torchrun (NCCL on GPUs, gloo on the CPU): "
                      "each pattern's sharded attention against all-gathered dense SDPA, "
                      "time and bytes received per rank (docs/distributed.md)")
    ben.add_argument("--plan", default=None, help="--model: a plan file (DESIGN §7, or a "
                     "template with every_layer) or a bundled plan's name (default "
                     "duo_quarter)")
    ben.add_argument("--decode-cache", type=int, default=131072, help="--model: cached keys "
                     "per row for the decode timing (default 131072; 0 skips decode)")
    ben.add_argument("--decode-batch", type=int, default=8, help="--model: decode batch rows "
                     "(default 8)")
    ben.set_defaults(run=cmd_bench)

    cac = subs.add_parser(
        "cache", formatter_class=fmt, help="list, verify or clear the kernel cache",
        description=_wrap("The content-addressed kernel cache ($ATTNGEN_CACHE_DIR, default "
                          "~/.cache/attngen): ls lists entries and the converted models "
                          "($ATTNGEN_MODELS_DIR, default ~/.cache/attngen-models), verify "
                          "checks every entry's checksum and signature (exit 1 if any is "
                          "corrupt), clear removes the entries attngen wrote and leaves "
                          "everything else (models too, unless --models). See docs/cache.md."),
        epilog="examples:\n  attngen cache ls\n  attngen cache verify\n  attngen cache clear\n"
               "  attngen cache clear --models")
    cac.add_argument("action", choices=["ls", "verify", "clear"])
    cac.add_argument("--models", action="store_true",
                     help="clear: also remove the converted models")
    cac.set_defaults(run=cmd_cache)

    profile_commands.add_parsers(subs, fmt)

    demo = subs.add_parser(
        "demo", formatter_class=fmt, help="the main job end to end",
        description=_wrap("Load every bundled pattern and print its canonical text, density and "
                    "plan; draw the StreamingLLM/MInference A-shape as blocks and as a PNG; "
                    "compile and run its kernel; then search SmolLM2-135M-Instruct for a "
                    "plan at --density and evaluate it against dense and uniform baselines "
                    "at demo sizes (about 10 minutes on a 2-core CPU)."),
        epilog="example:\n  attngen demo            # writes ./attngen-demo/report.md")
    demo.add_argument("--n", type=int, default=4096, help="sequence length (default 4096)")
    demo.add_argument("--out-dir", default="attngen-demo", help="where the PNGs, plan.json "
                      "and report.md go (default ./attngen-demo)")
    demo.add_argument("--density", type=profile_commands.density_budget,
                      default=profile_commands.DEMO_DENSITY,
                      help="the search's density budget, in (0, 1]")
    demo.add_argument("--skip-profiler", action="store_true", help="only the library tour "
                      "and the kernel")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted after the command too: `attngen show … --debug`
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except SystemExit as e:  # --help, --version, or a usage error (status 2)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:  # `attngen demo | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"attngen {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error ends as one message (a traceback with --debug)
        if debug:
            traceback.print_exc()
        status = exit_status(e)
        if isinstance(e, PatternError):
            print(e, file=sys.stderr)
        elif isinstance(e, NotImplementedError):
            print(f"attngen {args.command}: not available: {e}", file=sys.stderr)
        else:
            text = str(e) if isinstance(e, ValueError | TypeError | OSError | NoDevice) \
                else f"{type(e).__name__}: {e}"
            print(f"attngen {args.command}: error: {text}", file=sys.stderr)
        if status == 1 and not debug and not isinstance(e, OSError | NoDevice):
            print("(attngen --debug … shows the traceback)", file=sys.stderr)
        return status


def exit_status(e: BaseException) -> int:
    """2 for a usage error (bad argument, pattern or file name), 1 for a failure."""
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return 2
    if isinstance(e, PatternError | ValueError | TypeError | NotImplementedError):
        return 2
    return 1
