"""vae_jax.threefry against jax.random, bit for bit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from vae_jax import threefry

SHAPES = ((7,), (20, 784), (3, 5, 7))


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _close(a, b):
    # Scaling and erfinv are float arithmetic that XLA may contract into fused multiply-adds
    # differently in different programs (jax.random.normal itself differs by an ulp between
    # eager and jitted calls); the bits underneath are compared exactly above.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


class ThreefryTest(parameterized.TestCase):

    @parameterized.product(seed=(0, 2**31 - 1), jit=(False, True))
    def test_keys_match_jax_random(self, seed, jit):
        key = jax.random.key(seed)
        maybe_jit = jax.jit if jit else (lambda f: f)
        for data in (0, 1, 12345, np.uint32(2**32 - 1)):
            _same(jax.random.key_data(maybe_jit(threefry.fold_in)(key, data)),
                  jax.random.key_data(jax.random.fold_in(key, data)))
        for num in (1, 2, 4, 7):
            split = maybe_jit(functools.partial(threefry.split, num=num))
            _same(jax.random.key_data(split(key)), jax.random.key_data(jax.random.split(key, num)))

    @parameterized.product(shape=SHAPES, jit=(False, True))
    def test_draws_match_jax_random(self, shape, jit):
        maybe_jit = jax.jit if jit else (lambda f: f)
        for seed in (0, 99):
            key = jax.random.key(seed)
            _same(maybe_jit(lambda k: threefry.bits(k, shape))(key),
                  jax.random.bits(key, shape, jnp.uint32))
            _same(maybe_jit(lambda k: threefry.uniform(k, shape))(key),
                  jax.random.uniform(key, shape))
            _close(maybe_jit(lambda k: threefry.uniform(k, shape, minval=-2.0, maxval=3.0))(key),
                  jax.random.uniform(key, shape, minval=-2.0, maxval=3.0))
            _close(maybe_jit(lambda k: threefry.normal(k, shape))(key), jax.random.normal(key, shape))
            p = jax.random.uniform(jax.random.key(seed + 1000), shape)
            _same(maybe_jit(threefry.bernoulli)(key, p), jax.random.bernoulli(key, p))

    def test_vmap_over_keys_matches_a_loop_of_jax_random(self):
        keys = jax.random.split(jax.random.key(5), 6)
        ids = jnp.arange(6, dtype=jnp.uint32) * 1000
        folded = jax.jit(jax.vmap(threefry.fold_in))(keys, ids)
        _same(jax.random.key_data(folded), np.stack(
            [jax.random.key_data(jax.random.fold_in(k, i)) for k, i in zip(keys, ids)]))
        normals = jax.jit(jax.vmap(lambda k: threefry.normal(k, (3, 50))))(keys)
        _close(normals, np.stack([jax.random.normal(k, (3, 50)) for k in keys]))

    def test_hash_matches_the_published_known_answer(self):
        # Known-answer test of Salmon et al.'s Random123 (kat_vectors, threefry2x32_20):
        # key (0x13198a2e, 0x03707344), counter (0x243f6a88, 0x85a308d3).
        y1, y2 = threefry.hash_2x32(np.uint32(0x13198A2E), np.uint32(0x03707344),
                                    np.uint32(0x243F6A88), np.uint32(0x85A308D3))
        self.assertEqual((int(y1), int(y2)), (0xC4923A9C, 0x483DF7A0))

    def test_other_key_implementations_fall_back_to_jax_random(self):
        key = jax.random.key(0, impl="rbg")
        _same(threefry.normal(key, (4, 3)), jax.random.normal(key, (4, 3)))
        _same(jax.random.key_data(threefry.fold_in(key, 3)),
              jax.random.key_data(jax.random.fold_in(key, 3)))

    def test_a_draw_of_2_to_the_32_values_is_refused(self):
        with self.assertRaisesRegex(ValueError, "2\\*\\*32"):
            jax.eval_shape(lambda k: threefry.bits(k, (2**16, 2**16)), jax.random.key(0))


if __name__ == "__main__":
    absltest.main()
