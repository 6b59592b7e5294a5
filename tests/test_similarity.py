"""Tests for metarl.analysis.similarity: invariances, identities, and agreement with slow definitions."""

import itertools
import statistics

import numpy as np
import pytest
import torch

from metarl.analysis.similarity import (
    cca,
    conv_to_datapoints,
    linear_cka,
    mean_cca,
    pwcca,
    rbf_cka,
    svcca,
)
from metarl.errors import UserError

# ---------------------------------------------------------------- data and slow references


def related(n: int, px: int, py: int, seed: int = 0, latent: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two representations sharing a latent factor, plus independent noise and an offset."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    x = z @ rng.standard_normal((latent, px)) + 0.5 * rng.standard_normal((n, px)) + 3.0
    y = z @ rng.standard_normal((latent, py)) + 1.0 * rng.standard_normal((n, py)) - 1.0
    return x, y


def orthogonal(p: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))[0]


def well_conditioned(p: int, seed: int) -> np.ndarray:
    """Random invertible map with singular values in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    return orthogonal(p, seed) @ np.diag(rng.uniform(0.5, 2.0, p)) @ orthogonal(p, seed + 1)


def centring_matrix(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def slow_hsic(k: np.ndarray, m: np.ndarray) -> float:
    """Biased HSIC, tr(K H L H) / (n - 1)^2."""
    h = centring_matrix(k.shape[0])
    return np.trace(k @ h @ m @ h) / (k.shape[0] - 1) ** 2


def slow_cka(k: np.ndarray, m: np.ndarray, hsic=slow_hsic) -> float:
    return hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))


def slow_unbiased_hsic(k: np.ndarray, m: np.ndarray) -> float:
    """Song et al.'s U-statistic: mean over distinct (i, j, q, r) of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq."""
    terms = [
        k[i, j] * m[i, j] + k[i, j] * m[q, r] - 2 * k[i, j] * m[i, q]
        for i, j, q, r in itertools.permutations(range(k.shape[0]), 4)
    ]
    return float(np.mean(terms))


def slow_rbf_gram(a: np.ndarray, threshold: float) -> np.ndarray:
    n = a.shape[0]
    dist = np.array([[np.linalg.norm(a[i] - a[j]) for j in range(n)] for i in range(n)])
    sigma = threshold * statistics.median(dist[i, j] for i in range(n) for j in range(n) if i != j)
    return np.exp(-(dist**2) / (2 * sigma**2))


