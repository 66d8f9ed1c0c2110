"""profile.verdict: intervals, and the plain statement of where the plan wins and loses."""
import math

import pytest

from attngen.profile.evaluate import EvalOptions, MethodResult
from attngen.profile.verdict import Tolerance, describe, interval, verdict

OPTIONS = EvalOptions(passkey_lengths=(512,), kv_lengths=(1024,), depths=(0.5,))


def method(name, ppl, passkey, kv):
    return MethodResult(name, name, {512: 0.3}, passkey={"512/0.5": passkey},
                        kv={"1024/0.5": kv}, ppl=ppl)


def test_wilson_interval_at_known_points():
    lo, hi = interval(1.0, 3)
    assert lo == pytest.approx(0.4385, abs=1e-3) and hi == pytest.approx(1.0)
    lo, hi = interval(0.5, 20)
    assert lo == pytest.approx(0.2993, abs=1e-3) and hi == pytest.approx(0.7007, abs=1e-3)
    assert all(math.isnan(x) for x in interval(0.0, 0))


def test_verdict_names_every_loss():
    results = [method("dense", 10.0, [True] * 10, [True] * 4),
               method("plan", 12.0, [True] * 9 + [False], [True] * 2 + [False] * 2),
               method("StreamingLLM", 11.5, [False] * 10, [True] * 3 + [False]),
               method("MoA uniform", 13.0, [False] * 10, [False] * 4)]
    lines = verdict(results, OPTIONS, Tolerance(ppl=0.1, points=10))
    assert lines[0].startswith("plan vs dense") and "NOT within it" in lines[0]
    assert "ppl +20.0 %" in lines[0] and "kv 1024 -50 points" in lines[0]
    assert "passkey" not in lines[0]  # 90 % is within 10 points of 100 %
    assert "WORSE on ppl 12.000 vs 11.500; kv 1024 50% vs 75% (intervals overlap)" in lines[1]
    assert lines[2] == "plan vs MoA uniform: better or equal on every metric"


def test_within_tolerance_is_said_too():
    results = [method("dense", 10.0, [True] * 4, [True] * 4),
               method("plan", 10.5, [True] * 4, [True] * 4)]
    assert verdict(results, OPTIONS) == [
        "plan vs dense (tolerance: ppl +10 %, accuracy −10 points): within it"]


def test_describe_prints_n_and_interval():
    line = describe(method("plan", 12.0, [True, True, False], [True]), OPTIONS)
    assert "ppl  12.000" in line and "passkey 512 67% [21–94] n=3" in line


def test_describe_leaves_out_metrics_without_samples():
    line = describe(method("plan", 12.0, [], [True]), OPTIONS)  # no passkey sample asked for
    assert "passkey" not in line and "kv 1024 100% [21–100] n=1" in line
