"""diffgen_jax: diffusion denoisers and how, where and how much they memorize their training data."""

__version__ = "0.1.0"
