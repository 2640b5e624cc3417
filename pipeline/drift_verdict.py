"""The drift verdict, calibrated per comparison: a p-value for every test and a corrected level,
so the share of false alarms stays at `drift.alpha` whatever the sizes of the two sides.

A fixed threshold on a drift score cannot do that: the unbiased MMD² of two samples of one
distribution spreads like 1/n, so 0.01 (measured on 200 rows a side) was exceeded by an
undrifted 36-row batch. Here every test yields a p-value under the hypothesis "both sides come
from one distribution":
- embeddings: a permutation test of Evidently's own MMD statistic (same kernel, same bandwidth
  rule); `mmd_permutation_test` also gives the critical score, so Evidently's report can state
  the same test as "score <= critical";
- numerical columns: Evidently's two-sample Kolmogorov-Smirnov test (conservative with ties);
- categorical columns: a permutation chi-square test of homogeneity (`categorical_pvalue`),
  registered with Evidently by the drift stage. Evidently's own `chisquare` treats the reference
  counts as exact expected counts, which roughly doubles its statistic for equal sides and makes
  it fire far more often than its level; its size-dependent defaults (Wasserstein and
  Jensen-Shannon distances above 1,000 rows) give no p-value at all.

`verdict` is the one decision: the drift stage, the incoming-batch monitor (through the stage)
and `make drift-power` all call it. Pure numpy/scipy; no Evidently, no torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.params import DriftParams

MODALITIES = ("image", "text")
# Rows Evidently's MMDDriftMethod samples per side to pick the kernel bandwidth (median heuristic).
BANDWIDTH_SAMPLE = 1000
CATEGORICAL_PERMUTATIONS = 999  # cheap: one multivariate hypergeometric draw per permutation
CATEGORICAL_TEST = "chi2_permutation"  # its name in Evidently's stattest registry
# MMD² scores closer than this are equal (summation-order noise is ~1e-14 at 5,000 rows a side).
TIE_TOLERANCE = 1e-12


def embedding_level(settings: DriftParams) -> float:
    """Each modality's level. Half of alpha goes to the embeddings, split evenly (Bonferroni)."""
    return settings.alpha / 2 / len(MODALITIES)


def column_level(settings: DriftParams, columns: int) -> float:
    """Each column's level: the other half of alpha, split evenly over the tested columns."""
    return settings.alpha / 2 / max(columns, 1)


@dataclass(frozen=True)
class EmbeddingTest:
    score: float  # max(unbiased MMD², 0) of the two sides, as Evidently's MMDDriftMethod shows it
    p_value: float  # (1 + permuted scores >= score) / (1 + permutations)
    critical: float  # score > critical exactly when p_value <= level: Evidently's threshold
    permutations: int
    level: float
    distinct_rows: tuple[int, int]  # (reference, current) rows tested, repeats merged

    @property
    def drifted(self) -> bool:
        return self.p_value <= self.level

    def as_dict(self) -> dict:
        return {"score": self.score, "p_value": self.p_value, "critical": self.critical,
                "permutations": self.permutations, "level": self.level,
                "distinct_rows": list(self.distinct_rows), "drifted": self.drifted}


def _pca(reference: np.ndarray, current: np.ndarray, components: int):
    # Evidently's get_pca_df: fitted on the reference, applied to both.
    from sklearn.decomposition import PCA

    pca = PCA(n_components=components, random_state=0)
    return pca.fit_transform(reference), pca.transform(current)


