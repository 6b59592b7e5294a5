"""Similarity of two layer representations: CCA, mean CCA, SVCCA, PWCCA and linear / RBF CKA.

Every measure takes two (examples, features) arrays -- numpy arrays or torch tensors -- whose rows are
the *same* examples passed through the two networks (or the same network before and after adaptation).
This is the transpose of the (neurons, datapoints) layout of the original SVCCA code. Everything is
computed in float64 and returned as a plain float (`cca` returns the array of correlations).

References: SVCCA (Raghu et al. 2017, arXiv 1706.05806), PWCCA (Morcos et al. 2018, arXiv 1806.05759),
CKA (Kornblith et al. 2019, arXiv 1905.00414), unbiased HSIC (Song et al. 2012).

Things to know before reading the numbers:

* More features than examples. CCA finds the best-correlated directions in the two column spaces.
  After centring, n examples span at most n - 1 dimensions, so two full-rank representations with
  features >= n - 1 span the *same* (n - 1)-dimensional space and every canonical correlation is 1,
  whatever the data. `cca`/`mean_cca`/`pwcca` do not crash there, but the value means nothing: use
  `svcca` with a small `keep`, or CKA, or more examples (for conv layers, `conv_to_datapoints`).
* CCA is invariant to any invertible linear map of either input; CKA only to orthogonal maps and
  isotropic scaling. PWCCA is asymmetric: its weights come from `x` alone.
* `rbf_cka` and the debiased CKAs build (examples, examples) Gram matrices, so memory grows as n^2;
  biased `linear_cka` and the CCA family work in feature space.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np

from metarl.errors import UserError

__all__ = [
    "SimilarityInputError",
    "cca",
    "conv_to_datapoints",
    "is_constant",
    "linear_cka",
    "mean_cca",
    "pwcca",
    "rbf_cka",
    "svcca",
]


class SimilarityInputError(UserError, ValueError):
    """Bad input to a similarity measure (a ValueError, and a UserError so the CLI prints it cleanly)."""


# ---------------------------------------------------------------- input handling


def _to_numpy(a: Any, name: str) -> np.ndarray:
    """Float64 numpy array from an array or torch tensor (torch is duck-typed, so no torch import)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise SimilarityInputError(f"{name} contains NaN or infinite values")
    return a


def _as_matrix(a: Any, name: str) -> np.ndarray:
    """Validated (examples, features) float64 matrix."""
    a = _to_numpy(a, name)
    if a.ndim != 2:
        raise SimilarityInputError(
            f"{name} must be 2-d (examples, features), got shape {a.shape}; "
            "flatten it or use conv_to_datapoints for conv activations"
        )
    if a.shape[0] < 2 or a.shape[1] < 1:
        raise SimilarityInputError(f"{name} needs at least 2 examples and 1 feature, got shape {a.shape}")
    if is_constant(a):
        raise SimilarityInputError(f"{name} is the same for every example; similarity is undefined")
    return a


def is_constant(a: Any) -> bool:
    """Every example (row) the same: no measure here is defined on such a representation."""
    a = np.asarray(a)
    return bool(np.all(a == a[0]))


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate both inputs and check they hold the same number of examples."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise SimilarityInputError(
            f"x has {x.shape[0]} examples but y has {y.shape[0]}; similarity needs the same examples in both"
        )
    return x, y


def _centre(a: np.ndarray) -> np.ndarray:
    """Subtract each feature's mean over examples."""
    return a - a.mean(axis=0, keepdims=True)


# ---------------------------------------------------------------- CKA


def _centre_gram(k: np.ndarray, debiased: bool) -> np.ndarray:
    """Double-centred Gram matrix HKH, or its U-centred form when debiased.

    U-centring (Szekely & Rizzo 2014) zeroes the diagonal and removes row/column means with the
    n - 2 and (n - 1)(n - 2) denominators, so that <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC
    estimator of Song et al. (2012).
    """
    n = k.shape[0]
    if not debiased:
        rows = k.mean(axis=0, keepdims=True)
        return k - rows - rows.T + k.mean()
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    rows = k.sum(axis=0, keepdims=True) / (n - 2)
    k = k - rows - rows.T + k.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(k, 0.0)
    return k


