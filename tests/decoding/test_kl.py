"""The best-of-n KL figures against the exact KL computed by enumeration."""

import math

import numpy as np
import pytest

from alignd.decoding.kl import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    best_of_n_kl_estimate,
    exact_best_of_n_kl,
)

NS = [1, 2, 3, 4, 8, 16, 64]


def atom_over_continuum(eps: float, atoms: int = 20000):
    """pi_ref: a best outcome of mass eps above many tiny lower-reward outcomes."""
    probs = np.r_[np.full(atoms, (1 - eps) / atoms), eps]
    return probs, np.arange(atoms + 1, dtype=float)


@pytest.mark.parametrize("n", [2, 4, 16])
@pytest.mark.parametrize("eps", [1e-4, 0.05, 0.3, 0.7, 0.95])
def test_estimator_equals_exact_kl_when_the_selected_outcome_is_an_atom_over_a_continuum(n, eps):
    probs, rewards = atom_over_continuum(eps)
    assert best_of_n_kl_estimate(n, math.log(eps)) == pytest.approx(exact_best_of_n_kl(probs, rewards, n), abs=2e-3)


def test_best_of_n_distribution_is_a_distribution_and_favours_high_rewards():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10))
    rewards = rng.normal(size=10)
    q = best_of_n_distribution(probs, rewards, 5)
    assert q.sum() == pytest.approx(1.0)
    assert q[np.argmax(rewards)] > probs[np.argmax(rewards)]
    assert q[np.argmin(rewards)] < probs[np.argmin(rewards)]


@pytest.mark.parametrize("seed", range(20))
def test_exact_kl_never_exceeds_the_classic_bound(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 40))
    # Dirichlet concentrations from 0.05 (very peaked, low entropy) to 5 (flat).
    probs = rng.dirichlet(np.full(size, 10 ** rng.uniform(-1.3, 0.7)))
    rewards = rng.normal(size=size)
    for n in NS:
        assert exact_best_of_n_kl(probs, rewards, n) <= best_of_n_kl_bound(n) + 1e-9


def test_estimate_never_exceeds_the_bound_over_all_eps():
    for n in NS:
        for log_eps in np.linspace(-300, 0, 3001):
            assert 0.0 <= best_of_n_kl_estimate(n, float(log_eps)) <= best_of_n_kl_bound(n) + 1e-12


def test_low_entropy_reference_where_the_classic_formula_is_loose():
    # Two equally likely outcomes: KL(pi_bon || pi_ref) <= log 2 whatever n, the formula grows as log n.
    probs, rewards = np.array([0.5, 0.5]), np.array([0.0, 1.0])
    for n in [4, 16, 64]:
        exact = exact_best_of_n_kl(probs, rewards, n)
        q = best_of_n_distribution(probs, rewards, n)
        # The estimator evaluated at the response best-of-n actually returns, averaged over it.
        expected_estimate = sum(q[i] * best_of_n_kl_estimate(n, math.log(probs[i])) for i in range(2))
        bound = best_of_n_kl_bound(n)
        assert exact <= math.log(2) + 1e-12
        assert exact < bound
        assert abs(expected_estimate - exact) < min(0.05, 0.25 * (bound - exact))


def test_long_responses_underflow_to_the_bound_and_point_masses_to_zero():
    assert best_of_n_kl_estimate(8, -5000.0) == pytest.approx(best_of_n_kl_bound(8))
    assert best_of_n_kl_estimate(8, 0.0) == 0.0
    assert best_of_n_kl_estimate(1, -3.0) == 0.0
    assert best_of_n_kl_bound(1) == 0.0


def test_the_log_one_over_eps_variant_would_exceed_the_bound():
    # A variant writes the atom term as eps_n log(1/eps); at n=2, eps=0.5 that is above the bound,
    # so it cannot be a KL of best-of-n. The implemented estimator stays below.
    n, eps = 2, 0.5
    eps_n = 1 - (1 - eps) ** n
    miswritten = (1 - eps) ** n * (math.log(n) + (n - 1) * math.log(1 - eps) - (n - 1) / n) + eps_n * math.log(1 / eps)
    assert miswritten > best_of_n_kl_bound(n)
    assert best_of_n_kl_estimate(n, math.log(eps)) <= best_of_n_kl_bound(n)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        best_of_n_kl_estimate(0, -1.0)
    with pytest.raises(ValueError):
        best_of_n_kl_estimate(4, 0.5)
    with pytest.raises(ValueError):
        best_of_n_kl_estimate(4, float("nan"))
