"""Disentanglement metrics: how well each code dimension captures one known factor of variation.

The standard supervised metrics, following the procedures and defaults of
google-research/disentanglement_lib (Locatello et al. 2019, "Challenging Common Assumptions in
the Unsupervised Learning of Disentangled Representations", ICML; its
`evaluation/metrics/{mig,modularity_explicitness,sap_score,dci,beta_vae,factor_vae}.py` and the
`unsupervised_study_v1/metric_configs/*.gin` files at commit 86a644d):

    mig                      Chen et al. 2018, mutual information gap
    modularity_explicitness  Ridgeway & Mozer 2018
    sap                      Kumar et al. 2018, separated attribute predictability
    dci                      Eastwood & Williams 2018, disentanglement / completeness /
                             informativeness
    beta_vae_score           Higgins et al. 2017
    factor_vae_score         Kim & Mnih 2018

Arrays are numpy, rows are examples: `codes_nd` [N, D] float (the posterior means), `factors_nf`
[N, F] integer (the index of each factor's value). The first four metrics take codes and factors
already sampled (`sample_codes`); the last two sample their own batches from a data set that
follows disentanglement_lib's ground-truth protocol (`GroundTruthData`). `compute_all` runs them
all; `factor_of_each_code` names the factor each code dimension captures, for labelling latent
traversals.

Defaults are disentanglement_lib's gin configs: MIG, modularity, SAP and DCI on num_train =
10,000 sampled points (and num_test = 5,000 for the held-out parts), codes discretised into
20 equal-width bins; BetaVAE and FactorVAE with batch_size = 64, num_train = 10,000,
num_eval = 5,000 and (FactorVAE) num_variance_estimate = 10,000. Each of those numbers is a
keyword here so that tests can run small.

Choices pinned down where disentanglement_lib's numbers depend on the library versions
(tested with scikit-learn 1.9.1, numpy 2.4.6, scipy 1.17.1):

- Mutual information (MIG, modularity, `factor_of_each_code`). disentanglement_lib issue #33
  reports that MIG and modularity of its published models could not be reproduced and suspects
  changes of scikit-learn's `mutual_info_score` between versions (0.20 in 2018, 0.24 in 2021);
  the thread has no resolution. What we compute, exactly: each code is cast to float64 (numpy
  computes float32 histogram edges for float32 input, which can move a point across an edge) and
  discretised on its own range as `np.digitize(z, edges[:-1])` with the 21 edges of
  `np.histogram(z, 20)`: bins 1..20, the maximum in bin 20 (disentanglement_lib's
  `_histogram_discretize`). Then I(z_d; v_f) is the plug-in mutual information in nats of the
  contingency table of (factor value, bin), and H(v_f) = I(v_f; v_f) the plug-in entropy, both
  by `sklearn.metrics.mutual_info_score`. In scikit-learn 1.9.1 that function is the plug-in
  estimator with per-cell terms below float eps set to 0 and the sum clipped at 0 (the clip
  since scikit-learn PR #16362, 2020), i.e. the plug-in value up to round-off;
  tests/test_disentanglement.py checks it against a numpy plug-in estimate, so it fails on a
  version where it is anything else.
- Classifiers are spelled out instead of taking the version's defaults: disentanglement_lib's
  `LogisticRegression()` (BetaVAE, explicitness) was liblinear one-vs-rest under scikit-learn
  < 0.22 (the 2018 study) and lbfgs multinomial since; we use
  `LogisticRegression(solver="lbfgs", C=1.0, max_iter=100)`, multinomial. SAP's
  `LinearSVC(C=0.01, class_weight="balanced")` defaulted to the dual solver before 1.5; we fix
  `dual=False` (what "auto" picks for one feature), which is deterministic.
  DCI's `GradientBoostingClassifier()` gets `random_state=0` (it only breaks ties between
  features) so that DCI is reproducible.
- FactorVAE prunes a code dimension when its standard deviation over the data is below 0.05
  (disentanglement_lib: `prune_dims.threshold = 0.05` compared with sqrt(variance), i.e.
  variance < 0.0025); with no dimension left both accuracies are 0. We report the number of
  active dimensions itself (disentanglement_lib's `num_active_dims` is the length of the mask).
- Explicitness: disentanglement_lib's one-hot targets break when a factor value is missing from
  a split; we score the classes the classifier knows that occur in the split (with at least one
  positive and one negative), macro-averaged; with every value present this is its number.
- Every factor must take at least two values (a data set's factor_sizes >= 2: disentanglement_lib
  drops constant factors such as dSprites' colour); the entropy normaliser, the classifiers and
  base-F logarithms are undefined otherwise.
- `compute_all` samples one training and one test set and shares them between MIG, modularity/
  explicitness, SAP and DCI (disentanglement_lib resamples per metric from the same seed); then
  BetaVAE and FactorVAE draw from the same generator in that order.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import scipy.stats
from sklearn import ensemble, linear_model, metrics, svm

NUM_BINS = 20
NUM_TRAIN = 10_000
NUM_TEST = 5_000
NUM_EVAL = 5_000
BATCH_SIZE = 64
NUM_VARIANCE_ESTIMATE = 10_000
PRUNE_STD_THRESHOLD = 0.05

Rng = np.random.Generator | np.random.RandomState


class GroundTruthData(Protocol):
    """disentanglement_lib's ground-truth protocol (its `factors_num_values` is `factor_sizes`)."""

    factor_sizes: tuple[int, ...]

    def sample_factors(self, num: int, rng: Rng) -> np.ndarray:
        """Integer factor values, [num, F]."""

    def sample_observations_from_factors(self, factors_nf: np.ndarray, rng: Rng) -> np.ndarray:
        """Observations (images) rendered from the factors, leading axis N."""