def _bandwidth(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's MMDDriftMethod bandwidth: the squared median distance between up to 1,000
    rows of each side, sampled as pandas samples them (random_state=0)."""
    import pandas as pd
    from sklearn.metrics import pairwise_distances

    x = pd.DataFrame(reference).sample(min(len(reference), BANDWIDTH_SAMPLE), random_state=0)
    y = pd.DataFrame(current).sample(min(len(current), BANDWIDTH_SAMPLE), random_state=0)
    # One job: Evidently asks for all cores (n_jobs=-1), whose thread start-up costs more than
    # these at most 1,000 x 1,000 distances; the values are the same.
    sigma2 = float(np.median(pairwise_distances(x, y, metric="euclidean")) ** 2)
    # Every sampled pair identical: any bandwidth gives the same (null) answer.
    return sigma2 if sigma2 > 0 else 1.0


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, permutations: int,
                         seed: int, level: float,
                         pca_components: int | None = None) -> EmbeddingTest:
    """MMD² of two embedding matrices and its permutation p-value, over each side's distinct
    rows (see `distinct_rows`).

    The statistic is Evidently's (RBF kernel, median-heuristic bandwidth, unbiased MMD²). Each
    permutation relabels the pooled rows, keeping the side sizes; all of them are scored at once
    from one kernel matrix K: for a 0/1 assignment s of the first side, with A = sᵀKs and
    B = sᵀK1, the within-side sums (diagonal left out) are A - sᵀdiag(K) and 1ᵀK1 - 2B + A -
    (1 - s)ᵀdiag(K), the between-side sum B - A.
    The observed assignment is scored by the same arithmetic, so ties are exact.
    """
    from sklearn.metrics.pairwise import pairwise_kernels

    x, y = distinct_rows(reference), distinct_rows(current)
    if pca_components:
        x, y = _pca(x, y, pca_components)
    m, n = len(x), len(y)
    if m < 2 or n < 2:  # one distinct row on a side: no spread to compare against
        return EmbeddingTest(score=0.0, p_value=1.0, critical=0.0, permutations=0, level=level,
                             distinct_rows=(m, n))
    kernel = pairwise_kernels(np.vstack([x, y]), metric="rbf", gamma=1.0 / _bandwidth(x, y))
    rng = np.random.default_rng(seed)
    total = m + n
    assign = np.zeros((total, permutations + 1))
    assign[:m, 0] = 1.0  # column 0: the observed sides
    for b in range(1, permutations + 1):
        assign[rng.permutation(total)[:m], b] = 1.0
    row_sums = kernel.sum(axis=1)
    diagonal = np.diag(kernel)  # ~1 for the RBF kernel; the within-side sums leave i == j out
    within = np.einsum("ib,ib->b", assign, kernel @ assign)  # A per assignment
    cross = assign.T @ row_sums  # B per assignment
    own = assign.T @ diagonal
    scores = ((within - own) / (m * (m - 1.0))
              + (row_sums.sum() - 2 * cross + within - (diagonal.sum() - own)) / (n * (n - 1.0))
              - 2 * (cross - within) / (m * n))
    observed, null = float(scores[0]), np.sort(scores[1:])[::-1]
    # A permutation that only swaps identical rows scores the same up to summation order: it
    # must count as reaching the observed score.
    exceed = int(np.sum(null >= observed - TIE_TOLERANCE))
    # p <= level  <=>  at most k - 1 permuted scores reach the observed one  <=>  observed > the
    # k-th largest permuted score (+ tolerance), k = floor(level * (permutations + 1)).
    k = math.floor(level * (permutations + 1) + 1e-9)
    if k < 1:
        raise ValueError(f"{permutations} permutations cannot reach level {level}")
    # The score as Evidently shows it (an unbiased MMD² can dip below 0); the test uses it raw.
    return EmbeddingTest(score=max(observed, 0.0), p_value=(1 + exceed) / (1 + permutations),
                         critical=float(null[k - 1]) + TIE_TOLERANCE,
                         permutations=permutations, level=level, distinct_rows=(m, n))


def first_occurrences(rows: np.ndarray) -> np.ndarray:
    """True for each row's first occurrence in its side, False for its repeats.

    Every test assumes a side's rows are exchangeable draws. Repeats break that: a meme and its
    confounder share one image or one caption, a re-posted image arrives twice. Such a pair
    always sits on one side, so a permutation that splits it, or a KS test that counts it twice,
    understates how far two undrifted sides can differ, and the test fires too often (measured
    on undrifted synthetic seed pairs at 200 rows, 140 distinct images and captions each: text
    MMD p <= 0.0125 in 7 of 20 pairs with repeats kept, 0 of 20 without). So each family is
    tested over its distinct units: images for the image features and embeddings, captions for
    the caption ones, rows sharing neither with an earlier row for predictions and labels. Rows
    equal to 6 decimals are one: a batch's composition may move an embedding's last bits."""
    values = np.round(np.asarray(rows, dtype=np.float64), 6)
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    _, first = np.unique(values, axis=0, return_index=True)
    mask = np.zeros(len(values), dtype=bool)
    mask[first] = True
    return mask


def distinct_rows(embeddings: np.ndarray) -> np.ndarray:
    """The side's rows without repeats (first occurrences, in order); see first_occurrences."""
    rows = np.asarray(embeddings, dtype=np.float64)
    return rows[first_occurrences(rows)]


def categorical_pvalue(reference: Sequence, current: Sequence,
                       permutations: int = CATEGORICAL_PERMUTATIONS, seed: int = 0) -> float:
    """Permutation p-value of the chi-square statistic of homogeneity of two categorical samples.

    Relabelling the pooled rows draws the current side's category counts from a multivariate
    hypergeometric distribution, so every permutation costs one draw whatever the row count;
    exact at any size, unlike the asymptotic chi-square with the small expected counts of a
    30-row batch."""
    ref = [str(v) for v in reference if v is not None and v == v]
    cur = [str(v) for v in current if v is not None and v == v]
    if not ref or not cur:
        return 1.0
    categories = sorted(set(ref) | set(cur))
    ref_counts = np.array([ref.count(c) for c in categories], dtype=np.int64)
    cur_counts = np.array([cur.count(c) for c in categories], dtype=np.int64)
    pooled = ref_counts + cur_counts
    if len(categories) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    drawn = rng.multivariate_hypergeometric(pooled, len(cur), size=permutations)
    observed = _chi_square(cur_counts[None, :], pooled, len(ref), len(cur))[0]
    null = _chi_square(drawn, pooled, len(ref), len(cur))
    return float((1 + np.sum(null >= observed - 1e-9)) / (1 + permutations))


def _chi_square(current_counts: np.ndarray, pooled: np.ndarray, m: int, n: int) -> np.ndarray:
    """Pearson's statistic of the 2 x k table (reference, current) for each row of counts."""
    total = m + n
    expected_cur = pooled * (n / total)
    expected_ref = pooled * (m / total)
    reference_counts = pooled - current_counts
    return (((current_counts - expected_cur) ** 2 / expected_cur).sum(axis=1)
            + ((reference_counts - expected_ref) ** 2 / expected_ref).sum(axis=1))


def verdict(column_pvalues: Mapping[str, float | None], embedding_pvalues: Mapping[str, float],
            settings: DriftParams) -> dict:
    """Dataset drift from the p-values of one comparison, at a false-alarm rate <= drift.alpha.

    Why this rule: the embeddings are what the model sees, so they get a fixed half of alpha
    (alpha/4 per modality), whatever the number of columns, which keeps a permutation test of a
    few hundred permutations able to reject. The columns share the other half by Bonferroni
    (alpha / 2 / columns each): Evidently's report can then state each column's test with that
    one threshold, and its flags are exactly the verdict's. Dataset drift = an embedding drifted,
    or the share of drifted columns reaches `drift.drift_share`. Either needs at least one
    rejection, and by the union bound the chance of any rejection on undrifted sides is at most
    alpha/2 + alpha/2 (whatever the dependence between the tests). A column without a p-value
    (constant or empty on a side) counts as tested and not drifted.
    """
    unknown = set(embedding_pvalues) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown embedding modalities {sorted(unknown)}")
    per_column = column_level(settings, len(column_pvalues))
    per_modality = embedding_level(settings)
    drifted_columns = sorted(name for name, p in column_pvalues.items()
                             if p is not None and math.isfinite(p) and p <= per_column)
    share = len(drifted_columns) / len(column_pvalues) if column_pvalues else 0.0
    embedding_drifted = {m: bool(p <= per_modality) for m, p in embedding_pvalues.items()}
    columns_rule = bool(column_pvalues) and share >= settings.drift_share
    return {"dataset_drift": any(embedding_drifted.values()) or columns_rule,
            "drifted_columns": drifted_columns, "drift_share": share,
            "embedding_drifted": embedding_drifted,
            "levels": {"alpha": settings.alpha, "embedding": per_modality,
                       "column": per_column}}
