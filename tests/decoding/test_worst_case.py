"""The worst-case weight program of RMOD: the fast solver against cvxpy, and the lambda limits."""

import logging
import math

import cvxpy as cp
import numpy as np
import pytest

from alignd.decoding import worst_case
from alignd.decoding.worst_case import WeightSet, game_value, solve, solve_cvxpy, solve_fast


def random_instance(rng: np.random.Generator, case: int):
    """Values [K, G], lambda and a feasible set; every few cases degenerate or constrained."""
    g, k = int(rng.integers(2, 11)), int(rng.integers(2, 17))
    strength = float(10 ** rng.uniform(-2, 1.7))
    values = rng.normal(size=(k, g)) * rng.uniform(0.1, 3.0)
    if case % 5 == 0:
        values[:, 1] = values[:, 0]  # two objectives tied on every block
    if case % 7 == 0:
        values[1] = values[0]  # two identical blocks
    if case % 11 == 0:
        values[:] = values[0]  # all blocks alike: every w is optimal
    if case % 13 == 0:
        values = np.round(values)  # many ties
    feasible = WeightSet.simplex(g)
    if case % 3 == 0:
        allowed = rng.random(g) < 0.6
        allowed[rng.integers(g)] = True
        lower = np.where(allowed, rng.uniform(0, 0.6 / g, size=g), 0.0)
        feasible = WeightSet(lower, allowed)
    return values, strength, feasible


def test_fast_solver_matches_cvxpy_on_random_instances():
    rng = np.random.default_rng(2024)
    for case in range(300):
        values, strength, feasible = random_instance(rng, case)
        fast = solve_fast(values, strength, feasible)
        reference = solve_cvxpy(values, strength, feasible)
        for solution in (fast, reference):
            assert feasible.contains(solution.weights, 1e-7), (case, solution)
            assert solution.value == pytest.approx(game_value(values, solution.weights, strength), abs=1e-12)
        assert abs(fast.value - reference.value) <= 1e-4, (case, fast, reference)


def test_fast_solver_certifies_optimality_with_the_frank_wolfe_gap():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(8, 4))
    solution = solve_fast(values, 2.0, WeightSet.simplex(4))
    z = 2.0 * values @ solution.weights
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    gradient = values.T @ p
    assert gradient @ solution.weights - gradient.min() <= worst_case.GAP_TOLERANCE
    # On the support the tilted expected values are equal (the adversary equalises the worst ones).
    support = solution.weights > 1e-6
    assert np.ptp(gradient[support]) < 1e-5


def test_warm_start_reaches_the_same_optimum():
    rng = np.random.default_rng(9)
    values = rng.normal(size=(8, 5))
    cold = solve_fast(values, 1.0, WeightSet.simplex(5))
    warm = solve_fast(values + 0.05 * rng.normal(size=values.shape), 1.0, WeightSet.simplex(5), cold.weights)
    reference = solve_cvxpy(values, 1.0, WeightSet.simplex(5))
    assert cold.value == pytest.approx(reference.value, abs=1e-6)
    assert warm.iterations <= 50 and WeightSet.simplex(5).contains(warm.weights)


def test_small_lambda_puts_all_weight_on_the_worst_objective_on_average():
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.normal(size=(8, 4))
        solution = solve_fast(values, 1e-4, WeightSet.simplex(4))
        worst = int(np.argmin(values.mean(axis=0)))
        assert solution.weights[worst] == pytest.approx(1.0, abs=1e-6)
        assert solution.value == pytest.approx(values.mean(axis=0)[worst], abs=1e-3)


def test_large_lambda_gives_the_minimax_weights():
    rng = np.random.default_rng(3)
    for _ in range(10):
        values = rng.normal(size=(6, 3))
        # The matrix game min_w max_k w.V_k as a linear program.
        w, t = cp.Variable(3), cp.Variable()
        cp.Problem(cp.Minimize(t), [values @ w <= t, w >= 0, cp.sum(w) == 1]).solve(solver=cp.CLARABEL)
        solution = solve_fast(values, 1e3, WeightSet.simplex(3))
        # F is within log(K)/lambda of the hard maximum, so both approach the game's value.
        assert solution.value == pytest.approx(t.value, abs=math.log(6) / 1e3 + 1e-4)
        assert float((values @ solution.weights).max()) == pytest.approx(t.value, abs=2e-3)


def test_lower_bounds_and_restrictions_hold():
    values = np.array([[0.0, 5.0, 5.0], [0.1, 5.0, 4.0]])
    # Unconstrained, the adversary puts everything on objective 0 (far the worst).
    assert solve_fast(values, 1.0, WeightSet.simplex(3)).weights[0] == pytest.approx(1.0)
    bounded = WeightSet(np.array([0.0, 0.0, 0.3]), np.ones(3, dtype=bool))
    assert solve_fast(values, 1.0, bounded).weights == pytest.approx([0.7, 0.0, 0.3], abs=1e-6)
    restricted = WeightSet(np.zeros(3), np.array([False, True, True]))
    weights = solve_fast(values, 1.0, restricted).weights
    assert weights[0] == 0.0 and weights.sum() == pytest.approx(1.0)
    # Bounds that use the whole simplex leave one point.
    full = WeightSet(np.array([0.5, 0.25, 0.25]), np.ones(3, dtype=bool))
    assert solve_fast(values, 1.0, full).weights == pytest.approx([0.5, 0.25, 0.25])


def test_infeasible_weight_sets_are_refused():
    with pytest.raises(ValueError):
        WeightSet(np.array([0.6, 0.6]), np.ones(2, dtype=bool))
    with pytest.raises(ValueError):
        WeightSet(np.array([0.2, 0.0]), np.array([False, True]))


def test_a_cvxpy_failure_falls_back_to_the_fast_solver_and_is_logged(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise cp.SolverError("numerical trouble")

    monkeypatch.setattr(worst_case, "solve_cvxpy", broken)
    values = np.random.default_rng(0).normal(size=(4, 3))
    with caplog.at_level(logging.WARNING, logger="alignd.decoding.worst_case"):
        solution = solve(values, 1.0, WeightSet.simplex(3), solver="cvxpy")
    assert solution.solver == "fast" and WeightSet.simplex(3).contains(solution.weights)
    assert "numerical trouble" in caplog.text and "fast solver" in caplog.text
