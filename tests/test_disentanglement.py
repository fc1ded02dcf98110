"""Tests of vae_jax.disentanglement against references written here from the papers and
disentanglement_lib's procedures (float64 numpy, scikit-learn estimators called directly), and
on codes whose answer is known: a perfect code (one dimension per factor), pure noise, a code
blind to its input, and a rotation of the perfect code.

The references take different routes where they can: bins by a floor formula instead of
np.histogram/np.digitize, mutual information from a numpy contingency table instead of
scikit-learn, modularity from Ridgeway & Mozer's template form, ROC AUC from the Mann-Whitney
rank statistic, and entropies written out. Where the procedure is random (BetaVAE, FactorVAE)
the reference replays it from the same seed. The data set is a tiny factor grid whose
observation is the factor vector itself, so nothing here depends on vae_jax.ground_truth.
"""

import numpy as np
import pytest
from scipy import stats
from sklearn import ensemble, linear_model, svm

from vae_jax import disentanglement

SIZES = (3, 4, 5)
# An entangled code: each dimension mixes factors, so scores are far from 0 and 1.
MIX_FD = np.array([[1.0, 0.5, 0.0, 0.2], [0.3, 1.0, 0.4, 0.0], [0.0, 0.6, 1.0, 0.3]])


def _integers(rng, high, size):
    if isinstance(rng, np.random.RandomState):
        return rng.randint(high, size=size)
    return rng.integers(high, size=size)


class FactorGrid:
    """Ground-truth data whose observation is its factor vector as float64 (x = v)."""

    def __init__(self, factor_sizes=SIZES):
        self.factor_sizes = tuple(factor_sizes)

    def sample_factors(self, num, rng):
        return np.stack([_integers(rng, k, num) for k in self.factor_sizes], axis=1)

    def sample_observations_from_factors(self, factors, rng):
        del rng
        return np.asarray(factors, dtype=np.float64)


class NoiseCode:
    """A representation blind to its input: standard normal codes from its own generator."""

    def __init__(self, dim, seed):
        self.dim = dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, x):
        return self.rng.normal(size=(len(x), self.dim))


def perfect_code(x):
    """One dimension per factor, through a monotone map."""
    return np.log1p(x)


def entangled_code(x):
    """Four mixed dimensions and one collapsed (std < 0.05, pruned by FactorVAE)."""
    return np.concatenate([x @ MIX_FD, 0.001 * x[:, :1]], axis=1)


def constant_code(x):
    return np.zeros((len(x), 3))


def _factors(num, seed, sizes=SIZES):
    return FactorGrid(sizes).sample_factors(num, np.random.default_rng(seed))


def _noisy(factors, seed, scale=0.1):
    return factors + scale * np.random.default_rng(seed).normal(size=factors.shape)


def _rotate(codes_n2):
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    return codes_n2 @ np.array([[c, -s], [s, c]])


@pytest.fixture(scope="module")
def entangled_split():
    """Train/test codes [N, 4] mixing three factors, plus a dimension of pure noise."""
    factors_train, factors_test = _factors(600, 0), _factors(300, 1)
    codes_train = np.concatenate([_noisy(factors_train, 2) @ MIX_FD[:, :3],
                                  np.random.default_rng(3).normal(size=(600, 1))], axis=1)
    codes_test = np.concatenate([_noisy(factors_test, 4) @ MIX_FD[:, :3],
                                 np.random.default_rng(5).normal(size=(300, 1))], axis=1)
    return codes_train, factors_train, codes_test, factors_test


@pytest.fixture(scope="module")
def rotation_splits():
    """A perfect code of two factors and its 45-degree rotation, train and test."""
    sizes = (4, 4)
    factors_train, factors_test = _factors(800, 10, sizes), _factors(400, 11, sizes)
    perfect = (_noisy(factors_train, 12), factors_train, _noisy(factors_test, 13), factors_test)
    rotated = (_rotate(perfect[0]), factors_train, _rotate(perfect[2]), factors_test)
    return perfect, rotated


