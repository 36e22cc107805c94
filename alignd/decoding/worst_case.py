"""Worst-case preference weights for robust multi-objective decoding (RMOD, Son et al.).

For K candidate blocks with standardised value vectors V_k (rows of V, [K, G]) and strength
lambda, the adversary's weights solve the convex program

    w* = argmin_{w in W} F(w),   F(w) = (1/lambda) log (1/K) sum_k exp(lambda w^T V_k)

over W = {w : w >= lower, sum w = 1, w_g = 0 outside the allowed objectives}. F is in value
units (a soft maximum of w^T V_k over the blocks), so values compare across lambda:
lambda -> 0 gives the mean over blocks (w* sits on the worst objective on average), lambda -> inf
the hard maximum (the minimax weights of the matrix game).

Two solvers: `solve_fast` (Newton steps on the simplex's active face, falling back to a
spectral projected-gradient step; stopped by the Frank-Wolfe gap, which bounds F(w) - F(w*) from
above) runs on the hot path; `solve_cvxpy` states the program in
cvxpy and hands it to a conic solver (Clarabel). Tests check that they agree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# F(w) - F(w*) <= gap <= GAP_TOLERANCE at the fast solver's answer (value units).
GAP_TOLERANCE = 1e-8
MAX_ITERATIONS = 500


@dataclass(frozen=True)
class WeightSet:
    """The adversary's feasible set W: lower bounds [G] and a mask of allowed objectives [G]."""

    lower: np.ndarray
    allowed: np.ndarray

    @classmethod
    def simplex(cls, g: int) -> WeightSet:
        return cls(np.zeros(g), np.ones(g, dtype=bool))

    def __post_init__(self) -> None:
        if self.lower.shape != self.allowed.shape or not self.allowed.any():
            raise ValueError("lower bounds and the allowed mask must have one entry per objective, one allowed")
        if (self.lower < 0).any() or (self.lower[~self.allowed] > 0).any() or self.lower.sum() > 1 + 1e-12:
            raise ValueError(f"lower bounds {self.lower} do not leave a point of the simplex")

    def contains(self, w: np.ndarray, tol: float = 1e-9) -> bool:
        return bool(abs(w.sum() - 1) <= tol and (w >= self.lower - tol).all() and (w[~self.allowed] == 0).all())


@dataclass(frozen=True)
class Solution:
    weights: np.ndarray  # w* [G]
    value: float  # F(w*)
    solver: str
    iterations: int = 0


def game_value(values: np.ndarray, weights: np.ndarray, strength: float) -> float:
    """F(w) = (1/lambda) log mean_k exp(lambda w^T V_k), computed without overflow."""
    z = strength * (values @ weights)
    top = z.max()
    return float((top + math.log(np.exp(z - top).mean())) / strength)


def solve(
    values: np.ndarray, strength: float, feasible: WeightSet, solver: str = "fast", warm: np.ndarray | None = None
) -> Solution:
    """w* with the named solver; a cvxpy failure falls back to the fast solver (logged)."""
    if solver == "cvxpy":
        try:
            return solve_cvxpy(values, strength, feasible)
        except Exception as error:
            log.warning(
                "cvxpy could not solve the worst-case weights (%s: %s); using the fast solver",
                type(error).__name__,
                error,
            )
    return solve_fast(values, strength, feasible, warm)


