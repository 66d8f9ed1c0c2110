"""One candidate per head under a budget: an exact multiple-choice knapsack.

    choice = choose(loss, cost, budget)      # loss, cost: [items, options]; budget: total

minimise Σ_i loss[i, choice[i]]  subject to  Σ_i cost[i, choice[i]] ≤ budget,
solved as a 0/1 integer program by scipy's HiGHS (branch and bound: the optimum, not a
relaxation; MoA solves the same program with Gurobi). An item is a query head, or a KV
head whose query heads share one pattern (`groups`).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array


class Infeasible(ValueError):
    """Even the cheapest option of every item exceeds the budget."""


def choose(loss: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """The option index per item minimising total loss with total cost ≤ budget."""
    loss, cost = np.asarray(loss, dtype=float), np.asarray(cost, dtype=float)
    if loss.shape != cost.shape or loss.ndim != 2:
        raise ValueError(f"loss and cost must both be [items, options], got {loss.shape} "
                         f"and {cost.shape}")
    items, options = loss.shape
    cheapest = cost.min(axis=1).sum()
    if cheapest > budget + 1e-9:
        raise Infeasible(f"the cheapest choice costs {cheapest:.4g}, over the budget "
                         f"{budget:.4g}")
    one_each = coo_array((np.ones(items * options),
                          (np.repeat(np.arange(items), options), np.arange(items * options))),
                         shape=(items, items * options))
    constraints = [LinearConstraint(one_each, 1, 1),
                   LinearConstraint(cost.reshape(1, -1), -np.inf, budget)]
    result = milp(loss.ravel(), constraints=constraints, integrality=np.ones(items * options),
                  bounds=Bounds(0, 1), options={"mip_rel_gap": 0})
    if result.x is None:
        raise Infeasible(f"HiGHS found no solution: {result.message}")
    return result.x.reshape(items, options).argmax(axis=1)


def grouped(values: np.ndarray, groups: int) -> np.ndarray:
    """[heads, options] → [groups, options]: sums over consecutive heads of a group."""
    heads, options = values.shape
    return values.reshape(groups, heads // groups, options).sum(axis=1)
