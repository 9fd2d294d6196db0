"""The denoiser interface and the combinators that act on any denoiser.

Everything downstream (samplers, losses, the gap evaluation, probes, plots) takes a pure function

    denoise(x, sigma, labels=None) -> x_hat

with x of shape (B, ...), sigma a scalar or a (B,) vector, labels None or a (B,) int vector.
A trained network, its EMA copy, a guided pair, the empirical optimal denoiser and the toy model's
y_delta are all such functions; guidance is a function of two denoisers that returns a third.
The package's own combinators return `jax.tree_util.Partial` objects: callables that are also
pytrees, so they pass through jit, vmap and scan as arguments.

This module is the one home of every combinator:
  guided(pos, neg, w)                 D_pos + w (D_pos - D_neg) (classifier-free guidance, autoguidance)
  null_labelled(D, null_label)        the classifier-free negative: every label replaced by the null one
  classifier_free_guided(D, null, w)  guided(D, null_labelled(D, null), w)
  crop_averaged(D, s, image_size)     a restricted receptive field: D on the four s x s corner crops
  from_torch(module, ...)             a PyTorch network (NCHW; EDM's preconditioning or its own)
                                      as a denoiser, via jax.pure_callback (optional extra [torch])
(A trained network becomes a denoiser through `models.network.network_denoiser`; the empirical
optimal denoiser and y_delta come from `optimal`.)
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import edm
from diffgen_jax.checks import check_number
from diffgen_jax.edm import per_example  # noqa: F401  (the combinators' broadcasting, re-exported)


class Denoiser(Protocol):

  def __call__(self, x: jax.Array, sigma, labels: Optional[jax.Array] = None) -> jax.Array:
    ...


def check_sigma(sigma, name: str = "sigma") -> None:
  """Raises ValueError naming `name` unless every concrete noise level is finite and > 0.

  The analytic denoisers are defined for every such sigma (tending to their sigma -> 0 limits);
  sigma = 0 is not a noise level. sigma: a scalar or array (numpy or jax); a traced value cannot
  be checked and passes (a check under jit never runs).
  """
  if isinstance(sigma, jax.core.Tracer):
    return
  s = np.asarray(sigma, np.float64)
  bad = s[~(np.isfinite(s) & (s > 0))]
  if bad.size:
    raise ValueError(f"{name} must be > 0 and finite, got {bad.ravel()[0]}")


def check_query(x, sigma, labels=None) -> int:
  """The interface's query contract, checked by the analytic denoisers (y*, LS, ELS, PSPC,
  Gaussian): x floating point (B, ...) (images in [-1, 1]; integer pixels would be cast and the
  output cast back to integers), sigma a scalar or a (B,) vector (concrete values finite and > 0,
  `check_sigma`), labels None or (B,) integers (floats would be truncated to a class). Shapes and
  dtypes are static, so this also runs under jit. Returns B; raises ValueError naming the argument.
  """
  x_dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
  if not jnp.issubdtype(x_dtype, jnp.floating):
    raise ValueError(f"x must be floating point (images in [-1, 1]), got dtype {x_dtype}")
  b = jnp.shape(x)[0]
  check_sigma(sigma)
  if jnp.ndim(sigma) not in (0, 1) or jnp.size(sigma) not in (1, b):
    raise ValueError(f"sigma must be a scalar or a ({b},) vector, got shape {jnp.shape(sigma)}")
  if labels is not None:
    label_dtype = getattr(labels, "dtype", None) or np.asarray(labels).dtype
    if jnp.shape(labels) != (b,) or not jnp.issubdtype(label_dtype, jnp.integer):
      raise ValueError(f"labels must be ({b},) integers, got shape {jnp.shape(labels)} dtype "
                       f"{label_dtype}")
  return b


def guided(positive: Denoiser, negative: Denoiser, weight: float) -> Denoiser:
  """D = D_pos + w (D_pos - D_neg): classifier-free guidance or autoguidance.

  A weight of exactly 0 given as a Python or numpy number returns `positive` itself (the formula's
  value, without evaluating the negative); any other weight, or a traced one, builds the formula.
  Raises ValueError unless weight is a finite number (a traced weight is passed through).
  """
  if not isinstance(weight, jax.core.Tracer):
    check_number(weight, "weight")
  if isinstance(weight, (int, float, np.number)) and float(weight) == 0.0:
    return positive
  return jax.tree_util.Partial(_guided, positive, negative, weight)


def _guided(positive, negative, weight, x, sigma, labels=None):
  d_pos = positive(x, sigma, labels)
  return d_pos + weight * (d_pos - negative(x, sigma, labels))


def null_labelled(denoiser: Denoiser, null_label: int) -> Denoiser:
  """The classifier-free negative: `denoiser` with every label replaced by `null_label`
  (our networks' null label is num_classes)."""
  return jax.tree_util.Partial(_null_labelled, denoiser, null_label)


def _null_labelled(denoiser, null_label, x, sigma, _labels=None):  # the given labels are replaced
  null = jnp.full((x.shape[0],), null_label, jnp.int32)
  return denoiser(x, sigma, null)


def classifier_free_guided(denoiser: Denoiser, null_label: int, weight: float) -> Denoiser:
  """Classifier-free guidance D_c + w (D_c - D_null) of one label-conditional denoiser."""
  return guided(denoiser, null_labelled(denoiser, null_label), weight)


# ------------------------------------------------------------------------------------------------
# Restricted receptive field


def _hw(image_size) -> Tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  h, w = image_size
  return int(h), int(w)


def crop_offsets(crop_size: int, image_size) -> Tuple[Tuple[int, int], ...]:
  """Top-left corners of the four crops: top-left, top-right, bottom-left, bottom-right.

  Raises ValueError unless max(H, W)/2 <= crop_size <= min(H, W) (2x2 crops cover the image).
  """
  h, w = _hw(image_size)
  s = check_number(crop_size, "crop_size", low=1, integer=True)
  if not (s <= h and s <= w and 2 * s >= h and 2 * s >= w):
    raise ValueError(f"crop_size must satisfy max(H, W)/2 <= s <= min(H, W) so that 2x2 corner "
                     f"crops cover the {h}x{w} image, got {s}")
  return ((0, 0), (0, w - s), (h - s, 0), (h - s, w - s))


def crop_averaged(denoise: Denoiser, crop_size: int, image_size) -> Denoiser:
  """The denoiser restricted to s x s corner crops, overlapping pixels averaged (paper.md
  section 6, restricted receptive field).

  x: (B, H, W, C). Overlap counts are 1, 2 or 4 and the four crop outputs are summed pairwise, so
  a pixelwise denoiser gives bit-identical results to the unwrapped one. Crops go through the
  denoiser as one batch of 4B (sigma and labels repeated). s = the full size returns the denoiser
  itself; otherwise a pytree (`jax.tree_util.Partial`) over the wrapped denoiser.
  """
  h, w = _hw(image_size)
  crop_offsets(crop_size, (h, w))
  if crop_size == h and crop_size == w:
    return denoise
  return jax.tree_util.Partial(functools.partial(_crop_averaged, crop_size, (h, w)), denoise)


def _crop_averaged(s, hw, denoise, x, sigma, labels=None):
  h, w = hw
  offsets = crop_offsets(s, hw)
  count = np.zeros((h, w), np.float32)
  for i, j in offsets:
    count[i:i + s, j:j + s] += 1.0
  b = x.shape[0]
  if x.shape[1:3] != (h, w):
    raise ValueError(f"x has spatial size {x.shape[1:3]}, the wrapper was made for {(h, w)}")
  crops = jnp.concatenate([x[:, i:i + s, j:j + s] for i, j in offsets], axis=0)
  sigma = jnp.asarray(sigma)
  sigma = sigma if sigma.ndim == 0 else jnp.tile(sigma, 4)
  out = denoise(crops, sigma, None if labels is None else jnp.tile(jnp.asarray(labels), 4))
  placed = [jnp.pad(out[k * b:(k + 1) * b], ((0, 0), (i, h - s - i), (j, w - s - j), (0, 0)))
            for k, (i, j) in enumerate(offsets)]
  total = (placed[0] + placed[1]) + (placed[2] + placed[3])
  return total / jnp.asarray(count, total.dtype)[None, :, :, None]


def is_array_pytree(denoiser) -> bool:
  """True for the package's pytree denoisers (jax.tree_util.Partial over arrays and numbers).

  Such a denoiser can be passed through jit as an argument, so its arrays (e.g. a training set)
  are fed to the compiled program instead of being embedded in it as constants.
  """
  leaves = jax.tree.leaves(denoiser)
  return bool(leaves) and all(isinstance(leaf, (jax.Array, np.ndarray, float, int)) for leaf in leaves)


def compiled(fn, jitted, *denoisers, **static):
  """fn with `denoisers` (and static keywords) bound, compiled. jitted is jax.jit(fn) made once at
  module level: when every denoiser is an array pytree (`is_array_pytree`; None passes) they enter
  it as arguments, so one program serves every checkpoint and training set of the same shapes.
  Any other denoiser is a closure, compiled for this call with its arrays embedded as constants."""
  if all(d is None or is_array_pytree(d) for d in denoisers):
    return functools.partial(jitted, *denoisers, **static)
  return jax.jit(functools.partial(fn, *denoisers, **static))


def _call(denoise, x, sigma, labels):
  return denoise(x, sigma, labels)


_call_jit = jax.jit(_call)


def caller(denoise):
  """denoise as f(x, sigma, labels): through one compiled program made at module level when it is
  an array pytree (`is_array_pytree`: it enters as an argument, so the program serves every
  checkpoint and training set of the same shapes); as it is otherwise (a closure runs as written,
  e.g. a hook's bridge to another framework, which jit cannot trace)."""
  return functools.partial(_call_jit, denoise) if is_array_pytree(denoise) else denoise


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


def check_concrete_labels(domain: Iterable[int], labels) -> None:
  """`check_label_domain` for query labels that are concrete here: traced labels, or a global
  array this process cannot read whole, are left to the caller (`check_labels`, run before
  tracing). A denoiser calls it on the labels it is given."""
  query = _concrete_host(labels)
  if query is not None:
    check_label_domain(domain, query)


NO_LABEL = -1  # the label of an analytic denoiser's padding rows: never equal to a query's label
ANY_LABEL = -2  # an unconditional analytic denoiser's query label: "every training point"


def analytic_query_labels(labels, domain, batch: int):
  """(B,) int32 query labels of an analytic denoiser (y*, LS, ELS, PSPC, Gaussian) built with
  `training_labels`: the labels, checked against the label domain where concrete, for a
  class-conditional one; ANY_LABEL for an unconditional one, which ignores labels.

  A class-conditional denoiser called without labels would otherwise sum over every class and
  return the unconditional posterior mean: a silent answer to another question. Raises ValueError
  naming labels."""
  if domain is None:
    return jnp.full((batch,), ANY_LABEL, jnp.int32)
  if labels is None:
    raise ValueError("labels=None for a class-conditional denoiser (built with train_labels): "
                     f"pass labels, ({batch},) integers; for the unconditional one, build it "
                     "without train_labels")
  out = jnp.asarray(labels, jnp.int32).reshape(batch)
  check_concrete_labels(domain, out)
  return out


def training_labels(train_labels, n: int):
  """(labels, label_domain) of a training set of n points for the analytic denoisers.

  train_labels: None (unconditional: all zeros, domain None) or (n,) integers >= 0. Returns int32
  labels and the frozenset of labels present, the `label_domain` that `check_labels` reads.
  Raises ValueError naming train_labels otherwise.
  """
  if train_labels is None:
    return np.zeros((n,), np.int32), None
  labels = np.asarray(train_labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"train_labels must be ({n},) integers, got {labels.shape} {labels.dtype}")
  if np.any(labels < 0):
    raise ValueError("train_labels must be >= 0")
  return labels.astype(np.int32), frozenset(np.unique(labels).tolist())


def check_labels(denoiser, labels) -> None:
  """Checks concrete labels against every component of `denoiser` that restricts them.

  A component declares the labels it is defined for by a `label_domain` attribute (a frozenset;
  the empirical optimal denoiser sets its training classes; None or absent: any label). The
  package's combinators are walked (guidance, label fixing, null label, y_delta, crop averaging:
  every functools / jax.tree_util Partial), so a y* inside a guided pair is checked too; a
  `null_labelled` component is checked with the label it substitutes. A
  component with a `check_query_labels(labels)` method (a network denoiser: its class range) is
  checked by it. Samplers and evaluations call this before they
  trace the labels (a check under jit would never run). Raises ValueError (see
  `check_label_domain`).
  """
  def visit(obj, query, depth=0):
    domain = getattr(obj, "label_domain", None)
    if domain is not None and query is not None:
      check_label_domain(domain, query)
    own_check = getattr(obj, "check_query_labels", None)  # e.g. a network's class range
    if callable(own_check) and query is not None:
      own_check(query)
    if isinstance(obj, functools.partial) and depth < 64:
      if obj.func is _null_labelled and len(obj.args) >= 2:
        query = _concrete_host(jnp.asarray([obj.args[1]]))
      for child in (obj.func,) + tuple(obj.args) + tuple(obj.keywords.values()):
        visit(child, query, depth + 1)

  visit(denoiser, _concrete_host(labels))


# ------------------------------------------------------------------------------------------------
# A PyTorch network as a denoiser (the optional extra `[torch]`)

PRECONDITIONINGS = ("edm", "none")
TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top  (the optional extra [torch])
  except ImportError as err:
    raise ImportError("denoisers.from_torch needs PyTorch, an optional extra of this package: "
                      "pip install 'diffgen_jax[torch]' (CPU wheels: --index-url "
                      "https://download.pytorch.org/whl/cpu)") from err
  return torch


class _TorchCall:
  """The host side of the bridge: module(x NCHW, s (n,), labels) on numpy inputs with any leading
  (vmapped) dimensions, returning numpy NHWC of x's dtype."""

  def __init__(self, torch, module, device, dtype, label_dim: int):
    self.torch, self.module, self.device, self.dtype = torch, module, device, dtype
    self.label_dim = label_dim

  def __call__(self, x, s, labels=None):
    torch = self.torch
    lead = s.shape  # (B,), or (V, ..., B) under vmap ("broadcast_all": every input has them)
    item = x.shape[len(lead):]
    flat_x = np.array(x, copy=True).reshape((-1,) + item)  # writable: torch shares its memory
    n = flat_x.shape[0]
    with torch.inference_mode():
      xt = torch.from_numpy(flat_x).to(device=self.device, dtype=self.dtype).permute(0, 3, 1, 2)
      st = torch.from_numpy(np.array(s, copy=True).reshape(n)).to(self.device, self.dtype)
      lt = None
      if labels is not None:
        flat = np.asarray(labels).reshape(n).astype(np.int64)
        bad = flat[(flat < 0) | (flat > self.label_dim)]
        if bad.size:
          raise ValueError(f"labels {np.unique(bad).tolist()[:10]} are out of range: the torch "
                           f"module takes the classes 0..{self.label_dim - 1} and the null label "
                           f"{self.label_dim}")
        one_hot = np.zeros((n, self.label_dim + 1), np.float32)
        one_hot[np.arange(n), flat] = 1.0
        lt = torch.from_numpy(one_hot[:, :self.label_dim]).to(self.device, self.dtype)
      out = self.module(xt.contiguous(), st, lt)
      if tuple(out.shape) != (n, item[2], item[0], item[1]):
        raise ValueError(f"the torch module returned shape {tuple(out.shape)} for an input of "
                         f"shape {(n, item[2], item[0], item[1])} (NCHW); it must return its "
                         "input's shape")
      out = out.permute(0, 2, 3, 1).to(device="cpu", dtype=torch.float32).numpy()
    return out.astype(x.dtype, copy=False).reshape(x.shape)


class TorchDenoiser:
  """A PyTorch network as a denoiser of the package (`from_torch`). Calls of it are
  `jax.pure_callback`s: they run under jit, vmap, scan and grad-free evaluation alike."""

  def __init__(self, call: _TorchCall, preconditioning: str, sigma_data: float):
    self.call, self.preconditioning, self.sigma_data = call, preconditioning, sigma_data
    self.module, self.label_dim = call.module, call.label_dim
    if preconditioning == "edm":
      self._denoise = edm.precondition(self._callback, sigma_data)
    else:
      self._denoise = self._callback

  def _callback(self, x, s, labels=None):
    s = jnp.broadcast_to(jnp.asarray(s, x.dtype), x.shape[:1])
    args = (x, s)
    if labels is not None and self.label_dim > 0:  # an unconditional module gets no labels
      args += (jnp.asarray(labels, jnp.int32),)
    return jax.pure_callback(self.call, jax.ShapeDtypeStruct(x.shape, x.dtype), *args,
                             vmap_method="broadcast_all")

  def __call__(self, x, sigma, labels=None):
    dtype = getattr(x, "dtype", None)
    if len(jnp.shape(x)) != 4 or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"x must be a floating-point array (B, H, W, C), got shape "
                       f"{jnp.shape(x)} dtype {dtype}")
    self.check_query_labels(labels)
    return self._denoise(x, sigma, labels)

  def check_query_labels(self, labels) -> None:
    """Concrete labels must be integers in [0, label_dim] (label_dim: the null label); an
    unconditional module (label_dim 0) ignores them. `check_labels` calls this by its name."""
    if labels is None or self.label_dim == 0:
      return
    dtype = getattr(labels, "dtype", None) or np.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"labels must be integers (class indices), got dtype {dtype}")
    values = _concrete_host(labels)
    if values is not None:
      bad = np.unique(values[(values < 0) | (values > self.label_dim)])
      if bad.size:
        raise ValueError(f"labels {bad.tolist()[:10]} are out of range: this network takes the "
                         f"classes 0..{self.label_dim - 1} and the null label {self.label_dim}")


