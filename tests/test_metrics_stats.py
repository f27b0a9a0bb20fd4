"""FID, IS, KID and precision/recall against closed forms and independent direct computations."""

import math

import numpy as np
import pytest

from acgan.errors import UserError
from acgan.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    intra_class_fid,
    kernel_inception_distance,
    precision_recall,
)


def _random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- FID


def test_feature_statistics_are_mean_and_unbiased_covariance():
    x = np.random.default_rng(0).standard_normal((50, 4))
    mu, sigma = feature_statistics(x)
    centred = x - x.sum(axis=0) / 50
    np.testing.assert_allclose(mu, x.sum(axis=0) / 50)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).standard_normal((400, 12)) * 3 + 1
    mu, sigma = feature_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


@pytest.mark.parametrize("rotate", [False, True])
def test_fid_matches_closed_form_for_commuting_covariances(rotate):
    # For covariances sharing eigenvectors, Tr (S1 S2)^(1/2) = sum sqrt(a_i b_i) over eigenvalues.
    rng = np.random.default_rng(2)
    d = 6
    a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    q = _random_orthogonal(d, rng) if rotate else np.eye(d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_is_symmetric_for_non_commuting_covariances():
    rng = np.random.default_rng(3)
    mu1, mu2, s1, s2 = rng.standard_normal(5), rng.standard_normal(5), _random_spd(5, rng), _random_spd(5, rng)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_fid_of_a_shifted_set_is_the_squared_shift():
    x = np.random.default_rng(4).standard_normal((300, 5))
    direction = np.array([1.0, 2.0, 0.0, -1.0, 0.5])
    mu, sigma = feature_statistics(x)
    values = [frechet_distance(mu, sigma, *feature_statistics(x + t * direction)) for t in (0.5, 1.0, 2.0)]
    expected = [t * t * float(direction @ direction) for t in (0.5, 1.0, 2.0)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert values[0] < values[1] < values[2]


def test_fid_stays_finite_when_covariances_are_singular():
    # Fewer samples than dimensions: the covariance product is singular, the eps fallback must cope.
    x = np.random.default_rng(5).standard_normal((6, 20))
    mu, sigma = feature_statistics(x)
    value = frechet_distance(mu, sigma, mu, sigma)
    assert math.isfinite(value) and abs(value) < 1e-3 * np.trace(sigma)


def test_intra_class_fid_is_the_per_class_squared_shift():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((600, 3))
    labels = np.arange(600) % 3
    fake = real + labels[:, None] * np.array([1.0, 0.0, 0.0])  # class c moved by c along axis 0
    per_class, mean = intra_class_fid(real, labels, fake, labels, num_classes=3)
    np.testing.assert_allclose(per_class, [0.0, 1.0, 4.0], atol=1e-8)
    assert mean == pytest.approx(5.0 / 3.0)


def test_intra_class_fid_needs_two_images_per_class():
    feats = np.random.default_rng(7).standard_normal((10, 3))
    with pytest.raises(UserError, match="class 2"):
        intra_class_fid(feats, np.arange(10) % 2, feats, np.arange(10) % 2, num_classes=3)


# ---------------------------------------------------------------- Inception Score


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(np.full((200, 10), 0.1), num_splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    probs = np.eye(7)[np.arange(700) % 7]
    mean, std = inception_score(probs, num_splits=10)
    assert mean == pytest.approx(7.0) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_of_smoothed_one_hots_matches_closed_form():
    c, a = 5, 0.3
    probs = (1 - a) * np.eye(c)[np.arange(500) % c] + a / c  # marginal stays uniform
    top, rest = 1 - a + a / c, a / c
    expected = math.exp(top * math.log(top * c) + (c - 1) * rest * math.log(rest * c))
    assert inception_score(probs, num_splits=5)[0] == pytest.approx(expected, rel=1e-10)


def test_inception_score_averages_over_consecutive_splits():
    probs = np.concatenate([np.full((100, 4), 0.25), np.eye(4)[np.arange(100) % 4]])  # IS 1, then IS 4
    mean, std = inception_score(probs, num_splits=2)
    assert mean == pytest.approx(2.5) and std == pytest.approx(1.5)


# ---------------------------------------------------------------- KID


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * across / (m * m)


def test_kid_with_whole_set_subsets_equals_the_unbiased_mmd():
    # A subset as large as the set is a permutation of it, and MMD^2 does not depend on order.
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((15, 4)), rng.standard_normal((15, 4)) + 0.5
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=100)
    assert mean == pytest.approx(_naive_mmd2(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((1000, 8)), rng.standard_normal((1000, 8))
    shifted = [kernel_inception_distance(x, x + t, num_subsets=30, subset_size=200)[0] for t in (0.5, 1.0)]
    independent = kernel_inception_distance(x, y, num_subsets=30, subset_size=200)[0]
    # Subsets of one set overlap, and a shared point adds its large k(x, x) to the cross term only,
    # so identical sets sit slightly below zero; independent samples centre on it.
    identical = kernel_inception_distance(x, x, num_subsets=30, subset_size=200)[0]
    assert abs(independent) < 0.02 * shifted[0]
    assert abs(identical) < 0.05 * shifted[0]
    assert 0 < shifted[0] < shifted[1]


def test_kid_is_reproducible_for_a_seed():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((300, 4))
    a = kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=3)
    assert a == kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=3)
    assert a != kernel_inception_distance(x, y, num_subsets=5, subset_size=50, seed=4)


# ---------------------------------------------------------------- precision / recall


def _naive_coverage(manifold: np.ndarray, probes: np.ndarray, k: int) -> float:
    dist_mm = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
    radii = np.sort(dist_mm, axis=1)[:, k]  # column 0 is the point itself
    dist_pm = np.linalg.norm(probes[:, None] - manifold[None], axis=-1)
    return float(np.mean((dist_pm <= radii[None]).any(axis=1)))


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(11).standard_normal((200, 6))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    x = np.random.default_rng(12).standard_normal((200, 6))
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_precision_recall_on_a_line_by_hand():
    # Reals at 0..9 have k=1 radius 1; of the fakes 0.5, 2.9 and 20 only the first two are covered.
    # Fake radii (k=1): 2.4, 2.4, 17.1; the ball at 20 reaches 2.9 and the others reach 0..5: all reals.
    real = np.arange(10, dtype=float)[:, None]
    fake = np.array([[0.5], [2.9], [20.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3) and recall == pytest.approx(1.0)


def test_precision_recall_matches_a_direct_computation_across_batches():
    rng = np.random.default_rng(13)
    real, fake = rng.standard_normal((90, 5)), rng.standard_normal((70, 5)) * 1.3 + 0.4
    precision, recall = precision_recall(real, fake, k=3, batch_size=16)
    assert precision == pytest.approx(_naive_coverage(real, fake, 3), abs=1e-6)
    assert recall == pytest.approx(_naive_coverage(fake, real, 3), abs=1e-6)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
