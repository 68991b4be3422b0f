"""The evaluation's statistics on feature vectors (numpy only): Fréchet distance, nearest-neighbour retrieval,
match rates against chance, distance summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues rounded below zero are clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mean_a, cov_a) and N(mean_b, cov_b):
    |μa − μb|² + tr(Σa) + tr(Σb) − 2 tr((Σa^½ Σb Σa^½)^½).

    The symmetric form of the cross term needs only eigendecompositions of symmetric matrices, so it is stable
    for the rank-deficient covariances of a few hundred samples (no complex parts to discard as with sqrtm).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    cross = root_a @ cov_b @ root_a
    cross_values = np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)
    value = float(
        np.sum((mean_a - mean_b) ** 2)
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2.0 * np.sum(np.sqrt(cross_values))
    )
    return max(value, 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (rows)."""
    for name, features in (("a", features_a), ("b", features_b)):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"set {name} needs at least 2 feature vectors (rows), got shape {features.shape}"
            )
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature widths differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    a, b = features_a.astype(np.float64), features_b.astype(np.float64)
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def l2_normalize(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)


def nearest_neighbors(
    queries: np.ndarray, pool: np.ndarray, exclude: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index into `pool` of each query's nearest row and the Euclidean distance to it.

    `exclude[i]`, when given, is a pool index query i may not retrieve (itself, for leave-one-out), or -1.
    """
    if len(pool) == 0:
        raise ValueError("the retrieval pool is empty")
    queries, pool = np.asarray(queries, np.float64), np.asarray(pool, np.float64)
    squared = (queries**2).sum(1)[:, None] - 2.0 * queries @ pool.T + (pool**2).sum(1)[None, :]
    if exclude is not None:
        rows = np.arange(len(queries))
        excluded = np.asarray(exclude)
        mask = excluded >= 0
        squared[rows[mask], excluded[mask]] = np.inf
    index = squared.argmin(1)
    distance = np.sqrt(np.clip(squared[np.arange(len(queries)), index], 0.0, None))
    return index, distance


def match_rate(query_labels: Sequence[Any], retrieved_labels: Sequence[Any]) -> float:
    if len(query_labels) != len(retrieved_labels) or not query_labels:
        raise ValueError("need one retrieved label per query, and at least one query")
    return sum(q == r for q, r in zip(query_labels, retrieved_labels, strict=True)) / len(query_labels)


def chance_rate(query_labels: Sequence[Any], pool_labels: Sequence[Any]) -> float:
    """Expected match rate of retrieving a uniformly random pool item: mean over queries of the share of the
    pool with the query's label (the label-frequency baseline)."""
    if not query_labels or not pool_labels:
        raise ValueError("need at least one query and one pool item")
    counts: dict[Any, int] = {}
    for label in pool_labels:
        counts[label] = counts.get(label, 0) + 1
    return sum(counts.get(label, 0) for label in query_labels) / (len(query_labels) * len(pool_labels))


def majority_rate(query_labels: Sequence[Any]) -> float:
    """Match rate of always retrieving the most common query label (what a model making one image scores)."""
    if not query_labels:
        raise ValueError("need at least one query")
    counts: dict[Any, int] = {}
    for label in query_labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(query_labels)


def distance_summary(distances: np.ndarray) -> dict[str, float]:
    distances = np.asarray(distances, np.float64)
    return {
        "mean": float(distances.mean()),
        "median": float(np.median(distances)),
        "p5": float(np.percentile(distances, 5)),
        "min": float(distances.min()),
    }
