"""Model FLOP counts against closed forms and XLA's own count."""

import jax
import jax.numpy as jnp
import pytest

from diffgen_jax import flops


def _conv(x, w, stride=1, groups=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


def test_matmul_is_two_m_k_n_and_matches_xla():
  m, k, n = 6, 10, 7
  x, w = jnp.ones((m, k)), jnp.ones((k, n))
  assert flops.model_flops(jnp.matmul, x, w) == 2 * m * k * n
  xla = jax.jit(jnp.matmul).lower(x, w).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  assert flops.model_flops(jnp.matmul, x, w) == pytest.approx(xla["flops"], rel=0.01)


def test_batched_einsum():
  b, m, k, n = 3, 4, 5, 6
  f = lambda q, kk: jnp.einsum("bmk,bnk->bmn", q, kk)
  assert flops.model_flops(f, jnp.ones((b, m, k)), jnp.ones((b, n, k))) == 2 * b * m * k * n


@pytest.mark.parametrize("groups", [1, 2])
def test_convolution_closed_form(groups):
  n, h, c_in, c_out, k = 2, 8, 4, 6, 3
  x, w = jnp.ones((n, h, h, c_in)), jnp.ones((k, k, c_in // groups, c_out))
  got = flops.model_flops(lambda a, b: _conv(a, b, groups=groups), x, w)
  assert got == 2 * n * h * h * c_out * (c_in // groups) * k * k


@pytest.mark.parametrize("stride", [1, 2])
def test_backward_costs_twice_the_forward(stride):
  """Input and weight gradients each cost one forward, also for a strided convolution (whose
  input gradient runs on a dilated cotangent: the inserted zeros are not counted)."""
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  forward = flops.model_flops(lambda a, b: _conv(a, b, stride), x, w)
  both = flops.model_flops(jax.grad(lambda a, b: _conv(a, b, stride).sum(), argnums=(0, 1)), x, w)
  assert forward == 2 * 2 * (8 // stride) ** 2 * 4 * 3 * 9
  assert both == 3 * forward


def test_scan_multiplies_by_length_and_jit_is_transparent():
  w = jnp.ones((5, 5))

  def body(carry, _):
    return carry @ w, None

  one = flops.model_flops(lambda c: c @ w, jnp.ones((3, 5)))
  scanned = flops.model_flops(lambda c: jax.lax.scan(body, c, None, length=7)[0], jnp.ones((3, 5)))
  assert scanned == 7 * one
  assert flops.model_flops(jax.jit(lambda c: c @ w), jnp.ones((3, 5))) == one


def test_cond_counts_the_costlier_branch_and_elementwise_is_free():
  x = jnp.ones((4, 4))
  f = lambda p, a: jax.lax.cond(p, lambda b: b @ b @ b, lambda b: jnp.tanh(b) * 2.0, a)
  assert flops.model_flops(f, True, x) == 2 * (2 * 4 * 4 * 4)
  assert flops.model_flops(lambda a: jnp.exp(a) + a * a, x) == 0