# --- input checks -----------------------------------------------------------------------------


def _check_codes_factors(codes, factors, *, split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Float64 codes [N, D] and int64 factors [N, F], or a ValueError that says what is wrong."""
    what = f"{split} " if split else ""
    codes_nd = np.asarray(codes)
    factors_nf = np.asarray(factors)
    if codes_nd.ndim != 2:
        raise ValueError(f"{what}codes must be [N, D], got shape {codes_nd.shape}")
    if factors_nf.ndim != 2:
        raise ValueError(f"{what}factors must be [N, F], got shape {factors_nf.shape}")
    if codes_nd.shape[0] != factors_nf.shape[0]:
        raise ValueError(
            f"{what}codes and factors have different numbers of examples: "
            f"{codes_nd.shape[0]} vs {factors_nf.shape[0]}"
        )
    if 0 in codes_nd.shape or 0 in factors_nf.shape:
        raise ValueError(
            f"{what}codes {codes_nd.shape} and factors {factors_nf.shape} must not be empty"
        )
    if codes_nd.dtype.kind not in "fiu":
        raise ValueError(f"{what}codes must be real numbers, got dtype {codes_nd.dtype}")
    if not np.issubdtype(factors_nf.dtype, np.integer):
        raise ValueError(
            f"{what}factors must be integer value indices, got dtype {factors_nf.dtype} "
            "(cast whole-numbered values with .astype(int))"
        )
    codes_nd = codes_nd.astype(np.float64)
    if not np.all(np.isfinite(codes_nd)):
        raise ValueError(f"{what}codes contain NaN or infinity")
    for f in range(factors_nf.shape[1]):
        if np.unique(factors_nf[:, f]).size < 2:
            raise ValueError(
                f"{what}factor {f} takes a single value in {factors_nf.shape[0]} examples; "
                "every factor needs at least two"
            )
    return codes_nd, factors_nf.astype(np.int64)


def _check_split(codes_train, factors_train, codes_test, factors_test):
    """Checks a train and a test split of the same codes and factors."""
    train = _check_codes_factors(codes_train, factors_train, split="train")
    test = _check_codes_factors(codes_test, factors_test, split="test")
    if train[0].shape[1] != test[0].shape[1] or train[1].shape[1] != test[1].shape[1]:
        raise ValueError(
            f"train and test splits differ in width: codes {train[0].shape[1]} vs "
            f"{test[0].shape[1]}, factors {train[1].shape[1]} vs {test[1].shape[1]}"
        )
    return train + test


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    _require(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}",
    )
    return int(value)


def _check_data(data) -> int:
    """Number of factors F of a ground-truth data set; every factor must take >= 2 values."""
    sizes = getattr(data, "factor_sizes", None)
    _require(sizes is not None, "data must have a factor_sizes attribute (tuple of ints)")
    sizes = tuple(int(s) for s in sizes)
    _require(len(sizes) >= 2, f"the metric needs at least two factors, got factor_sizes {sizes}")
    _require(min(sizes) >= 2, f"every factor needs at least two values, got factor_sizes {sizes}")
    return len(sizes)


def _check_rng(rng) -> None:
    if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        raise ValueError(f"rng must be a numpy Generator or RandomState, got {type(rng).__name__}")


def _randint(rng: Rng, high: int) -> int:
    """One integer uniform on [0, high) (disentanglement_lib: `random_state.randint(high)`)."""
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(high))
    return int(rng.integers(high))


def _sample_factors(data, num: int, rng: Rng) -> np.ndarray:
    """A writable int64 copy of `data.sample_factors(num, rng)`, checked to be [num, F]."""
    factors_nf = np.array(data.sample_factors(num, rng))
    num_factors = len(data.factor_sizes)
    _require(
        factors_nf.shape == (num, num_factors) and np.issubdtype(factors_nf.dtype, np.integer),
        f"data.sample_factors({num}, rng) must return integers of shape ({num}, {num_factors}), "
        f"got {factors_nf.dtype} {factors_nf.shape}",
    )
    return factors_nf.astype(np.int64)


def _represent(representation_fn: Callable, observations, num: int) -> np.ndarray:
    """Float64 codes [num, D] of `num` observations."""
    codes_nd = np.asarray(representation_fn(observations), dtype=np.float64)
    _require(
        codes_nd.ndim == 2 and codes_nd.shape[0] == num,
        f"representation_fn must map {num} observations to codes [{num}, D], "
        f"got shape {codes_nd.shape}",
    )
    return codes_nd


# --- sampling ---------------------------------------------------------------------------------


def sample_codes(
    data: GroundTruthData,
    representation_fn: Callable,
    num: int,
    rng: Rng,
    *,
    batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and factors of `num` observations drawn from the data set.

    In chunks of `batch_size`: factors_bf = data.sample_factors(b, rng), observations =
    data.sample_observations_from_factors(factors_bf, rng), codes_bd = representation_fn(...)
    (disentanglement_lib's `generate_batch_factor_code`, rows instead of columns).

    Returns:
      codes_nd: float64 [num, D]; factors_nf: int64 [num, F].
    """
    num = _check_positive_int("num", num)
    batch_size = _check_positive_int("batch_size", batch_size)
    _check_data(data)
    _check_rng(rng)
    codes, factors = [], []
    for start in range(0, num, batch_size):
        size = min(batch_size, num - start)
        factors_bf = _sample_factors(data, size, rng)
        observations = data.sample_observations_from_factors(factors_bf, rng)
        codes.append(_represent(representation_fn, observations, size))
        factors.append(factors_bf)
    return np.concatenate(codes), np.concatenate(factors)


# --- mutual information -----------------------------------------------------------------------


def _histogram_discretize(codes_nd: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin index 1..num_bins of each code on equal-width bins over that code's range, [N, D]."""
    bins_nd = np.empty(codes_nd.shape, dtype=np.int64)
    for d in range(codes_nd.shape[1]):
        edges = np.histogram_bin_edges(codes_nd[:, d], num_bins)
        bins_nd[:, d] = np.digitize(codes_nd[:, d], edges[:-1])
    return bins_nd


def _mutual_info(codes_nd: np.ndarray, factors_nf: np.ndarray, num_bins: int):
    """Discretised I(z_d; v_f) [D, F] and H(v_f) [F], in nats."""
    bins_nd = _histogram_discretize(codes_nd, num_bins)
    factor_columns = list(factors_nf.T)
    mi_df = np.array(
        [[metrics.mutual_info_score(v_n, z_n) for v_n in factor_columns] for z_n in bins_nd.T]
    )
    entropy_f = np.array([metrics.mutual_info_score(v_n, v_n) for v_n in factor_columns])
    return mi_df, entropy_f


def mig(codes, factors, *, num_bins: int = NUM_BINS) -> float:
    """Mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement in
    Variational Autoencoders", NeurIPS).

        MIG = 1/F sum_f [ I(z_(1); v_f) - I(z_(2); v_f) ] / H(v_f)

    where z_(1), z_(2) are the code dimensions with the largest and second-largest mutual
    information with factor v_f. Codes are discretised into `num_bins` equal-width bins per
    dimension; I and H are plug-in estimates in nats (see the module docstring for exactly how).
    In [0, 1]: 1 when each factor is captured fully by one code dimension and by no other.

    Args:
      codes: float [N, D], D >= 2; factors: integer [N, F].
      num_bins: bins per code dimension (disentanglement_lib: 20).
    """
    codes_nd, factors_nf = _check_codes_factors(codes, factors)
    num_bins = _check_positive_int("num_bins", num_bins)
    _require(codes_nd.shape[1] >= 2,
             f"MIG needs at least two code dimensions, got {codes_nd.shape[1]}")
    mi_df, entropy_f = _mutual_info(codes_nd, factors_nf, num_bins)
    sorted_df = np.sort(mi_df, axis=0)
    return float(np.mean((sorted_df[-1] - sorted_df[-2]) / entropy_f))


def factor_of_each_code(codes, factors, *,
                        num_bins: int = NUM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The factor each code dimension captures best, by normalised mutual information.

        factor_d = argmax_f I(z_d; v_f) / H(v_f),   score_d = max_f I(z_d; v_f) / H(v_f)

    with MIG's discretised plug-in estimates. score_d in [0, 1] is the fraction of that factor's
    entropy the dimension explains; a dimension with score near 0 captures nothing (e.g. a
    collapsed one), whatever its factor_d says. For labelling latent traversals.

    Args:
      codes: float [N, D]; factors: integer [N, F].

    Returns:
      factor_d: int64 [D]; score_d: float64 [D].
    """
    codes_nd, factors_nf = _check_codes_factors(codes, factors)
    num_bins = _check_positive_int("num_bins", num_bins)
    mi_df, entropy_f = _mutual_info(codes_nd, factors_nf, num_bins)
    normalized_df = mi_df / entropy_f
    return np.argmax(normalized_df, axis=1), np.max(normalized_df, axis=1)


# --- modularity and explicitness --------------------------------------------------------------


def _roc_auc_macro(y_n: np.ndarray, proba_nk: np.ndarray, classes_k: np.ndarray) -> float:
    """One-vs-rest ROC AUC of each known class occurring in y (not all of y), averaged."""
    onehot_nk = y_n[:, None] == classes_k[None, :]
    scorable_k = onehot_nk.any(axis=0) & ~onehot_nk.all(axis=0)
    _require(scorable_k.any(), "no factor value of this split was seen in training")
    return float(
        metrics.roc_auc_score(onehot_nk[:, scorable_k], proba_nk[:, scorable_k], average="macro")
    )


def modularity_explicitness(codes_train, factors_train, codes_test, factors_test, *,
                            num_bins: int = NUM_BINS) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018, "Learning Deep Disentangled
    Embeddings With the F-Statistic Loss", Sec. 3).

    Modularity, from the discretised mutual information m_df = I(z_d; v_f) of the training split
    (as in `mig`): with theta_d = max_f m_df and t_d the vector holding theta_d at the argmax and
    0 elsewhere,

        delta_d = sum_f (m_df - t_df)^2 / (theta_d^2 (F - 1)),
        modularity = 1/D sum_d (1 - delta_d)

    (a dimension with theta_d = 0 scores 0). 1 when each dimension informs about one factor only.

    Explicitness: codes standardised with the training mean and standard deviation (a constant
    dimension is left unscaled), one multinomial logistic regression per factor on all the codes;
    its one-vs-rest ROC AUC per factor value, averaged over values and then over factors, on
    each split. 1 when every factor value is linearly separable from the others.

    Args:
      codes_train, codes_test: float [N, D] and [M, D]; factors_train, factors_test: integer
        [N, F] and [M, F], F >= 2.

    Returns:
      {"modularity", "explicitness_train", "explicitness_test"}: floats.
    """
    codes_train, factors_train, codes_test, factors_test = _check_split(
        codes_train, factors_train, codes_test, factors_test
    )
    num_bins = _check_positive_int("num_bins", num_bins)
    num_factors = factors_train.shape[1]
    _require(num_factors >= 2, "modularity needs at least two factors")
    mi_df, _ = _mutual_info(codes_train, factors_train, num_bins)
    squared_df = np.square(mi_df)
    max_d = squared_df.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta_d = (squared_df.sum(axis=1) - max_d) / (max_d * (num_factors - 1))
    modularity = float(np.mean(np.where(max_d > 0, 1.0 - delta_d, 0.0)))

    mean_d = codes_train.mean(axis=0)
    std_d = codes_train.std(axis=0)
    std_d = np.where(std_d > 0, std_d, 1.0)
    x_train = (codes_train - mean_d) / std_d
    x_test = (codes_test - mean_d) / std_d
    auc_train, auc_test = [], []
    for v_train, v_test in zip(factors_train.T, factors_test.T):
        clf = linear_model.LogisticRegression(solver="lbfgs", C=1.0, max_iter=100)
        clf.fit(x_train, v_train)
        auc_train.append(_roc_auc_macro(v_train, clf.predict_proba(x_train), clf.classes_))
        auc_test.append(_roc_auc_macro(v_test, clf.predict_proba(x_test), clf.classes_))
    return {
        "modularity": modularity,
        "explicitness_train": float(np.mean(auc_train)),
        "explicitness_test": float(np.mean(auc_test)),
    }


# --- SAP --------------------------------------------------------------------------------------


def sap(codes_train, factors_train, codes_test, factors_test) -> float:
    """Separated attribute predictability (Kumar et al. 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations", Sec. 3; discrete factors).

    S_df = test accuracy of a linear SVM predicting factor v_f from code dimension z_d alone
    (LinearSVC(C=0.01, class_weight="balanced"), disentanglement_lib's
    `compute_score_matrix(continuous_factors=False)`), and

        SAP = 1/F sum_f [ S_(1)f - S_(2)f ],

    the gap between the best and second-best single dimension for each factor.

    Args:
      codes_train, codes_test: float [N, D] and [M, D], D >= 2; factors_train, factors_test:
        integer [N, F] and [M, F].
    """
    codes_train, factors_train, codes_test, factors_test = _check_split(
        codes_train, factors_train, codes_test, factors_test
    )
    num_codes, num_factors = codes_train.shape[1], factors_train.shape[1]
    _require(num_codes >= 2, f"SAP needs at least two code dimensions, got {num_codes}")
    score_df = np.zeros((num_codes, num_factors))
    for d in range(num_codes):
        for f in range(num_factors):
            clf = svm.LinearSVC(C=0.01, class_weight="balanced", dual=False)
            clf.fit(codes_train[:, d : d + 1], factors_train[:, f])
            score_df[d, f] = np.mean(clf.predict(codes_test[:, d : d + 1]) == factors_test[:, f])
    sorted_df = np.sort(score_df, axis=0)
    return float(np.mean(sorted_df[-1] - sorted_df[-2]))


# --- DCI --------------------------------------------------------------------------------------


def dci(codes_train, factors_train, codes_test, factors_test, *,
        random_state: int | None = 0) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018, "A Framework
    for the Quantitative Evaluation of Disentangled Representations", Sec. 2-3).

    One GradientBoostingClassifier (scikit-learn defaults) per factor predicts v_f from all the
    codes; R_df = |feature_importances_| of dimension d for factor f. With
    P_df = R_df / sum_f' R_df' and P~_df = R_df / sum_d' R_d'f (1e-11 added to R first, as in
    disentanglement_lib),

        disentanglement = sum_d rho_d (1 - H_F(P_d.)),   rho_d = sum_f R_df / sum R
        completeness    = sum_f rho_f (1 - H_D(P~_.f)),  rho_f = sum_d R_df / sum R

    where H_K is the entropy in base K (so each term is in [0, 1]); uniform weights rho if R is
    all zero. Informativeness is the classifiers' accuracy, averaged over factors (the paper
    uses a prediction error; disentanglement_lib reports accuracy), on each split.

    Args:
      codes_train, codes_test: float [N, D] and [M, D], D >= 2; factors_train, factors_test:
        integer [N, F] and [M, F], F >= 2.
      random_state: the boosted trees' seed; they only use it to break ties between features.

    Returns:
      {"disentanglement", "completeness", "informativeness_train", "informativeness_test"}.
    """
    codes_train, factors_train, codes_test, factors_test = _check_split(
        codes_train, factors_train, codes_test, factors_test
    )
    num_codes, num_factors = codes_train.shape[1], factors_train.shape[1]
    _require(num_codes >= 2 and num_factors >= 2,
             f"DCI needs at least two code dimensions and two factors, got D = {num_codes}, "
             f"F = {num_factors}")
    importance_df = np.zeros((num_codes, num_factors))
    accuracy_train, accuracy_test = [], []
    for f in range(num_factors):
        model = ensemble.GradientBoostingClassifier(random_state=random_state)
        model.fit(codes_train, factors_train[:, f])
        importance_df[:, f] = np.abs(model.feature_importances_)
        accuracy_train.append(np.mean(model.predict(codes_train) == factors_train[:, f]))
        accuracy_test.append(np.mean(model.predict(codes_test) == factors_test[:, f]))
    per_code_d = 1.0 - scipy.stats.entropy(importance_df.T + 1e-11, base=num_factors)
    per_factor_f = 1.0 - scipy.stats.entropy(importance_df + 1e-11, base=num_codes)
    weights_df = importance_df if importance_df.sum() > 0 else np.ones_like(importance_df)
    code_weight_d = weights_df.sum(axis=1) / weights_df.sum()
    factor_weight_f = weights_df.sum(axis=0) / weights_df.sum()
    return {
        "disentanglement": float(np.sum(per_code_d * code_weight_d)),
        "completeness": float(np.sum(per_factor_f * factor_weight_f)),
        "informativeness_train": float(np.mean(accuracy_train)),
        "informativeness_test": float(np.mean(accuracy_test)),
    }


# --- BetaVAE ----------------------------------------------------------------------------------


def _beta_vae_points(data, representation_fn, rng, *, batch_size: int, num_points: int):
    """BetaVAE training points: features [P, D] float64 and fixed-factor labels [P] int64."""
    num_factors = len(data.factor_sizes)
    labels_p = np.zeros(num_points, dtype=np.int64)
    features = []
    for p in range(num_points):
        labels_p[p] = _randint(rng, num_factors)
        factors1_bf = _sample_factors(data, batch_size, rng)
        factors2_bf = _sample_factors(data, batch_size, rng)
        factors2_bf[:, labels_p[p]] = factors1_bf[:, labels_p[p]]
        observations1 = data.sample_observations_from_factors(factors1_bf, rng)
        observations2 = data.sample_observations_from_factors(factors2_bf, rng)
        codes1_bd = _represent(representation_fn, observations1, batch_size)
        codes2_bd = _represent(representation_fn, observations2, batch_size)
        features.append(np.mean(np.abs(codes1_bd - codes2_bd), axis=0))
    return np.stack(features), labels_p


def beta_vae_score(
    data: GroundTruthData,
    representation_fn: Callable,
    rng: Rng,
    *,
    batch_size: int = BATCH_SIZE,
    num_train: int = NUM_TRAIN,
    num_eval: int = NUM_EVAL,
) -> dict:
    """The BetaVAE metric (Higgins et al. 2017, "beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework", ICLR; disentanglement_lib's
    `compute_beta_vae_sklearn`).

    One point: draw a factor index k ~ U{0..F-1} and two batches of `batch_size` factor vectors
    v^(1), v^(2) that agree in factor k; with codes z = representation_fn(observations),

        feature = 1/B sum_b |z(v^(1)_b) - z(v^(2)_b)|   [D],   label = k.

    A multinomial logistic regression (lbfgs, C = 1) learns label from feature on `num_train`
    points; the score is its accuracy on those and on `num_eval` fresh points. Chance is about
    1/F; a code with one dimension per factor scores 1.

    rng draws, per point, in disentanglement_lib's order: k, v^(1), v^(2), the two observation
    batches. representation_fn is called on batches of `batch_size`.

    Returns:
      {"train_accuracy", "eval_accuracy"}: floats.
    """
    _check_data(data)
    _check_rng(rng)
    batch_size = _check_positive_int("batch_size", batch_size)
    num_train = _check_positive_int("num_train", num_train)
    num_eval = _check_positive_int("num_eval", num_eval)
    train_x, train_y = _beta_vae_points(data, representation_fn, rng, batch_size=batch_size,
                                        num_points=num_train)
    _require(np.unique(train_y).size >= 2,
             f"all {num_train} BetaVAE training points fixed the same factor; use more points")
    model = linear_model.LogisticRegression(solver="lbfgs", C=1.0, max_iter=100)
    model.fit(train_x, train_y)
    eval_x, eval_y = _beta_vae_points(data, representation_fn, rng, batch_size=batch_size,
                                      num_points=num_eval)
    return {
        "train_accuracy": float(np.mean(model.predict(train_x) == train_y)),
        "eval_accuracy": float(np.mean(model.predict(eval_x) == eval_y)),
    }


# --- FactorVAE --------------------------------------------------------------------------------


def _factor_vae_votes(data, representation_fn, rng, *, batch_size: int, num_points: int,
                      global_variance_d: np.ndarray, active_a: np.ndarray) -> np.ndarray:
    """Votes [F, D]: how often fixing factor k made dimension d the least variable."""
    num_factors = len(data.factor_sizes)
    votes_fd = np.zeros((num_factors, global_variance_d.shape[0]), dtype=np.int64)
    for _ in range(num_points):
        k = _randint(rng, num_factors)
        factors_bf = _sample_factors(data, batch_size, rng)
        factors_bf[:, k] = factors_bf[0, k]
        observations = data.sample_observations_from_factors(factors_bf, rng)
        codes_bd = _represent(representation_fn, observations, batch_size)
        local_variance_d = np.var(codes_bd, axis=0, ddof=1)
        ratio_a = local_variance_d[active_a] / global_variance_d[active_a]
        votes_fd[k, active_a[np.argmin(ratio_a)]] += 1
    return votes_fd


def factor_vae_score(
    data: GroundTruthData,
    representation_fn: Callable,
    rng: Rng,
    *,
    batch_size: int = BATCH_SIZE,
    num_train: int = NUM_TRAIN,
    num_eval: int = NUM_EVAL,
    num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
    prune_std_threshold: float = PRUNE_STD_THRESHOLD,
) -> dict:
    """The FactorVAE metric (Kim & Mnih 2018, "Disentangling by Factorising", ICML;
    disentanglement_lib's `compute_factor_vae`).

    sigma_d^2 = variance (ddof = 1) of dimension d over `num_variance_estimate` codes sampled as
    in `sample_codes`; dimensions with sigma_d < `prune_std_threshold` (collapsed to the prior)
    are dropped. One point: draw k ~ U{0..F-1} and a batch of `batch_size` factor vectors that
    all share the first one's factor k; with s_d^2 the batch variance (ddof = 1) of dimension d,

        vote (label k) for dimension d* = argmin_{d active} s_d^2 / sigma_d^2,

    the least variable dimension after dividing each by its global standard deviation. The
    classifier is the majority vote: each dimension d predicts the factor c_d = argmax_k
    votes_kd from `num_train` points, and

        accuracy = sum_d votes_{c_d, d} / sum votes

    on those points and on `num_eval` fresh ones. Chance is about 1/F; a code with one dimension
    per factor scores 1. With every dimension pruned both accuracies are 0.

    Returns:
      {"train_accuracy", "eval_accuracy"}: floats; "num_active_dims": int.
    """
    _check_data(data)
    _check_rng(rng)
    batch_size = _check_positive_int("batch_size", batch_size, minimum=2)
    num_train = _check_positive_int("num_train", num_train)
    num_eval = _check_positive_int("num_eval", num_eval)
    num_variance_estimate = _check_positive_int("num_variance_estimate", num_variance_estimate,
                                                minimum=2)
    _require(prune_std_threshold > 0, f"prune_std_threshold must be > 0, got {prune_std_threshold}")
    codes_nd, _ = sample_codes(data, representation_fn, num_variance_estimate, rng,
                               batch_size=batch_size)
    global_variance_d = np.var(codes_nd, axis=0, ddof=1)
    active_a = np.flatnonzero(np.sqrt(global_variance_d) >= prune_std_threshold)
    if active_a.size == 0:
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    votes = dict(batch_size=batch_size, global_variance_d=global_variance_d, active_a=active_a)
    train_votes_fd = _factor_vae_votes(data, representation_fn, rng, num_points=num_train, **votes)
    classifier_d = np.argmax(train_votes_fd, axis=0)
    eval_votes_fd = _factor_vae_votes(data, representation_fn, rng, num_points=num_eval, **votes)
    dims_d = np.arange(global_variance_d.shape[0])
    return {
        "train_accuracy": float(train_votes_fd[classifier_d, dims_d].sum() / train_votes_fd.sum()),
        "eval_accuracy": float(eval_votes_fd[classifier_d, dims_d].sum() / eval_votes_fd.sum()),
        "num_active_dims": int(active_a.size),
    }


# --- all of them ------------------------------------------------------------------------------


def compute_all(
    data: GroundTruthData,
    representation_fn: Callable,
    rng: Rng,
    *,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    num_eval: int = NUM_EVAL,
    batch_size: int = BATCH_SIZE,
    num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
    num_bins: int = NUM_BINS,
) -> dict:
    """Every metric of this module with disentanglement_lib's defaults, as one flat dict of floats.

    Samples `num_train` and `num_test` codes once (`sample_codes`) for MIG, modularity/
    explicitness, SAP and DCI, then runs BetaVAE (num_train, num_eval points) and FactorVAE
    (num_variance_estimate, num_train, num_eval) from the same `rng`, in that order. Keys:
    mig, modularity, explicitness_train, explicitness_test, sap, dci_disentanglement,
    dci_completeness, dci_informativeness_train, dci_informativeness_test,
    beta_vae_train_accuracy, beta_vae_eval_accuracy, factor_vae_train_accuracy,
    factor_vae_eval_accuracy, factor_vae_num_active_dims.

    With the defaults this encodes about 2.9 million observations (BetaVAE 1.9 million), and
    DCI fits 100 boosting stages per factor value; scale the counts down for a quick look.
    """
    codes_train, factors_train = sample_codes(data, representation_fn, num_train, rng,
                                              batch_size=batch_size)
    codes_test, factors_test = sample_codes(data, representation_fn, num_test, rng,
                                            batch_size=batch_size)
    split = (codes_train, factors_train, codes_test, factors_test)
    scores = {"mig": mig(codes_train, factors_train, num_bins=num_bins)}
    scores.update(modularity_explicitness(*split, num_bins=num_bins))
    scores["sap"] = sap(*split)
    scores.update({f"dci_{k}": v for k, v in dci(*split).items()})
    beta = beta_vae_score(data, representation_fn, rng, batch_size=batch_size,
                          num_train=num_train, num_eval=num_eval)
    scores.update({f"beta_vae_{k}": v for k, v in beta.items()})
    factor = factor_vae_score(data, representation_fn, rng, batch_size=batch_size,
                              num_train=num_train, num_eval=num_eval,
                              num_variance_estimate=num_variance_estimate)
    scores.update({f"factor_vae_{k}": float(v) for k, v in factor.items()})
    return scores