# --- references ------------------------------------------------------------------------------


def _ref_bins(x_n, num_bins=20):
    """Equal-width bins over the range of x, 0..num_bins-1, the maximum in the last."""
    lo, hi = x_n.min(), x_n.max()
    return np.minimum(np.floor((x_n - lo) / (hi - lo) * num_bins), num_bins - 1).astype(int)


def _ref_mutual_info(a_n, b_n):
    """Plug-in I(a; b) in nats from the joint frequency table."""
    _, a = np.unique(a_n, return_inverse=True)
    _, b = np.unique(b_n, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))


def _ref_mi_matrix(codes_nd, factors_nf):
    """I(bin(z_d); v_f) [D, F] and H(v_f) [F] in nats."""
    mi_df = np.array([[_ref_mutual_info(factors_nf[:, f], _ref_bins(codes_nd[:, d]))
                       for f in range(factors_nf.shape[1])] for d in range(codes_nd.shape[1])])
    entropy_f = np.array([stats.entropy(np.bincount(factors_nf[:, f]))
                          for f in range(factors_nf.shape[1])])
    return mi_df, entropy_f


def _ref_mig(codes_nd, factors_nf):
    mi_df, entropy_f = _ref_mi_matrix(codes_nd, factors_nf)
    gaps = []
    for f in range(factors_nf.shape[1]):
        first, second = np.argsort(-mi_df[:, f])[:2]
        gaps.append((mi_df[first, f] - mi_df[second, f]) / entropy_f[f])
    return np.mean(gaps)


def _ref_modularity(codes_nd, factors_nf):
    """Ridgeway & Mozer: deviation from the template that keeps only each code's top factor."""
    mi_df, _ = _ref_mi_matrix(codes_nd, factors_nf)
    scores = []
    for m_f in mi_df:
        theta = m_f.max()
        template_f = np.where(np.arange(m_f.size) == np.argmax(m_f), theta, 0.0)
        delta = np.sum((m_f - template_f) ** 2) / (theta**2 * (m_f.size - 1))
        scores.append(1.0 - delta if theta > 0 else 0.0)
    return np.mean(scores)