def slow_canonical(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations and unit-norm x-variates via QR of the centred inputs (full column rank)."""
    qx = np.linalg.qr(x - x.mean(0))[0]
    qy = np.linalg.qr(y - y.mean(0))[0]
    u, s, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return s, qx @ u


def slow_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    rho, h = slow_canonical(x, y)
    alpha = np.abs(h.T @ (x - x.mean(0))).sum(axis=1)
    return float(np.sum(alpha / alpha.sum() * rho))


CKA_MEASURES = {
    "linear": linear_cka,
    "linear_debiased": lambda x, y: linear_cka(x, y, debiased=True),
    "rbf": rbf_cka,
    "rbf_debiased": lambda x, y: rbf_cka(x, y, debiased=True),
    "rbf_narrow": lambda x, y: rbf_cka(x, y, threshold=0.5),
}

CCA_MEASURES = {  # invariant to invertible linear maps (SVCCA only when it keeps every direction)
    "mean_cca": mean_cca,
    "svcca_all_int": lambda x, y: svcca(x, y, keep=max(x.shape[1], y.shape[1])),
    "svcca_all_frac": lambda x, y: svcca(x, y, keep=1.0),
}

ALL_MEASURES = {**CKA_MEASURES, **CCA_MEASURES, "svcca_99": svcca, "pwcca": pwcca}


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("name", list(CKA_MEASURES))
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(name):
    measure = CKA_MEASURES[name]
    x, y = related(60, 8, 6)
    base = measure(x, y)
    assert 0.05 < base < 0.999
    for xt, yt in [
        (x @ orthogonal(8, 1), y),
        (x, y @ orthogonal(6, 2)),
        (7.5 * x, y),
        (x, 0.01 * y),
        (x - 100.0, y + 4.0),
    ]:
        assert measure(xt, yt) == pytest.approx(base, rel=1e-9, abs=1e-12)


def test_cka_is_not_invariant_to_general_linear_maps():
    x, y = related(200, 8, 6)
    stretched = x @ np.diag([10.0, 1, 1, 1, 1, 1, 1, 0.1])
    assert abs(linear_cka(stretched, y) - linear_cka(x, y)) > 1e-3


@pytest.mark.parametrize("name", list(CCA_MEASURES))
def test_cca_measures_invariant_to_invertible_linear_maps(name):
    measure = CCA_MEASURES[name]
    x, y = related(500, 6, 8)
    base = measure(x, y)
    assert 0.05 < base < 0.999
    for xt, yt in [(x @ well_conditioned(6, 3), y), (x, y @ well_conditioned(8, 5)), (x + 9.0, y - 2.0)]:
        assert measure(xt, yt) == pytest.approx(base, rel=1e-9)


def test_cca_vector_invariant_to_invertible_linear_maps():
    x, y = related(500, 8, 6)
    np.testing.assert_allclose(cca(x @ well_conditioned(8, 3), y @ well_conditioned(6, 5)), cca(x, y), atol=1e-9)


def test_svcca_with_variance_threshold_invariant_to_orthogonal_maps_and_scaling():
    """Truncating to 99% of variance depends on the spectrum, so only maps that keep it pass."""
    x, y = related(500, 8, 6)
    base = svcca(x, y)
    for xt, yt in [(x @ orthogonal(8, 1), y), (x, 4.0 * y @ orthogonal(6, 2))]:
        assert svcca(xt, yt) == pytest.approx(base, rel=1e-9)


def test_pwcca_invariances():
    """PWCCA's weights come from x's neurons: invariant to any invertible map of y, but for x only to
    neuron permutation, sign flips and isotropic scaling."""
    x, y = related(500, 8, 6)
    base = pwcca(x, y)
    assert 0.05 < base < 0.999
    signed_permutation = np.eye(8)[np.random.default_rng(0).permutation(8)] * np.array([1, -1] * 4)
    for xt, yt in [(x, y @ well_conditioned(6, 5)), (3.0 * x @ signed_permutation, y), (x + 1.0, y)]:
        assert pwcca(xt, yt) == pytest.approx(base, rel=1e-9)
    # a general linear map of x re-weights the canonical correlations (a property, not a bug)
    assert abs(pwcca(x @ well_conditioned(8, 3), y) - base) > 1e-4


# ---------------------------------------------------------------- identities and bias


@pytest.mark.parametrize("name", list(ALL_MEASURES))
def test_identical_inputs_give_one(name):
    x, _ = related(100, 10, 1)
    assert ALL_MEASURES[name](x, x.copy()) == pytest.approx(1.0, abs=1e-6)


def test_cca_of_identical_inputs_is_all_ones():
    x, _ = related(100, 10, 1)
    np.testing.assert_allclose(cca(x, x), np.ones(10), atol=1e-6)


def test_debiased_linear_cka_near_zero_for_independent_features():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2000, 50)), rng.standard_normal((2000, 50))
    assert abs(linear_cka(x, y, debiased=True)) < 0.05
    assert abs(rbf_cka(x, y, debiased=True)) < 0.05


def test_biased_cka_inflated_with_few_examples():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 50)), rng.standard_normal((20, 50))
    biased, debiased = linear_cka(x, y), linear_cka(x, y, debiased=True)
    assert biased > 0.5  # about 0.73 for independent data
    assert biased > debiased + 0.2
    assert rbf_cka(x, y) > rbf_cka(x, y, debiased=True) + 0.2


# ---------------------------------------------------------------- agreement with slow definitions


def test_linear_cka_matches_explicit_hsic():
    x, y = related(30, 5, 7, seed=3)
    assert linear_cka(x, y) == pytest.approx(slow_cka(x @ x.T, y @ y.T), abs=1e-8)


def test_debiased_linear_cka_matches_u_statistic():
    x, y = related(7, 3, 2, seed=4)  # 7*6*5*4 = 840 index tuples
    expected = slow_cka(x @ x.T, y @ y.T, hsic=slow_unbiased_hsic)
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n", [24, 25])  # even and odd number of pairs for the median
def test_rbf_cka_matches_explicit_kernels(threshold, n):
    x, y = related(n, 4, 6, seed=5)
    expected = slow_cka(slow_rbf_gram(x, threshold), slow_rbf_gram(y, threshold))
    assert rbf_cka(x, y, threshold=threshold) == pytest.approx(expected, abs=1e-8)


def test_debiased_rbf_cka_matches_u_statistic():
    x, y = related(7, 3, 2, seed=6)
    expected = slow_cka(slow_rbf_gram(x, 1.0), slow_rbf_gram(y, 1.0), hsic=slow_unbiased_hsic)
    assert rbf_cka(x, y, debiased=True) == pytest.approx(expected, abs=1e-8)


def test_cca_matches_qr_route():
    x, y = related(300, 7, 5, seed=7)
    rho, _ = slow_canonical(x, y)
    result = cca(x, y)
    assert result.shape == (5,)
    assert np.all(np.diff(result) <= 0)
    np.testing.assert_allclose(result, rho, atol=1e-8)
    assert mean_cca(x, y) == pytest.approx(rho.mean(), abs=1e-8)
    assert pwcca(x, y) == pytest.approx(slow_pwcca(x, y), abs=1e-8)


def test_mean_cca_threshold_averages_the_leading_correlations_of_the_sum():
    """threshold t: the fewest leading correlations whose sum is >= t * total, as the SVCCA reference code."""
    x, y = related(400, 8, 8, seed=3)
    rho, _ = slow_canonical(x, y)
    for t in (0.5, 0.8, 0.98):
        k = next(i for i in range(1, len(rho) + 1) if rho[:i].sum() >= t * rho.sum())
        assert mean_cca(x, y, threshold=t) == pytest.approx(rho[:k].mean(), abs=1e-8)
    assert mean_cca(x, y, threshold=0.98) >= mean_cca(x, y)  # the trailing ones are the smallest
    assert mean_cca(x, y, threshold=1.0) == pytest.approx(rho.mean(), abs=1e-8)
    assert svcca(x, y, keep=1.0, threshold=0.98) == pytest.approx(mean_cca(x, y, threshold=0.98), abs=1e-8)
    for bad in (0, 1.5, "x"):
        with pytest.raises(UserError, match="threshold"):
            mean_cca(x, y, threshold=bad)


def test_svcca_keep_by_count_and_by_fraction():
    """x and y have variance fractions exactly 0.5/0.3/0.15/0.05 along known orthonormal directions."""
    rng = np.random.default_rng(8)
    n = 400
    a = rng.standard_normal((n, 4))
    b = a @ rng.standard_normal((4, 4)) + 0.7 * rng.standard_normal((n, 4))
    qx = np.linalg.qr(a - a.mean(0))[0]  # orthonormal and centred columns
    qy = np.linalg.qr(b - b.mean(0))[0]
    scale = np.sqrt([0.5, 0.3, 0.15, 0.05]) * 10
    x = (qx * scale) @ orthogonal(4, 9) + 2.0
    y = (qy * scale) @ orthogonal(4, 10)

    by_count = {k: svcca(x, y, keep=k) for k in (1, 2, 3, 4)}
    for k, value in by_count.items():  # the top-k singular directions are the first k columns of qx / qy
        assert value == pytest.approx(slow_canonical(qx[:, :k], qy[:, :k])[0].mean(), abs=1e-8)
    assert len(set(np.round(list(by_count.values()), 6))) == 4
    assert svcca(x, y, keep=0.45) == pytest.approx(by_count[1], abs=1e-12)
    assert svcca(x, y, keep=0.75) == pytest.approx(by_count[2], abs=1e-12)
    assert svcca(x, y, keep=0.8) == pytest.approx(by_count[2], abs=1e-12)  # exactly on the boundary
    assert svcca(x, y, keep=0.85) == pytest.approx(by_count[3], abs=1e-12)
    assert svcca(x, y, keep=1.0) == pytest.approx(by_count[4], abs=1e-12)
    assert by_count[4] == pytest.approx(mean_cca(x, y), abs=1e-10)


# ---------------------------------------------------------------- awkward inputs


def test_rank_deficient_input_duplicate_and_dead_columns():
    x, y = related(200, 5, 4, seed=11)
    x_dup = np.hstack([x, x[:, :2], np.zeros((200, 1))])  # rank stays 5
    np.testing.assert_allclose(cca(x_dup, y), cca(x, y), atol=1e-8)
    assert cca(x_dup, y[:, :3] @ np.ones((3, 6))).shape == (1,)  # y has rank 1
    assert mean_cca(x_dup, y) == pytest.approx(mean_cca(x, y), abs=1e-8)
    assert svcca(x_dup, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-8)
    assert 0.0 < svcca(x_dup, y) <= 1.0  # 0.99 of variance: duplicates shift the spectrum, so it differs
    assert 0.0 < pwcca(x_dup, y) <= 1.0
    assert 0.0 < linear_cka(x_dup, y) < 1.0


def test_more_features_than_examples_gives_trivial_cca_without_crashing():
    """Documented degenerate case: CCA is 1 in the whole (n - 1)-dimensional centred space."""
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((20, 50)), rng.standard_normal((20, 30))
    rho = cca(x, y)
    assert rho.shape == (19,)
    np.testing.assert_allclose(rho, 1.0, atol=1e-6)
    assert mean_cca(x, y) == pytest.approx(1.0, abs=1e-6)
    assert pwcca(x, y) == pytest.approx(1.0, abs=1e-6)
    assert svcca(x, y, keep=3) < 0.9  # reducing first keeps CCA meaningful
    assert abs(linear_cka(x, y, debiased=True)) < 0.2


def test_torch_input_matches_numpy():
    x, y = related(50, 6, 4, seed=13)
    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    ty = torch.tensor(y, dtype=torch.float64)
    x32 = tx.detach().double().numpy()
    for measure in ALL_MEASURES.values():
        result = measure(tx, ty)
        assert type(result) is float
        assert result == pytest.approx(measure(x32, y), abs=1e-12)
    assert isinstance(cca(tx, ty), np.ndarray)


def test_conv_to_datapoints_both_modes():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    positions = conv_to_datapoints(a)
    assert positions.shape == (2 * 4 * 5, 3) and positions.dtype == np.float64
    for n, h, w in itertools.product(range(2), range(4), range(5)):
        np.testing.assert_array_equal(positions[n * 20 + h * 5 + w], a[n, :, h, w])
    means = conv_to_datapoints(torch.from_numpy(a), mode="mean")
    np.testing.assert_allclose(means, [[a[n, c].mean() for c in range(3)] for n in range(2)])
    flat = np.ones((4, 3), dtype=np.float32)
    np.testing.assert_array_equal(conv_to_datapoints(flat), flat)
    # datapoints from two conv layers with the same spatial size feed straight into the measures
    rng = np.random.default_rng(14)
    b, c = rng.standard_normal((6, 3, 4, 4)), rng.standard_normal((6, 5, 4, 4))
    assert 0.0 < linear_cka(conv_to_datapoints(b), conv_to_datapoints(c)) < 1.0
    with pytest.raises(ValueError, match="4-d"):
        conv_to_datapoints(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="mode"):
        conv_to_datapoints(a, mode="max")


def test_mismatched_example_counts_raise_clear_error():
    rng = np.random.default_rng(15)
    x, y = rng.standard_normal((100, 5)), rng.standard_normal((90, 5))
    for measure in [*ALL_MEASURES.values(), cca]:
        with pytest.raises(ValueError, match="x has 100 examples but y has 90; similarity needs the same"):
            measure(x, y)
    with pytest.raises(UserError):  # also reported cleanly by the CLI
        linear_cka(x, y)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: linear_cka(x[:, 0], x), "2-d"),
        (lambda x: linear_cka(np.where(x > 1.5, np.nan, x), x), "NaN or infinite"),
        (lambda x: mean_cca(x, np.full_like(x, np.inf)), "NaN or infinite"),
        (lambda x: linear_cka(x[:3], x[:3], debiased=True), "more than 3 examples"),
        (lambda x: linear_cka(np.ones_like(x), x), "same for every example"),
        (lambda x: rbf_cka(x, x, threshold=0.0), "threshold"),
        (lambda x: svcca(x, x, keep=0), "keep"),
        (lambda x: svcca(x, x, keep=1.5), "keep"),
        (lambda x: svcca(x, x, keep=True), "keep"),
        (lambda x: linear_cka(x[:1], x[:1]), "at least 2 examples"),
    ],
)
def test_invalid_input_raises_value_error(call, message):
    x = np.random.default_rng(16).standard_normal((10, 4))
    with pytest.raises(ValueError, match=message):
        call(x)
