"""vae_jax.fastpath: each fast form against its library form and float64, and the switch.

The random draws must equal `jax.random`'s bit for bit (checked also against the published
Threefry known answer); the rest agree with the library forms to float32 rounding. The switch
tests look at the traced program: with the fast paths off it holds the library's operation.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from vae_jax import config_defaults, evaluate, fastpath, optim, train
from vae_jax import model as model_lib

SHAPES = ((7,), (20, 784), (3, 5, 7))


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _close(a, b):
    # Scaling and erfinv are float arithmetic that XLA may contract into fused multiply-adds
    # differently in different programs (jax.random.normal itself differs by an ulp between
    # eager and jitted calls); the bits underneath are compared exactly.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def _maybe_jit(jit):
    return jax.jit if jit else (lambda f: f)


def _jaxpr(fn, *args, on: bool) -> str:
    with fastpath.switched(on):
        return str(jax.make_jaxpr(fn)(*args))


# --------------------------------------------------------------------------- the switch


def test_fast_paths_run_on_the_cpu_backend_only_and_when_switched_on():
    assert jax.default_backend() == "cpu"
    assert fastpath.enabled() and fastpath.enabled("cpu")
    assert not fastpath.enabled("gpu") and not fastpath.enabled("tpu")
    with fastpath.switched(False):
        assert not fastpath.enabled() and not fastpath.enabled("cpu")
        with fastpath.switched(True):
            assert fastpath.enabled()
        assert not fastpath.enabled()
    assert fastpath.enabled()


def test_switched_off_the_programs_hold_the_library_operations():
    key = jax.random.key(0)
    x = jnp.ones((4, 3, 5))
    cases = [  # (function, args, in the fast program, in the library program)
        (lambda k: fastpath.fold_in(k, 3), (key,), "shift_left", "random_fold_in"),
        (lambda k: fastpath.split(k), (key,), "shift_left", "random_split"),
        (lambda k: fastpath.normal(k, (3,)), (key,), "shift_left", "random_bits"),
        (lambda k: fastpath.bernoulli(k, jnp.full(3, 0.5)), (key,), "shift_left", "random_bits"),
        (fastpath.softplus, (x,), "div", "log1p"),
        (fastpath.log1p_of_unit, (x,), "div", "log1p"),
        (fastpath.sum_non_batch, (x,), "dot_general", "reduce_sum"),
        (fastpath.global_norm, ({"w": x},), "dot_general", "reduce_sum"),
        # the library form's [N, C, Z] table, N = 20, C = 12; the fast form's is [N, 8, Z]
        (lambda z: fastpath.gaussian_log_density_table(z, z[:12], z[:12]), (jnp.ones((20, 5)),),
         "top_k", "f32[20,12,5]"),
    ]
    for fn, args, fast_op, library_op in cases:
        fast, library = _jaxpr(fn, *args, on=True), _jaxpr(fn, *args, on=False)
        assert fast_op in fast and library_op not in fast, fast
        assert library_op in library and fast_op not in library, library


def test_the_switch_is_part_of_the_jit_cache_key():
    softplus = jax.jit(fastpath.softplus)
    x = jnp.linspace(-3.0, 3.0, 7)
    with fastpath.switched(False):
        library = softplus.lower(x).as_text()
    fast = softplus.lower(x).as_text()
    assert "log_plus_one" in library and "log_plus_one" not in fast


def test_adam_has_one_division_per_parameter_only_in_the_fast_form():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}

    def array_divisions(on):
        with fastpath.switched(on):
            transform = fastpath.scale_by_adam()
        jaxpr = jax.make_jaxpr(transform.update)(params, transform.init(params))
        return sum(e.primitive.name == "div" and e.outvars[0].aval.ndim > 0
                   for e in jaxpr.jaxpr.eqns)

    assert array_divisions(True) == 2  # one per leaf
    assert array_divisions(False) == 6  # optax: both bias corrections and the ratio


def test_finite_select_is_a_cond_only_in_a_scan_with_the_fast_paths_on():
    def select(finite, *, scanned):
        return fastpath.where_finite(finite, lambda: jnp.ones(3), lambda: jnp.zeros(3),
                                     scanned=scanned)

    assert "cond[" in _jaxpr(functools.partial(select, scanned=True), True, on=True)
    for scanned, on in ((True, False), (False, True), (False, False)):
        program = _jaxpr(functools.partial(select, scanned=scanned), True, on=on)
        assert "cond[" not in program and "select_n" in program


def test_compiler_options_are_asked_only_with_the_fast_paths_on():
    flags = {"avx512f"}
    assert fastpath.compiler_options("cpu", cpu_flags=flags, xla_flags="",
                                     convolutional=True) == {
        "xla_cpu_prefer_vector_width": 512, "xla_cpu_experimental_ynn_fusion_type": ""}
    with fastpath.switched(False):
        assert fastpath.compiler_options("cpu", cpu_flags=flags, xla_flags="",
                                         convolutional=True) == {}


class _Stop(Exception):
    pass


def test_training_and_evaluation_apply_the_configs_switch(tmp_path, monkeypatch):
    seen = []

    def record(*args, **kwargs):
        seen.append(fastpath.enabled())
        raise _Stop

    config = config_defaults.default_config()
    config.run.cpu_fast_paths = False
    monkeypatch.setattr(train, "set_up_run", record)
    with pytest.raises(_Stop):
        train.train_and_evaluate(config, tmp_path / "w", quiet=True)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json())
    monkeypatch.setattr(evaluate, "compute_evaluation", record)
    with pytest.raises(_Stop):
        evaluate.evaluate_workdir(workdir, out_dir=tmp_path / "out")
    assert seen == [False, False] and fastpath.enabled()


# --------------------------------------------------------------------------- random numbers


@pytest.mark.parametrize("seed", [0, 2**31 - 1])
@pytest.mark.parametrize("jit", [False, True])
def test_keys_match_jax_random(seed, jit):
    key = jax.random.key(seed)
    maybe_jit = _maybe_jit(jit)
    for data in (0, 1, 12345, np.uint32(2**32 - 1)):
        _same(jax.random.key_data(maybe_jit(fastpath.fold_in)(key, data)),
              jax.random.key_data(jax.random.fold_in(key, data)))
    for num in (1, 2, 4, 7):
        split = maybe_jit(functools.partial(fastpath.split, num=num))
        _same(jax.random.key_data(split(key)), jax.random.key_data(jax.random.split(key, num)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("jit", [False, True])
def test_draws_match_jax_random(shape, jit):
    maybe_jit = _maybe_jit(jit)
    for seed in (0, 99):
        key = jax.random.key(seed)
        _same(maybe_jit(lambda k: fastpath.bits(k, shape))(key),
              jax.random.bits(key, shape, jnp.uint32))
        _same(maybe_jit(lambda k: fastpath.uniform(k, shape))(key),
              jax.random.uniform(key, shape))
        _close(maybe_jit(lambda k: fastpath.uniform(k, shape, minval=-2.0, maxval=3.0))(key),
               jax.random.uniform(key, shape, minval=-2.0, maxval=3.0))
        _close(maybe_jit(lambda k: fastpath.normal(k, shape))(key),
               jax.random.normal(key, shape))
        p = jax.random.uniform(jax.random.key(seed + 1000), shape)
        _same(maybe_jit(fastpath.bernoulli)(key, p), jax.random.bernoulli(key, p))


def test_fast_and_library_draws_are_the_same_bits():
    def draws(key, p):
        key_a, key_b = fastpath.split(fastpath.fold_in(key, 7))
        return {"bits": fastpath.bits(key_a, (5, 9)), "uniform": fastpath.uniform(key_b, (40,)),
                "bernoulli": fastpath.bernoulli(key_a, p), "normal": fastpath.normal(key_b, (40,)),
                "key": jax.random.key_data(key_b)}

    p = jax.random.uniform(jax.random.key(3), (6, 8))
    for jit in (False, True):
        fn = _maybe_jit(jit)(draws)
        fast = fn(jax.random.key(11), p)
        with fastpath.switched(False):
            library = _maybe_jit(jit)(draws)(jax.random.key(11), p)
        for name in ("bits", "uniform", "bernoulli", "key"):
            _same(fast[name], library[name])
        _close(fast["normal"], library["normal"])


def test_vmap_over_keys_matches_a_loop_of_jax_random():
    keys = jax.random.split(jax.random.key(5), 6)
    ids = jnp.arange(6, dtype=jnp.uint32) * 1000
    folded = jax.jit(jax.vmap(fastpath.fold_in))(keys, ids)
    _same(jax.random.key_data(folded), np.stack(
        [jax.random.key_data(jax.random.fold_in(k, i)) for k, i in zip(keys, ids)]))
    normals = jax.jit(jax.vmap(lambda k: fastpath.normal(k, (3, 50))))(keys)
    _close(normals, np.stack([jax.random.normal(k, (3, 50)) for k in keys]))


def test_hash_matches_the_published_known_answer():
    # Known-answer test of Salmon et al.'s Random123 (kat_vectors, threefry2x32_20):
    # key (0x13198a2e, 0x03707344), counter (0x243f6a88, 0x85a308d3).
    y1, y2 = fastpath.hash_2x32(np.uint32(0x13198A2E), np.uint32(0x03707344),
                                np.uint32(0x243F6A88), np.uint32(0x85A308D3))
    assert (int(y1), int(y2)) == (0xC4923A9C, 0x483DF7A0)


def test_other_key_implementations_fall_back_to_jax_random():
    key = jax.random.key(0, impl="rbg")
    _same(fastpath.normal(key, (4, 3)), jax.random.normal(key, (4, 3)))
    _same(jax.random.key_data(fastpath.fold_in(key, 3)),
          jax.random.key_data(jax.random.fold_in(key, 3)))


def test_a_draw_of_2_to_the_32_values_is_refused():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        jax.eval_shape(lambda k: fastpath.bits(k, (2**16, 2**16)), jax.random.key(0))


# --------------------------------------------------------------------------- elementwise math


@pytest.mark.parametrize("jit", [False, True])
def test_softplus_matches_float64_and_its_derivative_is_the_sigmoid(jit):
    x = np.concatenate([np.linspace(-120, 120, 200_001), -np.logspace(-8, 1.9, 100_000),
                        [0.0, 1e-30, -1e-30, 88.7, -103.0]])
    want = np.logaddexp(0.0, x.astype(np.float32).astype(np.float64))
    softplus = _maybe_jit(jit)(fastpath.softplus)
    grad = _maybe_jit(jit)(jax.vmap(jax.grad(fastpath.softplus)))
    x32 = jnp.asarray(x, jnp.float32)
    # The fast form: 2.5 ulps (2.1 measured; jnp.log1p's form reaches 3.8 on this grid).
    np.testing.assert_allclose(softplus(x32), want, rtol=1.5e-7, atol=1e-37)
    np.testing.assert_allclose(grad(x32), special.expit(x.astype(np.float32)), rtol=1e-6,
                               atol=1e-37)
    assert float(jax.grad(fastpath.softplus)(0.0)) == 0.5
    with fastpath.switched(False):
        np.testing.assert_allclose(softplus(x32), want, rtol=5e-7, atol=1e-37)
        np.testing.assert_allclose(grad(x32), special.expit(x.astype(np.float32)), rtol=1e-6,
                                   atol=1e-37)


@pytest.mark.parametrize("jit", [False, True])
def test_log1p_of_unit_matches_float64_log1p(jit):
    y = np.concatenate([np.linspace(0.0, 1.0, 200_001), np.logspace(-37, 0, 20_000)])
    y32 = y.astype(np.float32)
    log1p = _maybe_jit(jit)(fastpath.log1p_of_unit)
    got = log1p(jnp.asarray(y32))
    assert got.dtype == jnp.float32
    # 2 ulps (1.6 measured).
    np.testing.assert_allclose(got, np.log1p(y32.astype(np.float64)), rtol=1.2e-7, atol=0)
    with fastpath.switched(False):
        # XLA's log1p: 4 ulps.
        np.testing.assert_allclose(log1p(jnp.asarray(y32)), np.log1p(y32.astype(np.float64)),
                                   rtol=5e-7, atol=0)
    with jax.enable_x64(True):
        np.testing.assert_allclose(log1p(jnp.asarray(y)), np.log1p(y), rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("on", [True, False])
def test_sum_non_batch_matches_float64(on):
    x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype(np.float32)
    with fastpath.switched(on):
        got = jax.jit(fastpath.sum_non_batch)(x)
    chex.assert_shape(got, (5,))
    np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=(1, 2, 3)), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("on", [True, False])
def test_global_norm_matches_float64_and_sees_non_finite_leaves(on):
    rng = np.random.default_rng(2)
    tree = {"kernel": rng.normal(size=(784, 200)), "bias": rng.normal(size=(200,)),
            "conv": rng.normal(size=(3, 3, 8, 16)), "scale": np.float32(3.0)}
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    with fastpath.switched(on):
        norm = jax.jit(fastpath.global_norm)
        np.testing.assert_allclose(norm(tree), want, rtol=1e-5)
        for bad in (np.inf, np.nan):
            assert not np.isfinite(float(norm(dict(tree, kernel=tree["kernel"].at[7, 3].set(
                bad)))))


# --------------------------------------------------------------------------- mixture densities


def _mixture_case(rng, min_logvar, num=400, num_components=500, latent_dim=40):
    """z drawn from the mixture itself, so that narrow components meet z close to them."""
    mean_cz = rng.normal(0.0, 1.5, (num_components, latent_dim))
    logvar_cz = rng.uniform(min_logvar, 0.0, (num_components, latent_dim))
    c_n = rng.integers(0, num_components, num)
    z_nz = mean_cz[c_n] + np.exp(0.5 * logvar_cz[c_n]) * rng.normal(size=(num, latent_dim))
    log_weights_c = np.log(rng.dirichlet(np.ones(num_components)))
    return z_nz, mean_cz, logvar_cz, log_weights_c


def _table_float64(z_nz, mean_cz, logvar_cz, log_weights_c):
    return log_weights_c - 0.5 * np.sum(np.log(2 * np.pi) + logvar_cz
                                        + (z_nz[:, None] - mean_cz) ** 2 / np.exp(logvar_cz), -1)


@pytest.mark.parametrize("on", [True, False])
@pytest.mark.parametrize("min_logvar", [-4.0, -10.0])
def test_the_gaussian_table_and_its_logsumexp_match_float64(on, min_logvar):
    # The expanded square loses ~0.1 nats of an entry to cancellation at logvar -10 (measured
    # 0.14 without the exact recomputation): the logsumexp, made of the largest entries
    # recomputed exactly, must keep the elementwise form's precision.
    z_nz, mean_cz, logvar_cz, log_weights_c = _mixture_case(np.random.default_rng(3), min_logvar)
    want_nc = _table_float64(z_nz, mean_cz, logvar_cz, log_weights_c)
    args = [jnp.asarray(a, jnp.float32) for a in (z_nz, mean_cz, logvar_cz, log_weights_c)]
    with fastpath.switched(on):
        got_nc = jax.jit(fastpath.gaussian_log_density_table)(*args[:3], log_weights_c=args[3])
    chex.assert_shape(got_nc, (400, 500))
    np.testing.assert_allclose(special.logsumexp(np.asarray(got_nc, np.float64), axis=-1),
                               special.logsumexp(want_nc, axis=-1), rtol=0, atol=2e-4)
    scale = np.sum((z_nz[:, None] ** 2 + mean_cz ** 2) / np.exp(logvar_cz), -1)
    assert np.all(np.abs(np.asarray(got_nc) - want_nc) <= 1e-6 * scale + 1e-3)


def test_both_gaussian_tables_give_the_same_gradients():
    z_nz, mean_cz, logvar_cz, log_weights_c = _mixture_case(np.random.default_rng(4), -6.0,
                                                           num=100)
    args = [jnp.asarray(a, jnp.float32) for a in (z_nz, mean_cz, logvar_cz, log_weights_c)]

    def log_mixture(z, mean, logvar, log_weights):
        table = fastpath.gaussian_log_density_table(z, mean, logvar, log_weights_c=log_weights)
        return jnp.sum(jax.nn.logsumexp(table, axis=-1))

    grads = {}
    for on in (True, False):
        with fastpath.switched(on):
            grads[on] = jax.jit(jax.grad(log_mixture, argnums=(0, 1, 2, 3)))(*args)
    for fast, library in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(fast, library, rtol=1e-3, atol=1e-3 * np.abs(library).max())


# --------------------------------------------------------------------------- the optimiser


def _adam_float64(grads_steps, b1, b2, eps):
    """Kingma & Ba (2015), Algorithm 1, in float64: the update direction of every step."""
    m = np.zeros_like(grads_steps[0], dtype=np.float64)
    v = np.zeros_like(m)
    out = []
    for t, g in enumerate(grads_steps, start=1):
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    return out


@pytest.mark.parametrize("b1, b2, eps", [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-4)])
def test_both_adams_match_a_float64_adam_with_optax_state(b1, b2, eps):
    rng = np.random.default_rng(0)
    grads_steps = [rng.normal(size=(4, 3)).astype(np.float32) * 10.0 ** rng.integers(-4, 2)
                   for _ in range(40)]
    want = _adam_float64(grads_steps, b1, b2, eps)
    params = {"w": jnp.zeros((4, 3))}
    for on in (True, False):
        with fastpath.switched(on):
            transform = fastpath.scale_by_adam(b1=b1, b2=b2, eps=eps)
        state = transform.init(params)
        assert isinstance(state, optax.ScaleByAdamState)
        update = jax.jit(transform.update)
        for g, want_t in zip(grads_steps, want):
            got, state = update({"w": jnp.asarray(g)}, state)
            np.testing.assert_allclose(got["w"], want_t, rtol=2e-5)
        assert int(state.count) == len(grads_steps)


@pytest.mark.parametrize("scanned", [False, True])
@pytest.mark.parametrize("finite", [False, True])
def test_both_finite_selects_pick_the_same_tree(scanned, finite):
    new = {"a": jnp.arange(3.0), "b": jnp.full((2, 2), jnp.nan)}
    old = {"a": jnp.zeros(3), "b": jnp.ones((2, 2))}
    results = []
    for on in (True, False):
        with fastpath.switched(on):
            results.append(jax.jit(lambda f: fastpath.where_finite(  # noqa: B023
                f, lambda: new, lambda: old, scanned=scanned))(jnp.asarray(finite)))
    want = new if finite else old
    for got in results:
        chex.assert_trees_all_equal(got, want)


def test_one_training_step_agrees_between_the_fast_and_the_library_forms():
    """Three steps of the whole train step (binarisation, latent noise, Bernoulli likelihood,
    gradient norm, Adam, finite select) on each form: the same losses and parameters to
    float32 rounding, and the same binarisation draws (the ELBO's terms agree)."""
    config = config_defaults.default_config()
    config.model.hidden = (32,)
    config.model.latent_dim = 4
    vae = model_lib.build_model(config.model, (8, 8, 1), num_levels=17)
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 17, (16, 8, 8, 1)), jnp.uint8)
    outcomes = []
    for on in (True, False):
        with fastpath.switched(on):
            optimizer = optim.make_optimizer(config)
            state = optim.init_state(jax.random.key(0), vae, (8, 8, 1), optimizer, ema=False)
            step = jax.jit(functools.partial(
                train.train_step, loss_fn=train.make_loss_fn(config, vae), optimizer=optimizer,
                beta_schedule=optax.constant_schedule(1.0),
                lr_schedule=optim.make_lr_schedule(config), scale=1 / 16, binarize=True))
            losses = []
            for s in range(3):
                state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(1), s))
                losses.append(float(metrics["loss"]))
            outcomes.append((losses, jax.device_get(state.params)))
    (fast_losses, fast_params), (library_losses, library_params) = outcomes
    np.testing.assert_allclose(fast_losses, library_losses, rtol=1e-5)
    chex.assert_trees_all_close(fast_params, library_params, rtol=1e-4, atol=1e-6)

