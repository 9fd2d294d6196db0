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

import functools
from typing import Iterable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.checks import check_number


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
  """D = D_pos + w (D_pos - D_neg): classifier-free guidance or autoguidance; w = 0 is D_pos.

  Raises ValueError unless weight is a finite number (a traced weight is passed through).
  """
  if not isinstance(weight, jax.core.Tracer):
    check_number(weight, "weight")
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


def check_label_domain(domain: Iterable[int], labels) -> None:
  """Raises ValueError naming the labels that have no training points in `domain`.

  A class-conditional softmax over the training points of a label that has none is 0 / 0: it has
  no value, and under jit it would come out as NaN without a word. So it is refused wherever the
  labels are still concrete. domain: the training labels (any iterable of ints); labels: concrete
  query labels (any shape).
  """
  known = frozenset(int(v) for v in np.unique(np.asarray(list(domain), np.int64)))
  missing = sorted(set(np.unique(np.asarray(labels)).tolist()) - known)
  if missing:
    raise ValueError(f"labels {missing} have no training points, so the class-conditional optimal "
                     f"denoiser is undefined for them (a softmax over an empty set); training "
                     f"labels present: {sorted(known)}")


def _concrete_host(labels):
  """labels as a host array, or None when they are traced or not addressable from this process."""
  if labels is None or isinstance(labels, jax.core.Tracer):
    return None
  if isinstance(labels, jax.Array) and not labels.is_fully_addressable:
    return None
  return np.asarray(labels)


def check_labels(denoiser, labels) -> None:
  """Checks concrete labels against every component of `denoiser` that restricts them.

  A component declares the labels it is defined for by a `label_domain` attribute (a frozenset;
  the empirical optimal denoiser sets its training classes; None or absent: any label). The
  package's combinators are walked (guidance, label fixing, y_delta, crop averaging: every
  functools / jax.tree_util Partial), so a y* inside a guided pair is checked too; a `with_labels`
  component is checked with its own fixed labels. Samplers and evaluations call this before they
  trace the labels (a check under jit would never run). Raises ValueError (see
  `check_label_domain`).
  """
  seen = set()

  def visit(obj, query):
    if id(obj) in seen:
      return
    seen.add(id(obj))
    domain = getattr(obj, "label_domain", None)
    if domain is not None and query is not None:
      check_label_domain(domain, query)
    if isinstance(obj, functools.partial):
      if obj.func is _with_labels and len(obj.args) >= 2:
        query = _concrete_host(obj.args[1])
      for child in (obj.func,) + tuple(obj.args) + tuple(obj.keywords.values()):
        visit(child, query)

  visit(denoiser, _concrete_host(labels))