def _gram_cka(kx: np.ndarray, ky: np.ndarray, debiased: bool) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); HSIC's 1/(n-1)^2 or 1/(n(n-3)) factor cancels."""
    if debiased and kx.shape[0] <= 3:
        raise SimilarityInputError(f"debiased CKA needs more than 3 examples, got {kx.shape[0]}")
    kc, lc = _centre_gram(kx, debiased), _centre_gram(ky, debiased)
    denominator = np.linalg.norm(kc) * np.linalg.norm(lc)
    if denominator == 0.0:
        raise SimilarityInputError("a representation has zero HSIC with itself; CKA is undefined")
    return float(np.vdot(kc, lc) / denominator)


def linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Linear CKA, ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X and Y.

    The biased form is computed in feature space (no n x n matrices). `debiased=True` uses the
    unbiased HSIC estimator on linear Gram matrices, which removes the upward bias CKA has when
    there are few examples relative to features; it needs n > 3.
    """
    x, y = _pair(x, y)
    xc, yc = _centre(x), _centre(y)
    if debiased:
        return _gram_cka(xc @ xc.T, yc @ yc.T, debiased=True)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def _rbf_gram(a: np.ndarray, threshold: float) -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)) with sigma = threshold * median off-diagonal Euclidean distance."""
    a = _centre(a)  # distances are unchanged; centring only reduces rounding in the norm expansion
    norms = np.einsum("ij,ij->i", a, a)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (a @ a.T), 0.0)
    np.fill_diagonal(sq, 0.0)
    median = np.median(np.sqrt(sq[np.triu_indices(a.shape[0], k=1)]))
    if median == 0.0:
        raise SimilarityInputError("median pairwise distance is 0 (mostly duplicate examples); RBF CKA is undefined")
    sigma = threshold * median
    return np.exp(-sq / (2.0 * sigma**2))


def rbf_cka(x: Any, y: Any, threshold: float = 1.0, debiased: bool = False) -> float:
    """CKA with RBF kernels whose bandwidth is `threshold` times each input's median pairwise distance.

    The bandwidth is set separately for x and y, which makes the measure invariant to isotropic
    scaling (and, as distances are, to orthogonal maps and translation).
    """
    if not threshold > 0:
        raise SimilarityInputError(f"threshold must be positive, got {threshold}")
    x, y = _pair(x, y)
    return _gram_cka(_rbf_gram(x, threshold), _rbf_gram(y, threshold), debiased)


# ---------------------------------------------------------------- CCA family


def _whiten(a: np.ndarray, epsilon: float) -> np.ndarray:
    """Orthonormal basis of centred `a`: a_c V diag(w)^(-1/2), eigenvalues w <= epsilon * max dropped.

    This is a_c times the pseudo-inverse square root of its covariance, written in the eigenbasis;
    dropping tiny eigenvalues makes rank-deficient inputs (duplicate or dead neurons) work.
    """
    ac = _centre(a)
    w, v = np.linalg.eigh(ac.T @ ac)
    keep = w > epsilon * w.max()
    return ac @ (v[:, keep] / np.sqrt(w[keep]))


