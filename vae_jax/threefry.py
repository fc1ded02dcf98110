"""Moved to `vae_jax.fastpath` (the CPU fast paths behind one switch); these names remain for
the modules that still import them from here (input_pipeline, losses, objectives)."""

from vae_jax.fastpath import bernoulli, bits, fold_in, hash_2x32, normal, split, uniform

__all__ = ["bernoulli", "bits", "fold_in", "hash_2x32", "normal", "split", "uniform"]