def from_torch(module, *, preconditioning: str = "edm", sigma_data: Optional[float] = None,
               label_dim: int = 0, device="cpu", dtype="float32") -> TorchDenoiser:
  """A PyTorch network (NCHW) as a denoiser D(x, sigma, labels) of this package.

  Args:
    module: a torch.nn.Module (or any callable on torch tensors), put in eval mode here; it must
      live on `device`. Called with (x (n, C, H, W), s (n,), class_labels (n, label_dim) or None)
      and returning (n, C, H, W):
        preconditioning="edm": the raw network F(c_in x, c_noise, labels) (EDM's SongUNet /
          DhariwalUNet, a diffusers UNet wrapped to this signature); EDM's c_skip, c_out, c_in and
          c_noise (`edm.precondition`, the one home of those formulas) are applied in jax around it;
        preconditioning="none": a module that is already a denoiser D(x, sigma, labels) (EDM's
          EDMPrecond, EDM2's Precond).
    sigma_data: EDM's sigma_data for preconditioning="edm" (default edm.SIGMA_DATA = 0.5).
    label_dim: 0 for an unconditional module (labels are not passed); else its number of classes:
      labels are passed as EDM's one-hot float rows (n, label_dim), the package's null label
      label_dim as a row of zeros (EDM's unconditional input).
    device: the torch device the inputs are sent to ("cpu", "cuda", "cuda:1", a torch.device).
    dtype: the torch dtype of the inputs ("float32", "float64", "float16", "bfloat16", or a
      torch.dtype); the output comes back in x's dtype.

  Returns a `TorchDenoiser`: callable as denoise(x, sigma, labels=None) with x float (B, H, W, C),
  sigma a scalar or (B,) vector, labels None or (B,) integers in [0, label_dim]. Each call is one
  `jax.pure_callback` (vmap_method="broadcast_all": a vmapped call is one module call on the
  flattened batch), so it works under jax.jit, vmap and lax.scan, and with every measurement of
  the package. Data pass through host memory as numpy arrays (pure_callback hands the host the
  operands); on a GPU torch copies them to `device` and back. A zero-copy DLPack exchange where
  jax and torch share one GPU is not done.

  Raises ImportError (with the install line) without torch, ValueError naming the argument for a
  bad preconditioning, sigma_data, label_dim or dtype; a call raises ValueError for x not float
  NHWC or labels out of range, and fails (an XlaRuntimeError carrying the message) when the module
  returns another shape.
  """
  torch = _import_torch()
  if preconditioning not in PRECONDITIONINGS:
    raise ValueError(f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}")
  sigma_data = edm.SIGMA_DATA if sigma_data is None else sigma_data
  check_number(sigma_data, "sigma_data", low=0.0, low_open=True)
  check_number(label_dim, "label_dim", low=0, integer=True)
  if isinstance(dtype, str):
    if dtype not in TORCH_DTYPES:
      raise ValueError(f"dtype must be one of {TORCH_DTYPES} or a torch.dtype, got {dtype!r}")
    dtype = getattr(torch, dtype)
  elif not isinstance(dtype, torch.dtype):
    raise ValueError(f"dtype must be one of {TORCH_DTYPES} or a torch.dtype, got {dtype!r}")
  if hasattr(module, "eval"):
    module.eval()
  call = _TorchCall(torch, module, torch.device(device), dtype, int(label_dim))
  return TorchDenoiser(call, preconditioning, float(sigma_data))
