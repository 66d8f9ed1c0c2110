"""report.md and its PNG plots from evaluation results.

    write_report(results, options, plan, out_dir, header=...)

Pictures: passkey (and kv) accuracy by length × depth per method, perplexity bars, and
the plan's pattern per (layer, head) coloured by candidate family.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from attngen.integrations.plan import ModelPlan
from attngen.profile.candidates import FAMILIES
from attngen.profile.evaluate import EvalOptions, MethodResult, accuracy, task_accuracy, to_json
from attngen.profile.verdict import interval, verdict


def write_report(results: list[MethodResult], options: EvalOptions, plan: ModelPlan,
                 out_dir: str | Path, header: str = "") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(to_json(results, options), indent=1) + "\n")
    pictures = [heatmaps(results, "passkey", options.passkey_lengths, options.depths, out),
                heatmaps(results, "kv", options.kv_lengths, options.depths, out),
                ppl_bars(results, out), plan_map(plan, out)]
    lines = [f"# attngen eval report\n\n{header}\n" if header else "# attngen eval report\n",
             _method_table(results),
             _accuracy_table(results, "passkey", options.passkey_lengths, "Passkey retrieval"),
             _accuracy_table(results, "kv", options.kv_lengths, "Key-value retrieval"),
             _task_table(results, options), _verdict(results, options), _validation(plan)]
    lines += [f"![{p.stem}]({p.name})\n" for p in pictures if p is not None]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def cell(text: str) -> str:
    """Text as one markdown table cell: `|` escaped, so it cannot split the row."""
    return str(text).replace("|", "\\|")


def code_cell(text: str) -> str:
    """Pattern text, whole, as code in one table cell (`\\|` inside backticks is shown as
    `|` by GitHub's tables)."""
    return f"`{cell(text)}`"


def _method_table(results: list[MethodResult]) -> str:
    lengths = sorted(results[0].density)
    rows = ["## Methods\n",
            "| method | pattern | " + " | ".join(f"density @{n}" for n in lengths)
            + " | perplexity | vs dense |",
            "|---|---|" + "---|" * len(lengths) + "---|---|"]
    dense_ppl = results[0].ppl
    for r in results:
        rows.append(f"| {cell(r.name)} | {code_cell(r.pattern)} | "
                    + " | ".join(f"{r.density[n]:.3f}" for n in lengths)
                    + f" | {r.ppl:.3f} | {100 * (r.ppl / dense_ppl - 1):+.1f} % |")
    note = ("\nDensity: allowed ÷ causal (q, k) pairs, mean over layers and heads; exact for "
            "static patterns, measured on the first sample of each length for dynamic ones. "
            "Perplexity: the first method is the reference of the last column.\n")
    return "\n".join(rows) + "\n" + note


def _accuracy_table(results: list[MethodResult], kind: str, lengths, title: str) -> str:
    if not lengths:
        return ""
    rows = [f"## {title} (accuracy, exact match, greedy; [95 % interval]; n per length)\n",
            "| method | " + " | ".join(str(L) for L in lengths) + " | n |",
            "|---|" + "---|" * len(lengths) + "---|"]
    for r in results:
        n = sorted({accuracy(getattr(r, kind), L)[1] for L in lengths})
        rows.append(f"| {cell(r.name)} | " + " | ".join(
            _rate(*accuracy(getattr(r, kind), L)) for L in lengths)
            + f" | {'/'.join(map(str, n))} |")
    return "\n".join(rows) + "\n"


def _task_table(results: list[MethodResult], options: EvalOptions) -> str:
    cols = [(t, L) for t in options.tasks for L in options.task_lengths]
    if not cols:
        return ""
    rows = ["## Unseen tasks (RULER-style; never used in calibration; accuracy, exact match, "
            "[95 % interval], n)\n",
            "| method | " + " | ".join(f"{t} {L}" for t, L in cols) + " |",
            "|---|" + "---|" * len(cols)]
    for r in results:
        rates = [task_accuracy(r.tasks, t, L) for t, L in cols]
        rows.append(f"| {cell(r.name)} | "
                    + " | ".join(f"{_rate(v, n)} n={n}" for v, n in rates) + " |")
    return "\n".join(rows) + ("\n\nmultikey: four needles of one form under different "
                               "keys, one asked; multivalue: four values under one key, all "
                               "asked; vartrack: the value at the end of a four-step chain of "
                               "assignments (with a distractor chain); cwe: the most frequent "
                               "word of a list (attngen.profile.data).\n")


def _rate(value: float, n: int) -> str:
    lo, hi = interval(value, n)
    return f"{100 * value:.0f} % [{100 * lo:.0f}–{100 * hi:.0f}]"


def _verdict(results: list[MethodResult], options: EvalOptions) -> str:
    lines = verdict(results, options)
    if not lines:
        return ""
    return ("## Verdict\n\n" + "\n".join(f"- {cell(line)}" for line in lines)
            + "\n\nAccuracy intervals: 95 % Wilson, per length over every depth "
            "(attngen.profile.verdict).\n")


def _validation(plan: ModelPlan) -> str:
    v = plan.meta.get("validation")
    if not v:
        return ""
    return (f"## Search validation (length {v['length']}, not used in calibration)\n\n"
            f"density {v['density']:.3f}; answer-token NLL dense {v['dense']['answer_nll']:.3f}"
            f" vs plan {v['plan']['answer_nll']:.3f} (ratio of answer perplexities "
            f"{v['answer_ppl_ratio']:.3f}), answers reproduced {v['plan']['answers_exact']}/"
            f"{v['plan']['samples']} (dense {v['dense']['answers_exact']}/"
            f"{v['dense']['samples']})\n")


def heatmaps(results: list[MethodResult], kind: str, lengths, depths, out: Path):
    if not lengths:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), squeeze=False)
    for ax, r in zip(axes[0], results):
        hits = getattr(r, kind)
        grid = np.array([[np.mean(hits.get(f"{L}/{d}", [np.nan])) for L in lengths]
                         for d in depths])
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_title(r.name, fontsize=8)
        ax.set_xlabel("length (tokens)")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("needle depth")
    fig.suptitle(f"{kind} retrieval accuracy")
    fig.tight_layout()
    path = out / f"{kind}_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ppl_bars(results: list[MethodResult], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(results)), [r.ppl for r in results], color="tab:blue")
    ax.set_xticks(range(len(results)), [r.name for r in results], fontsize=7, rotation=15)
    ax.set_ylabel("perplexity (held-out text)")
    for i, r in enumerate(results):
        ax.text(i, r.ppl, f"{r.ppl:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = out / "ppl.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_map(plan: ModelPlan, out: Path) -> Path | None:
    rows = [plan.layer_rows.get(layer, {}).get("heads") for layer in sorted(plan.layers)]
    if not rows or any(r is None for r in rows):
        return None
    family = {f: i for i, f in enumerate(FAMILIES)}
    grid = np.array([[family[h["family"]] for h in r] for r in rows])
    fig, ax = plt.subplots(figsize=(4 + 0.3 * grid.shape[1], 1.5 + 0.22 * grid.shape[0]))
    cmap = plt.get_cmap("tab10", len(FAMILIES))
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(FAMILIES) - 0.5, aspect="auto")
    for (i, j), _ in np.ndenumerate(grid):
        ax.text(j, i, f"{rows[i][j]['density']:.2f}", ha="center", va="center", fontsize=5)
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(FAMILIES))]
    ax.legend(handles, FAMILIES, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.set_title(f"plan: family per head (number: density), mean {plan.meta.get('density')}",
                 fontsize=8)
    fig.tight_layout()
    path = out / "plan_map.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