def solve_fast(values: np.ndarray, strength: float, feasible: WeightSet, warm: np.ndarray | None = None) -> Solution:
    """Newton steps on the active face (stopping where a weight reaches zero), with a spectral
    projected-gradient step whenever Newton does not descend, over the free part of W written as
    w = lower + slack * u with u on the standard simplex. Stops when the Frank-Wolfe gap certifies
    F(w) - F(w*) <= tolerance."""
    values = np.asarray(values, dtype=np.float64)
    active = np.flatnonzero(feasible.allowed)
    slack = 1.0 - float(feasible.lower.sum())
    if active.size == 1 or slack <= 1e-12:
        w = feasible.lower.copy()
        w[active] += slack / active.size if slack > 0 else 0.0
        return Solution(w, game_value(values, w, strength), "fast")
    scaled = slack * values[:, active]  # z_k(u) = offset_k + scaled_k . u
    offset = values @ feasible.lower
    log_k = math.log(values.shape[0])

    def evaluate(u: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """F(u), its gradient, and the tilted block distribution p."""
        z = strength * (offset + scaled @ u)
        top = z.max()
        e = np.exp(z - top)
        total = e.sum()
        p = e / total
        return (top + math.log(total) - log_k) / strength, scaled.T @ p, p

    u = _start(warm, feasible, active, slack)
    f, grad, p = evaluate(u)
    step = 1.0 / max(float(np.abs(grad).max()), 1e-12)
    iterations = 0
    for iterations in range(1, MAX_ITERATIONS + 1):  # noqa: B007 (the count is returned)
        # Frank-Wolfe gap: F(u) - F* <= grad.u - min_j grad_j for a convex F on the simplex.
        gap = float(grad @ u - grad.min())
        if gap <= GAP_TOLERANCE:
            break
        hessian = strength * (scaled.T @ (p[:, None] * scaled) - np.outer(grad, grad))
        accepted = None
        newton = _newton_direction(u, grad, hessian, min(1e-3, gap))
        if newton is not None:
            # A few halvings at most: a Newton step that needs more is better replaced by a gradient step.
            start = _to_boundary(u, newton)
            if start > 1e-12:
                accepted = _search(evaluate, u, f, grad, newton, smallest=start / 8, start=start)
        if accepted is None:
            gradient_step = _project_simplex(u - step * grad) - u
            accepted = _search(evaluate, u, f, grad, gradient_step, smallest=1e-14)
        if accepted is None:  # no descent left at this precision: u is optimal up to round-off
            break
        candidate, f_new, grad_new, p_new = accepted
        s, y = candidate - u, grad_new - grad
        curvature = float(s @ y)
        step = min(max(float(s @ s) / curvature, 1e-12), 1e12) if curvature > 0 else 1e12
        u, f, grad, p = candidate, f_new, grad_new, p_new
    w = feasible.lower.copy()
    w[active] += slack * u
    return Solution(w, f, "fast", iterations)


def _to_boundary(u: np.ndarray, direction: np.ndarray) -> float:
    """The longest step t <= 1 with u + t d >= 0: a Newton step stops where a weight reaches zero,
    so that coordinate joins the active set exactly instead of being bent back by a projection."""
    shrinking = direction < 0
    return min(1.0, float((u[shrinking] / -direction[shrinking]).min())) if shrinking.any() else 1.0


def _search(
    evaluate: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    u: np.ndarray,
    f: float,
    grad: np.ndarray,
    direction: np.ndarray,
    *,
    smallest: float,
    start: float = 1.0,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray] | None:
    """Armijo backtracking along u + t d, t = start, start/2, ... (d keeps the sum; steps stay
    within the simplex, clipped at zero for round-off): the first point with sufficient decrease
    as (point, F, gradient, p), or None."""
    t = start
    while t >= smallest:
        point = np.maximum(u + t * direction, 0.0)
        f_new, grad_new, p_new = evaluate(point)
        if f_new <= f + 1e-4 * float(grad @ (point - u)) and f_new < f:
            return point, f_new, grad_new, p_new
        t *= 0.5
    return None


def _newton_direction(u: np.ndarray, grad: np.ndarray, hessian: np.ndarray, epsilon: float) -> np.ndarray | None:
    """Newton step on the free coordinates with sum(d) = 0 (Bertsekas' projected Newton): a
    coordinate within epsilon of zero whose gradient is above the average is held at zero."""
    held = (u <= epsilon) & (grad > grad @ u)
    index = np.flatnonzero(~held)
    n = index.size
    if n < 2:
        return None
    system = np.zeros((n + 1, n + 1))
    system[:n, :n] = hessian if n == u.size else hessian[np.ix_(index, index)]
    system[np.arange(n), np.arange(n)] += 1e-10 * max(float(np.trace(system)), 1e-12)
    system[:n, n] = system[n, :n] = 1.0
    try:
        solution = np.linalg.solve(system, np.append(-grad[index], 0.0))
    except np.linalg.LinAlgError:
        return None
    direction = np.zeros_like(u)
    direction[index] = solution[:n]
    # Steps beyond the simplex's diameter only lose precision in the projection.
    direction /= max(1.0, float(np.abs(direction).max()))
    return direction if np.isfinite(direction).all() and grad @ direction < 0 else None


def _start(warm: np.ndarray | None, feasible: WeightSet, active: np.ndarray, slack: float) -> np.ndarray:
    """The free coordinates u of a warm start (e.g. the previous block's w*), else uniform."""
    if warm is not None and feasible.contains(warm, 1e-6):
        return _project_simplex((warm[active] - feasible.lower[active]) / slack)
    return np.full(active.size, 1.0 / active.size)


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {u >= 0, sum u = 1} (sort-based, exact)."""
    ordered = np.sort(v)[::-1]
    cumulative = np.cumsum(ordered) - 1.0
    index = np.arange(1, v.size + 1)
    positive = np.flatnonzero(ordered - cumulative / index > 0)
    rho = positive[-1] if positive.size else 0  # empty only through round-off on huge inputs
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def solve_cvxpy(values: np.ndarray, strength: float, feasible: WeightSet) -> Solution:
    """The program stated in cvxpy: minimise log_sum_exp(lambda V w) over W with Clarabel."""
    import cvxpy as cp  # imported on first use: cvxpy takes about a second to import

    values = np.asarray(values, dtype=np.float64)
    w = cp.Variable(values.shape[1])
    constraints = [w >= feasible.lower, cp.sum(w) == 1]
    if not feasible.allowed.all():
        constraints.append(w[np.flatnonzero(~feasible.allowed)] == 0)
    problem = cp.Problem(cp.Minimize(cp.log_sum_exp(strength * values @ w)), constraints)
    problem.solve(solver=cp.CLARABEL)
    if problem.status != cp.OPTIMAL or w.value is None:
        raise RuntimeError(f"solver status {problem.status}")
    # Clean the solver's tolerance-level violations so the answer is a point of W.
    weights = np.maximum(np.asarray(w.value, dtype=np.float64), feasible.lower)
    weights[~feasible.allowed] = 0.0
    free = weights - feasible.lower
    weights = feasible.lower + free * (1.0 - feasible.lower.sum()) / free.sum() if free.sum() > 0 else weights
    return Solution(weights, game_value(values, weights, strength), "cvxpy")