def _ref_auc(score_n, positive_n):
    """ROC AUC as the Mann-Whitney statistic: P(score+ > score-) + P(tie) / 2."""
    ranks = stats.rankdata(score_n)
    n_pos, n_neg = positive_n.sum(), (~positive_n).sum()
    return (ranks[positive_n].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _ref_explicitness(codes_train, factors_train, codes_test, factors_test):
    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    x_train, x_test = (codes_train - mean) / std, (codes_test - mean) / std
    train, test = [], []
    for f in range(factors_train.shape[1]):
        clf = linear_model.LogisticRegression(solver="lbfgs", C=1.0, max_iter=100)
        clf.fit(x_train, factors_train[:, f])
        splits = ((x_train, factors_train[:, f], train), (x_test, factors_test[:, f], test))
        for x, y, out in splits:
            proba = clf.predict_proba(x)
            out.append(np.mean([_ref_auc(proba[:, i], y == c) for i, c in enumerate(clf.classes_)]))
    return np.mean(train), np.mean(test)


def _ref_sap(codes_train, factors_train, codes_test, factors_test):
    gaps = []
    for f in range(factors_train.shape[1]):
        accuracy_d = []
        for d in range(codes_train.shape[1]):
            clf = svm.LinearSVC(C=0.01, class_weight="balanced", dual=False)
            clf.fit(codes_train[:, [d]], factors_train[:, f])
            accuracy_d.append(np.mean(clf.predict(codes_test[:, [d]]) == factors_test[:, f]))
        best, second = sorted(accuracy_d, reverse=True)[:2]
        gaps.append(best - second)
    return np.mean(gaps)


def _ref_normalised_entropy(p_k):
    p_k = p_k / p_k.sum()
    return -np.sum(p_k * np.log(p_k)) / np.log(p_k.size)


def _ref_dci(codes_train, factors_train, codes_test, factors_test):
    num_codes, num_factors = codes_train.shape[1], factors_train.shape[1]
    r_df = np.zeros((num_codes, num_factors))
    acc_train, acc_test = [], []
    for f in range(num_factors):
        gbt = ensemble.GradientBoostingClassifier(random_state=0)
        gbt.fit(codes_train, factors_train[:, f])
        r_df[:, f] = gbt.feature_importances_
        acc_train.append(np.mean(gbt.predict(codes_train) == factors_train[:, f]))
        acc_test.append(np.mean(gbt.predict(codes_test) == factors_test[:, f]))
    r_eps = r_df + 1e-11
    disentanglement = sum(r_df[d].sum() / r_df.sum() * (1 - _ref_normalised_entropy(r_eps[d]))
                          for d in range(num_codes))
    completeness = sum(r_df[:, f].sum() / r_df.sum() * (1 - _ref_normalised_entropy(r_eps[:, f]))
                       for f in range(num_factors))
    return disentanglement, completeness, np.mean(acc_train), np.mean(acc_test)


def _ref_beta_vae(data, representation_fn, rng, batch_size, num_train, num_eval):
    num_factors = len(data.factor_sizes)

    def points(num):
        x, y = [], []
        for _ in range(num):
            k = _integers(rng, num_factors, None)
            v1, v2 = data.sample_factors(batch_size, rng), data.sample_factors(batch_size, rng)
            v2[:, k] = v1[:, k]
            z1 = representation_fn(data.sample_observations_from_factors(v1, rng))
            z2 = representation_fn(data.sample_observations_from_factors(v2, rng))
            x.append(np.abs(z1 - z2).mean(axis=0))
            y.append(k)
        return np.array(x), np.array(y)

    x_train, y_train = points(num_train)
    clf = linear_model.LogisticRegression(solver="lbfgs", C=1.0, max_iter=100)
    clf.fit(x_train, y_train)
    x_eval, y_eval = points(num_eval)
    return clf.score(x_train, y_train), clf.score(x_eval, y_eval)


def _ref_factor_vae(data, representation_fn, rng, batch_size, num_train, num_eval, num_var):
    num_factors = len(data.factor_sizes)
    codes = []
    for start in range(0, num_var, batch_size):
        v = data.sample_factors(min(batch_size, num_var - start), rng)
        codes.append(representation_fn(data.sample_observations_from_factors(v, rng)))
    global_std_d = np.std(np.concatenate(codes), axis=0, ddof=1)
    collapsed_d = global_std_d < 0.05

    def votes(num):
        votes_fd = np.zeros((num_factors, global_std_d.size))
        for _ in range(num):
            k = _integers(rng, num_factors, None)
            v = data.sample_factors(batch_size, rng)
            v[:, k] = v[0, k]
            z = representation_fn(data.sample_observations_from_factors(v, rng)) / global_std_d
            local_std_d = np.where(collapsed_d, np.inf, np.std(z, axis=0, ddof=1))
            votes_fd[k, np.argmin(local_std_d)] += 1
        return votes_fd

    train_fd = votes(num_train)
    majority_d = np.argmax(train_fd, axis=0)
    eval_fd = votes(num_eval)
    eval_correct = sum(eval_fd[majority_d[d], d] for d in range(global_std_d.size))
    return (train_fd.max(axis=0).sum() / train_fd.sum(), eval_correct / eval_fd.sum(),
            int((~collapsed_d).sum()))


# --- agreement with the references -----------------------------------------------------------


def test_mig_equals_plug_in_reference(entangled_split):
    codes, factors = entangled_split[:2]
    value = disentanglement.mig(codes, factors)
    np.testing.assert_allclose(value, _ref_mig(codes, factors), rtol=1e-10, atol=1e-12)
    assert 0.05 < value < 0.95


def test_factor_of_each_code_equals_reference(entangled_split):
    codes, factors = entangled_split[:2]
    mi_df, entropy_f = _ref_mi_matrix(codes, factors)
    factor_d, score_d = disentanglement.factor_of_each_code(codes, factors)
    np.testing.assert_array_equal(factor_d, np.argmax(mi_df / entropy_f, axis=1))
    np.testing.assert_allclose(score_d, np.max(mi_df / entropy_f, axis=1), rtol=1e-10, atol=1e-12)


def test_modularity_explicitness_equal_reference(entangled_split):
    result = disentanglement.modularity_explicitness(*entangled_split)
    explicitness_train, explicitness_test = _ref_explicitness(*entangled_split)
    np.testing.assert_allclose(result["modularity"], _ref_modularity(*entangled_split[:2]),
                               rtol=1e-10)
    np.testing.assert_allclose(result["explicitness_train"], explicitness_train, rtol=1e-10)
    np.testing.assert_allclose(result["explicitness_test"], explicitness_test, rtol=1e-10)


def test_explicitness_ignores_a_factor_value_missing_from_test(entangled_split):
    codes_train, factors_train, codes_test, factors_test = entangled_split
    keep = factors_test[:, 0] != 2
    result = disentanglement.modularity_explicitness(codes_train, factors_train,
                                                     codes_test[keep], factors_test[keep])
    assert 0.5 < result["explicitness_test"] <= 1.0


def test_sap_equals_reference(entangled_split):
    value = disentanglement.sap(*entangled_split)
    np.testing.assert_allclose(value, _ref_sap(*entangled_split), rtol=1e-12)
    assert value > 0.05


def test_dci_equals_reference(entangled_split):
    result = disentanglement.dci(*entangled_split)
    expected = _ref_dci(*entangled_split)
    keys = ("disentanglement", "completeness", "informativeness_train", "informativeness_test")
    np.testing.assert_allclose([result[k] for k in keys], expected, rtol=1e-10)


# Fresh representations per call, so that the module and the reference see the same noise.
REPLAYED_CODES = {"entangled": lambda: entangled_code, "noise": lambda: NoiseCode(4, seed=9)}
RNGS = {"generator": np.random.default_rng, "random_state": np.random.RandomState}


@pytest.mark.parametrize("rng_kind", sorted(RNGS))
@pytest.mark.parametrize("code", sorted(REPLAYED_CODES))
def test_beta_vae_equals_reference(code, rng_kind):
    data, make_code, make_rng = FactorGrid(), REPLAYED_CODES[code], RNGS[rng_kind]
    result = disentanglement.beta_vae_score(data, make_code(), make_rng(7), batch_size=16,
                                            num_train=200, num_eval=100)
    expected = _ref_beta_vae(data, make_code(), make_rng(7), 16, 200, 100)
    np.testing.assert_allclose([result["train_accuracy"], result["eval_accuracy"]], expected,
                               rtol=1e-12)


@pytest.mark.parametrize("rng_kind", sorted(RNGS))
@pytest.mark.parametrize("code", sorted(REPLAYED_CODES))
def test_factor_vae_equals_reference(code, rng_kind):
    data, make_code, make_rng = FactorGrid(), REPLAYED_CODES[code], RNGS[rng_kind]
    result = disentanglement.factor_vae_score(data, make_code(), make_rng(8), batch_size=16,
                                              num_train=200, num_eval=100,
                                              num_variance_estimate=300)
    train, evaluation, num_active = _ref_factor_vae(data, make_code(), make_rng(8), 16, 200,
                                                    100, 300)
    np.testing.assert_allclose([result["train_accuracy"], result["eval_accuracy"]],
                               [train, evaluation], rtol=1e-12)
    assert result["num_active_dims"] == num_active == 4


# --- known answers ---------------------------------------------------------------------------


def test_perfect_code_scores_near_one(rotation_splits):
    perfect, _ = rotation_splits
    assert disentanglement.mig(*perfect[:2]) > 0.95
    result = disentanglement.dci(*perfect)
    assert result["disentanglement"] > 0.95
    assert result["completeness"] > 0.95
    assert result["informativeness_test"] > 0.95
    assert disentanglement.modularity_explicitness(*perfect)["modularity"] > 0.95


def test_rotation_lowers_mig_sap_and_dci_disentanglement_but_keeps_information(rotation_splits):
    perfect, rotated = rotation_splits
    assert disentanglement.mig(*rotated[:2]) < disentanglement.mig(*perfect[:2]) - 0.5
    assert disentanglement.sap(*rotated) < disentanglement.sap(*perfect) - 0.3
    dci_perfect, dci_rotated = disentanglement.dci(*perfect), disentanglement.dci(*rotated)
    assert dci_rotated["disentanglement"] < dci_perfect["disentanglement"] - 0.3
    assert dci_rotated["informativeness_test"] > 0.9
    assert disentanglement.modularity_explicitness(*rotated)["explicitness_test"] > 0.95


def test_noise_code_scores_at_chance():
    factors_train, factors_test = _factors(2000, 20), _factors(300, 21)
    noise_train = np.random.default_rng(22).normal(size=(2000, 4))
    noise_test = np.random.default_rng(23).normal(size=(300, 4))
    assert disentanglement.mig(noise_train, factors_train) < 0.03
    result = disentanglement.dci(noise_train[:600], factors_train[:600], noise_test, factors_test)
    chance = np.mean([1 / k for k in SIZES])
    assert abs(result["informativeness_test"] - chance) < 0.08


def test_perfect_code_scores_one_on_beta_vae_and_factor_vae():
    data, rng = FactorGrid(), np.random.default_rng(30)
    beta = disentanglement.beta_vae_score(data, perfect_code, rng, batch_size=16, num_train=200,
                                          num_eval=100)
    factor = disentanglement.factor_vae_score(data, perfect_code, rng, batch_size=16,
                                              num_train=200, num_eval=100,
                                              num_variance_estimate=300)
    assert beta["train_accuracy"] > 0.95 and beta["eval_accuracy"] > 0.95
    assert factor["train_accuracy"] == factor["eval_accuracy"] == 1.0
    assert factor["num_active_dims"] == 3


@pytest.mark.parametrize("metric", [disentanglement.beta_vae_score,
                                    disentanglement.factor_vae_score])
def test_noise_code_scores_at_chance_on_beta_vae_and_factor_vae(metric):
    result = metric(FactorGrid(), NoiseCode(4, seed=31), np.random.default_rng(32),
                    batch_size=16, num_train=300, num_eval=300)
    assert abs(result["eval_accuracy"] - 1 / len(SIZES)) < 0.1


def test_blind_constant_code():
    data = FactorGrid()
    beta = disentanglement.beta_vae_score(data, constant_code, np.random.default_rng(33),
                                          batch_size=16, num_train=300, num_eval=300)
    assert abs(beta["eval_accuracy"] - 1 / len(SIZES)) < 0.1
    factor = disentanglement.factor_vae_score(data, constant_code, np.random.default_rng(34),
                                              batch_size=16, num_train=10, num_eval=10,
                                              num_variance_estimate=100)
    assert factor == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_factor_of_each_code_labels_a_permuted_perfect_code():
    factors = _factors(1000, 40)
    codes = np.concatenate([_noisy(factors, 41)[:, [2, 0, 1]], np.zeros((1000, 1))], axis=1)
    factor_d, score_d = disentanglement.factor_of_each_code(codes, factors)
    np.testing.assert_array_equal(factor_d[:3], [2, 0, 1])
    assert np.all(score_d[:3] > 0.99) and score_d[3] == 0.0


def test_sample_codes_and_compute_all():
    data = FactorGrid()
    codes, factors = disentanglement.sample_codes(data, perfect_code, 50, np.random.default_rng(50),
                                                  batch_size=16)
    assert codes.shape == (50, 3) and codes.dtype == np.float64 and factors.shape == (50, 3)
    np.testing.assert_array_equal(codes, np.log1p(factors))
    scores = disentanglement.compute_all(data, perfect_code, np.random.default_rng(51),
                                         num_train=400, num_test=200, num_eval=100,
                                         batch_size=16, num_variance_estimate=200)
    assert set(scores) == {
        "mig", "modularity", "explicitness_train", "explicitness_test", "sap",
        "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
        "dci_informativeness_test", "beta_vae_train_accuracy", "beta_vae_eval_accuracy",
        "factor_vae_train_accuracy", "factor_vae_eval_accuracy", "factor_vae_num_active_dims",
    }
    assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values())
    for key in ("mig", "dci_disentanglement", "beta_vae_eval_accuracy", "factor_vae_eval_accuracy"):
        assert scores[key] > 0.9, key


