"""The denoiser interface and the combinators that act on any denoiser.

Everything downstream (samplers, losses, the gap evaluation, probes, plots) takes a pure function

    denoise(x, sigma, labels=None) -> x_hat

with x of shape (B, ...), sigma a scalar or a (B,) vector, labels None or a (B,) int vector.
A trained network, its EMA copy, a guided pair, the empirical optimal denoiser and the toy model's
y_delta are all such functions; guidance is a function of two denoisers that returns a third.
The package's own combinators return `jax.tree_util.Partial` objects: callables that are also
pytrees, so they pass through jit, vmap and scan as arguments.
"""

from __future__ import annotations

from typing import Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class Denoiser(Protocol):

  def __call__(self, x: jax.Array, sigma, labels: Optional[jax.Array] = None) -> jax.Array:
    ...


def per_example(v, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or a (B,) vector against x of shape (B, ...)."""
  v = jnp.asarray(v, x.dtype)
  if v.ndim == 0:
    v = jnp.broadcast_to(v, x.shape[:1])
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def guided(positive: Denoiser, negative: Denoiser, weight: float) -> Denoiser:
  """D = D_pos + w (D_pos - D_neg): classifier-free guidance or autoguidance; w = 0 is D_pos."""
  return jax.tree_util.Partial(_guided, positive, negative, weight)


def _guided(positive, negative, weight, x, sigma, labels=None):
  d_pos = positive(x, sigma, labels)
  return d_pos + weight * (d_pos - negative(x, sigma, labels))


def with_labels(denoiser: Denoiser, labels: Optional[jax.Array]) -> Denoiser:
  """Fixes the labels of a denoiser, e.g. the null label of a classifier-free negative."""
  return jax.tree_util.Partial(_with_labels, denoiser, labels)


def _with_labels(denoiser, labels, x, sigma, _ignored_labels=None):
  return denoiser(x, sigma, labels)


def is_array_pytree(denoiser) -> bool:
  """True for the package's pytree denoisers (jax.tree_util.Partial over arrays and numbers).

  Such a denoiser can be passed through jit as an argument, so its arrays (e.g. a training set)
  are fed to the compiled program instead of being embedded in it as constants.
  """
  leaves = jax.tree.leaves(denoiser)
  return bool(leaves) and all(isinstance(leaf, (jax.Array, np.ndarray, float, int)) for leaf in leaves)
