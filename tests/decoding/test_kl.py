"""The best-of-n KL figures against the exact KL computed by enumeration."""

import math

import numpy as np
import pytest

from alignd.decoding.kl import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    best_of_n_kl_estimate,
    exact_best_of_n_kl,
    exact_soft_best_of_n_kl,
    soft_best_of_n_distribution,
    soft_best_of_n_kl_bound,
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


SMALL_SPACES = [
    ([0.5, 0.3, 0.2], [0.0, 1.0, 0.5]),
    ([0.05, 0.05, 0.9], [1.0, 0.2, 0.0]),
    ([0.25, 0.25, 0.25, 0.25], [0.0, 0.3, 0.6, 1.0]),
]


@pytest.mark.parametrize("probs,rewards", SMALL_SPACES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_soft_best_of_n_bound_holds_on_enumerable_distributions(probs, rewards, n, beta):
    exact = exact_soft_best_of_n_kl(probs, rewards, n, beta)
    bound = soft_best_of_n_kl_bound(n, beta, max(rewards) - min(rewards))
    assert 0.0 <= exact <= bound + 1e-12
    assert bound <= math.log(n) + 1e-12


@pytest.mark.parametrize("probs,rewards", SMALL_SPACES)
def test_soft_best_of_n_goes_from_pi_ref_to_best_of_n_as_beta_falls(probs, rewards):
    assert soft_best_of_n_distribution(probs, rewards, 3, 1e4) == pytest.approx(probs, abs=1e-3)
    assert soft_best_of_n_distribution(probs, rewards, 3, 1e-3) == pytest.approx(
        best_of_n_distribution(probs, rewards, 3), abs=1e-6
    )
    kls = [exact_soft_best_of_n_kl(probs, rewards, 3, beta) for beta in (10.0, 1.0, 0.1, 0.01)]
    assert kls == sorted(kls)  # lower temperature, further from pi_ref
    assert kls[-1] == pytest.approx(exact_best_of_n_kl(probs, rewards, 3), abs=1e-6)


def test_soft_best_of_n_bound_limits():
    assert soft_best_of_n_kl_bound(1, 0.1, 1.0) == 0.0
    assert soft_best_of_n_kl_bound(8, 1e-9, 1.0) == pytest.approx(math.log(8))
    assert soft_best_of_n_kl_bound(8, 1e9, 1.0) == pytest.approx(0.0, abs=1e-8)
    assert soft_best_of_n_kl_bound(8, 1.0, math.inf) == pytest.approx(math.log(8))
    with pytest.raises(ValueError):
        soft_best_of_n_kl_bound(8, 0.0, 1.0)