def _canonical(x: np.ndarray, y: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened x, x-side canonical directions (in that basis), and canonical correlations (descending).

    The singular values of Qx^T Qy equal those of Sxx^-1/2 Sxy Syy^-1/2 (the two differ only by
    orthogonal factors), and there are min(rank x, rank y) of them.
    """
    qx, qy = _whiten(x, epsilon), _whiten(y, epsilon)
    u, s, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return qx, u, np.clip(s, 0.0, 1.0)


def cca(x: Any, y: Any, epsilon: float = 1e-10) -> np.ndarray:
    """Canonical correlations between x and y, sorted descending, min(rank x, rank y) of them.

    With features >= examples - 1 on both sides the correlations are all 1 regardless of the data
    (see the module docstring); prefer `svcca` or CKA there.
    """
    x, y = _pair(x, y)
    return _canonical(x, y, epsilon)[2]


def _leading_count(weights: np.ndarray, fraction: float) -> int:
    """Fewest leading entries of descending, non-negative `weights` whose sum reaches `fraction` of the total.

    The small tolerance keeps rounding in the cumulative sum from skipping fraction = 1.
    """
    return int(np.searchsorted(np.cumsum(weights) / np.sum(weights), fraction - 1e-12)) + 1


def _leading_mean(rho: np.ndarray, threshold: float) -> float:
    """Mean of the fewest leading correlations whose sum reaches `threshold` of the total.

    The SVCCA authors' reference code summarises CCA this way (threshold 0.98) to drop the trailing,
    near-zero correlations of directions that carry no signal; threshold 1 is the plain mean.
    """
    if not (isinstance(threshold, Real) and 0 < threshold <= 1):
        raise SimilarityInputError(f"threshold must be in (0, 1], got {threshold!r}")
    if threshold == 1 or rho.sum() == 0:
        return float(np.mean(rho))
    return float(np.mean(rho[: _leading_count(rho, threshold)]))


def mean_cca(x: Any, y: Any, epsilon: float = 1e-10, threshold: float = 1.0) -> float:
    """Mean canonical correlation ("mean CCA similarity").

    threshold < 1 averages only the leading correlations that make up that fraction of their sum,
    as the SVCCA reference code does (0.98 there, and in `metarl analyze`).
    """
    return _leading_mean(cca(x, y, epsilon), threshold)


def _top_directions(a: np.ndarray, keep: int | float) -> np.ndarray:
    """Centred `a` projected on its top singular directions (count, or fraction of variance)."""
    u, s, _ = np.linalg.svd(_centre(a), full_matrices=False)
    if isinstance(keep, Integral) and not isinstance(keep, bool) and keep >= 1:
        k = int(keep)  # slicing keeps all directions when a layer has fewer than `keep`
    elif isinstance(keep, Real) and not isinstance(keep, Integral) and 0 < keep <= 1:
        k = _leading_count(s**2, keep)
    else:
        raise SimilarityInputError(
            f"keep must be an int >= 1 (number of directions) or a float in (0, 1] (fraction of variance), got {keep!r}"
        )
    return u[:, :k] * s[:k]


def svcca(x: Any, y: Any, keep: int | float = 0.99, epsilon: float = 1e-10, threshold: float = 1.0) -> float:
    """SVCCA: mean CCA after reducing each side to its top singular directions.

    `keep` as an int is the number of directions (all of them for a side with fewer); as a float in
    (0, 1] it is the smallest number explaining at least that fraction of variance. Note keep=1
    means one direction, keep=1.0 all of them. Reducing to k < examples - 1 directions is what
    keeps CCA meaningful for wide layers.
    """
    x, y = _pair(x, y)
    return mean_cca(_top_directions(x, keep), _top_directions(y, keep), epsilon, threshold)


def pwcca(x: Any, y: Any, epsilon: float = 1e-10) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): sum_i alpha_i rho_i.

    alpha_i is proportional to sum_j |<h_i, x_j>| over the unit-norm canonical variates h_i of x
    and the centred neurons x_j of x, so correlations of directions that account for more of x
    count more. Asymmetric in x and y, and (because of the weights) not invariant to general linear
    maps of x -- only of y. The weights project centred neurons, where the authors' code projects
    raw ones; the two differ only through each neuron's mean (slightly, for ReLU layers).
    """
    x, y = _pair(x, y)
    qx, u, rho = _canonical(x, y, epsilon)
    weights = np.abs((qx @ u).T @ _centre(x)).sum(axis=1)
    return float(np.sum(weights * rho) / np.sum(weights))


# ---------------------------------------------------------------- conv layers


def conv_to_datapoints(a: Any, mode: str = "positions") -> np.ndarray:
    """Conv activations (N, C, H, W) as datapoints: (N*H*W, C) per position, or (N, C) spatial means.

    "positions" treats every spatial location of every example as a datapoint (rows ordered by
    example, then row, then column), so both layers compared must share H and W. 2-d input is
    returned unchanged (as float64).
    """
    if mode not in ("positions", "mean"):
        raise SimilarityInputError(f"mode must be 'positions' or 'mean', got {mode!r}")
    a = _to_numpy(a, "activations")
    if a.ndim == 2:
        return a
    if a.ndim != 4:
        raise SimilarityInputError(f"conv activations must be 4-d (N, C, H, W) or 2-d, got shape {a.shape}")
    if mode == "mean":
        return a.mean(axis=(2, 3))
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