# --- bad inputs ------------------------------------------------------------------------------


def _codes_factors():
    factors = _factors(40, 60)
    return _noisy(factors, 61), factors


@pytest.mark.parametrize(
    ("codes", "factors", "match"),
    [
        (_codes_factors()[0][:, 0], _codes_factors()[1], r"codes must be \[N, D\]"),
        (_codes_factors()[0], _codes_factors()[1][:, 0], r"factors must be \[N, F\]"),
        (_codes_factors()[0][:-1], _codes_factors()[1], "different numbers of examples"),
        (_codes_factors()[0], _codes_factors()[1].astype(float), "integer"),
        (np.where(np.eye(40, 3) > 0, np.nan, 0.0), _codes_factors()[1], "NaN"),
        (_codes_factors()[0][:, :1], _codes_factors()[1], "two code dimensions"),
        (_codes_factors()[0], np.zeros((40, 2), dtype=int), "single value"),
    ],
)
def test_mig_rejects_bad_arrays(codes, factors, match):
    with pytest.raises(ValueError, match=match):
        disentanglement.mig(codes, factors)


def test_split_metrics_reject_mismatched_splits():
    codes, factors = _codes_factors()
    for metric in (disentanglement.sap, disentanglement.dci,
                   disentanglement.modularity_explicitness):
        with pytest.raises(ValueError, match="differ in width"):
            metric(codes, factors, codes[:, :2], factors)
        with pytest.raises(ValueError, match="test factors must be integer"):
            metric(codes, factors, codes, factors.astype(np.float32))


