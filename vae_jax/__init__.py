"""vae_jax: variational autoencoders in JAX and Flax."""

__version__ = "0.1.0"
