"""demo.feature_stats: the Fréchet distance against closed forms, retrieval and chance on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from demo.feature_stats import (
    chance_rate,
    distance_summary,
    frechet_distance,
    gaussian_frechet_distance,
    l2_normalize,
    majority_rate,
    match_rate,
    nearest_neighbors,
)


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_gaussian_frechet_distance_closed_forms() -> None:
    rng = np.random.default_rng(0)
    # Diagonal covariances: |Δμ|² + Σ (√a − √b)².
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    var_a, var_b = rng.uniform(0.5, 3.0, 5), rng.uniform(0.5, 3.0, 5)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert gaussian_frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(
        expected
    )
    # General covariances: tr((Σa Σb)^½) is the sum of the square roots of the (real, non-negative)
    # eigenvalues of Σa Σb, an independent route to the cross term.
    cov_a, cov_b = _random_spd(rng, 6), _random_spd(rng, 6)
    cross = np.sum(np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real))
    expected = np.trace(cov_a) + np.trace(cov_b) - 2 * cross + 4.0
    mean_shift = np.zeros(6)
    mean_shift[0] = 2.0
    assert gaussian_frechet_distance(np.zeros(6), cov_a, mean_shift, cov_b) == pytest.approx(
        expected, rel=1e-9
    )
    assert gaussian_frechet_distance(mean_a[:1], cov_a[:1, :1], mean_a[:1], cov_a[:1, :1]) == pytest.approx(
        0.0
    )
    # Symmetric, and zero between identical (even singular) Gaussians.
    assert gaussian_frechet_distance(np.zeros(6), cov_b, mean_shift, cov_a) == pytest.approx(
        expected, rel=1e-9
    )
    singular = np.diag([1.0, 0.0, 2.0])
    assert gaussian_frechet_distance(np.ones(3), singular, np.ones(3), singular) == pytest.approx(
        0.0, abs=1e-9
    )


def test_frechet_distance_of_samples_approaches_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    a = rng.normal(0.0, 1.0, size=(n, 4))
    b = rng.normal([1.0, 0.0, -1.0, 0.5], [2.0, 1.0, 0.5, 1.0], size=(n, 4))
    expected = (1 + 1 + 0.25) + (1.0 + 0.0 + 0.25 + 0.0)  # |Δμ|² + Σ (σa − σb)²
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)
    half = n // 2
    assert frechet_distance(a[:half], a[half:]) < 0.01  # two halves of one distribution: the floor
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(a, b[:, :3])


def test_retrieval_on_separated_clusters() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 16)) * 10
    pool = np.repeat(centres, 3, axis=0) + rng.normal(size=(30, 16)) * 0.1
    pool_labels = [i // 3 for i in range(30)]
    queries = centres[[3, 7, 7, 1]] + rng.normal(size=(4, 16)) * 0.1
    index, distance = nearest_neighbors(queries, pool)
    assert [pool_labels[i] for i in index] == [3, 7, 7, 1]
    assert match_rate([3, 7, 7, 1], [pool_labels[i] for i in index]) == 1.0
    assert np.all(distance < 2.0)
    # Leave-one-out: a pool item used as its own query retrieves another member of its cluster.
    loo, _ = nearest_neighbors(pool, pool, exclude=list(range(30)))
    assert all(loo[i] != i and pool_labels[loo[i]] == pool_labels[i] for i in range(30))
    assert match_rate(["a", "b"], ["a", "c"]) == 0.5


def test_chance_rate_is_the_label_frequency_baseline() -> None:
    pool = ["food"] * 6 + ["flags"] * 3 + ["symbols"]
    assert chance_rate(["food", "flags"], pool) == pytest.approx((0.6 + 0.3) / 2)
    assert chance_rate(["unknown"], pool) == 0.0
    # A model that always makes the same image matches at most the most common prompt label's share.
    assert majority_rate(["food", "food", "flags", "symbols"]) == 0.5
    # Random retrieval matches at the chance rate on average.
    rng = np.random.default_rng(3)
    queries = list(rng.choice(pool, 4000))
    retrieved = list(rng.choice(pool, 4000))
    assert match_rate(queries, retrieved) == pytest.approx(chance_rate(queries, pool), abs=0.03)


def test_normalisation_and_summary() -> None:
    unit = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert unit[0] == pytest.approx([0.6, 0.8]) and np.all(np.isfinite(unit))
    summary = distance_summary(np.arange(101, dtype=float))
    assert summary == {"mean": 50.0, "median": 50.0, "p5": 5.0, "min": 0.0}
