"""What an evaluation shows, said plainly: each method's accuracies with their n and 95 %
Wilson intervals, and the plan against dense (within a stated tolerance?) and against each
uniform baseline of the same density (better, equal or worse on every metric printed)."""
from __future__ import annotations

from dataclasses import dataclass

from attngen.profile.evaluate import EvalOptions, MethodResult, accuracy, task_accuracy


@dataclass(frozen=True)
class Tolerance:
    """How close to dense the plan must stay: perplexity at most `ppl` above dense's
    (relative), accuracy at most `points` below dense's at every length."""

    ppl: float = 0.10
    points: float = 10.0


def interval(rate: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a success rate over n trials (scipy)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(round(rate * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def metrics(result: MethodResult, options: EvalOptions) -> dict[str, tuple[float, int]]:
    """Every metric printed for one method: name → (value, n); n = 0 for perplexity."""
    out = {"ppl": (result.ppl, 0)}
    for kind, lengths in (("passkey", options.passkey_lengths), ("kv", options.kv_lengths)):
        for length in lengths:
            out[f"{kind} {length}"] = accuracy(getattr(result, kind), length)
    for task in options.tasks:
        for length in options.task_lengths:
            out[f"{task} {length}"] = task_accuracy(result.tasks, task, length)
    return out


def describe(result: MethodResult, options: EvalOptions) -> str:
    """One line: perplexity, then each accuracy as a percentage with n and its interval."""
    parts = []
    for name, (value, n) in metrics(result, options).items():
        if name == "ppl":
            parts.append(f"ppl {value:7.3f}")
        elif n:  # a metric without samples (a count of 0 asked for) says nothing
            lo, hi = interval(value, n)
            parts.append(f"{name} {100 * value:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}] n={n}")
    return "  ".join(parts)


def verdict(results: list[MethodResult], options: EvalOptions,
            tolerance: Tolerance = Tolerance()) -> list[str]:
    """Lines that say whether the plan stays within `tolerance` of dense and where it beats,
    ties or loses to each other method of the same density."""
    by_name = {r.name: r for r in results}
    dense, plan = by_name.get("dense"), by_name.get("plan")
    if dense is None or plan is None:
        return []
    mine, base = metrics(plan, options), metrics(dense, options)
    misses = []
    for name, (value, _) in mine.items():
        ref = base[name][0]
        if name == "ppl" and value > ref * (1 + tolerance.ppl):
            misses.append(f"ppl {100 * (value / ref - 1):+.1f} %")
        elif name != "ppl" and 100 * (ref - value) > tolerance.points:
            misses.append(f"{name} {100 * (value - ref):+.0f} points")
    lines = [f"plan vs dense (tolerance: ppl +{100 * tolerance.ppl:.0f} %, accuracy "
             f"−{tolerance.points:.0f} points): "
             + ("within it" if not misses else "NOT within it: " + ", ".join(misses))]
    for other in results:
        if other.name in ("dense", "plan"):
            continue
        theirs = metrics(other, options)
        worse = []
        for name, (value, n) in mine.items():
            ref, n_ref = theirs[name]
            if name == "ppl" and value > ref:
                worse.append(f"ppl {value:.3f} vs {ref:.3f}")
            elif name != "ppl" and value < ref:
                overlap = interval(value, n)[1] >= interval(ref, n_ref)[0]
                worse.append(f"{name} {100 * value:.0f}% vs {100 * ref:.0f}%"
                             + (" (intervals overlap)" if overlap else ""))
        lines.append(f"plan vs {other.name}: "
                     + ("better or equal on every metric" if not worse
                        else "WORSE on " + "; ".join(worse)))
    return lines
