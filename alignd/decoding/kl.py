"""KL divergence of the best-of-n and soft best-of-n policies from the reference policy.

Beirami et al., "Theoretical guarantees on the best-of-n alignment policy" (2024):
- the widely quoted log n - (n-1)/n is only an upper bound on KL(pi_bon || pi_ref) (their
  Theorem 3.1), loose when pi_ref puts much mass on few responses;
- their estimator uses eps = pi_ref(y*|x), the reference probability of the selected response:

      KL_n(eps) = (1-eps)^n [log n + (n-1) log(1-eps) - (n-1)/n] + eps_n log(eps_n / eps),
      eps_n = 1 - (1-eps)^n,

  which is the exact KL for a reference distribution with one atom of mass eps carrying the best
  reward above a continuum of lower-reward outcomes. Note: a form often quoted with the last term
  eps_n log(1/eps) drops log eps_n and can exceed the upper bound (n=2, eps=0.5 gives
  0.40 > 0.19 nats), so it cannot be the exact KL of any best-of-n policy. Tests check the
  version here against enumeration.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def best_of_n_kl_bound(n: int) -> float:
    """The classic log n - (n-1)/n, an upper bound on KL(pi_bon || pi_ref) in nats."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return math.log(n) - (n - 1) / n


def best_of_n_kl_estimate(n: int, log_eps: float) -> float:
    """Beirami et al.'s estimator KL_n(eps) in nats, from log eps = log pi_ref(y*|x).

    Computed in log space: for a long response eps underflows (log eps of -100 is common), and
    then the estimate tends to the bound.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not log_eps <= 0.0:
        raise ValueError(f"log_eps must be <= 0, got {log_eps}")
    if n == 1 or log_eps == 0.0:
        return 0.0  # a single draw, or a point mass: best-of-n is pi_ref itself
    eps = math.exp(log_eps)
    log_one_minus_eps = math.log1p(-eps) if eps < 1.0 else -math.inf
    log_tail = n * log_one_minus_eps  # log (1-eps)^n
    tail = math.exp(log_tail)
    eps_n = -math.expm1(log_tail)  # 1 - (1-eps)^n without cancellation
    continuum = tail * (math.log(n) + (n - 1) * log_one_minus_eps - (n - 1) / n) if tail > 0 else 0.0
    atom = eps_n * (math.log(eps_n) - log_eps) if eps_n > 0 else 0.0
    # Rounding can leave a value a hair outside [0, bound]; the true value is inside.
    return min(max(continuum + atom, 0.0), best_of_n_kl_bound(n))


def best_of_n_distribution(probs: Sequence[float], rewards: Sequence[float], n: int) -> np.ndarray:
    """Exact pi_bon over a finite outcome space, ties broken uniformly among equal rewards.

    For outcomes sorted by reward, P(best reward <= r) = F(r)^n, so the group of outcomes with
    reward r gets F(r)^n - F^-(r)^n, shared in proportion to their reference mass.
    """
    p = np.asarray(probs, dtype=np.float64)
    values, group = np.unique(np.asarray(rewards, dtype=np.float64), return_inverse=True)
    group_mass = np.bincount(group, weights=p, minlength=len(values))
    at_or_below = np.cumsum(group_mass)
    below = at_or_below - group_mass
    group_share = at_or_below**n - below**n
    return group_share[group] * p / group_mass[group]


def exact_best_of_n_kl(probs: Sequence[float], rewards: Sequence[float], n: int) -> float:
    """KL(pi_bon || pi_ref) by enumeration, for testing the bound and the estimator."""
    p = np.asarray(probs, dtype=np.float64)
    q = best_of_n_distribution(probs, rewards, n)
    support = q > 0
    return float(np.sum(q[support] * np.log(q[support] / p[support])))


def soft_best_of_n_kl_bound(n: int, beta: float, reward_range: float) -> float:
    """An upper bound on KL(soft best-of-n || pi_ref) in nats, for rewards within a range of
    width `reward_range` (inf when unbounded) and temperature `beta`.

    Soft best-of-n (Verdun et al. 2025) draws n responses and returns Y_i with probability
    exp(r_i / beta) / sum_j exp(r_j / beta). The probability of returning y is
    n pi_ref(y) E[e^{r(y)/beta} / (e^{r(y)/beta} + sum_{j>=2} e^{r(Y_j)/beta})], and every other
    draw has reward at least r(y) - range, so the density ratio is at most
    n / (1 + (n-1) e^{-range/beta}); the KL is at most its logarithm. beta -> 0 gives log n,
    (n-1)/n above best-of-n's own bound; beta -> inf gives 0 (pi_ref itself).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if n == 1:
        return 0.0
    spread = reward_range / beta
    return math.log(n) - math.log1p((n - 1) * math.exp(-spread)) if math.isfinite(spread) else math.log(n)


def soft_best_of_n_distribution(probs: Sequence[float], rewards: Sequence[float], n: int, beta: float) -> np.ndarray:
    """Exact soft best-of-n distribution over a small finite outcome space, by enumerating every
    n-tuple of draws (m^n of them): for testing the bound."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    result = np.zeros_like(p)
    for draws in itertools.product(range(len(p)), repeat=n):
        index = np.array(draws)
        tilt = np.exp((r[index] - r[index].max()) / beta)
        np.add.at(result, index, np.prod(p[index]) * tilt / tilt.sum())
    return result


def exact_soft_best_of_n_kl(probs: Sequence[float], rewards: Sequence[float], n: int, beta: float) -> float:
    """KL(soft best-of-n || pi_ref) by enumeration."""
    p = np.asarray(probs, dtype=np.float64)
    q = soft_best_of_n_distribution(probs, rewards, n, beta)
    support = q > 0
    return float(np.sum(q[support] * np.log(q[support] / p[support])))