@pytest.mark.parametrize(
    ("data", "representation_fn", "rng", "kwargs", "match"),
    [
        (FactorGrid((1, 3)), perfect_code, np.random.default_rng(0), {}, "at least two values"),
        (FactorGrid((3,)), perfect_code, np.random.default_rng(0), {}, "at least two factors"),
        (FactorGrid(), perfect_code, 0, {}, "Generator or RandomState"),
        (FactorGrid(), lambda x: x[:, 0], np.random.default_rng(0), {}, "representation_fn"),
        (FactorGrid(), perfect_code, np.random.default_rng(0), {"batch_size": 1}, "batch_size"),
        (FactorGrid(), perfect_code, np.random.default_rng(0), {"num_train": 0}, "num_train"),
    ],
)
def test_factor_vae_rejects_bad_inputs(data, representation_fn, rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        disentanglement.factor_vae_score(data, representation_fn, rng, **kwargs)


def test_beta_vae_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least two values"):
        disentanglement.beta_vae_score(FactorGrid((3, 1)), perfect_code, np.random.default_rng(0))
    with pytest.raises(ValueError, match="representation_fn"):
        disentanglement.beta_vae_score(FactorGrid(), lambda x: x[:-1], np.random.default_rng(0),
                                       num_train=2, num_eval=2)
