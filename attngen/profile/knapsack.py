"""One candidate per head under a budget: an exact multiple-choice knapsack.

    choice = choose(loss, cost, budget)      # loss: [items, options]
                                             # cost: [items, options] or [rows, items, options]
                                             # budget: a total, or one per row

minimise Σ_i loss[i, choice[i]]  subject to  Σ_i cost[r, i, choice[i]] ≤ budget[r] for
every row r (the search has one row per calibration length: the density budget holds at
each length), solved as a 0/1 integer program by scipy's HiGHS (branch and bound: the
optimum, not a relaxation; MoA solves the same program with Gurobi). An item is a query
head, or a KV head whose query heads share one pattern (`groups`).
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array


class Infeasible(ValueError):
    """Even the cheapest option of every item exceeds the budget."""


def choose(loss: np.ndarray, cost: np.ndarray, budget) -> np.ndarray:
    """The option index per item minimising total loss with total cost ≤ budget (in every
    row of cost when it has one)."""
    loss, cost = np.asarray(loss, dtype=float), np.asarray(cost, dtype=float)
    if cost.ndim == 2:
        cost = cost[None]
    budget = np.broadcast_to(np.asarray(budget, dtype=float), cost.shape[:1])
    if loss.ndim != 2 or cost.ndim != 3 or cost.shape[1:] != loss.shape:
        raise ValueError(f"loss must be [items, options] and cost [items, options] or "
                         f"[rows, items, options], got {loss.shape} and {cost.shape}")
    items, options = loss.shape
    cheapest = cost.min(axis=2).sum(axis=1)
    if (cheapest > budget + 1e-9).any():
        r = int(np.argmax(cheapest - budget))
        raise Infeasible(f"the cheapest choice costs {cheapest[r]:.4g}, over the budget "
                         f"{budget[r]:.4g}" + (f" (row {r})" if len(budget) > 1 else ""))
    one_each = coo_array((np.ones(items * options),
                          (np.repeat(np.arange(items), options), np.arange(items * options))),
                         shape=(items, items * options))
    constraints = [LinearConstraint(one_each, 1, 1),
                   LinearConstraint(cost.reshape(len(cost), -1), -np.inf, budget)]
    with _quiet_stdout():
        result = milp(loss.ravel(), constraints=constraints,
                      integrality=np.ones(items * options), bounds=Bounds(0, 1),
                      options={"mip_rel_gap": 0})
    if result.x is None:
        raise Infeasible(f"HiGHS found no solution: {result.message}")
    return result.x.reshape(items, options).argmax(axis=1)


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS (in scipy 1.17) prints "HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();" from C++ on some multi-row problems; keep it off the progress output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real file descriptor: nothing to hide
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def grouped(values: np.ndarray, groups: int) -> np.ndarray:
    """[..., heads, options] → [..., groups, options]: sums over consecutive heads of a
    group."""
    *lead, heads, options = values.shape
    return values.reshape(*lead, groups, heads // groups, options).sum(axis=-2)
