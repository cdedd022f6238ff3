"""Shared checks for the Pallas kernel tests: tolerances and the CPU launch-size limits."""
from __future__ import annotations

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

MAX_OPERAND_BYTES = 1 << 20
MAX_GRID_STEPS = 64

# PERFORMANCE.md §1: fp32 tight; bf16 forward ~2e-2 and gradients ~5e-2, relative to the values' scale.
FORWARD_TOL = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 2e-2}
GRAD_TOL = {jnp.dtype(jnp.float32): 1e-4, jnp.dtype(jnp.bfloat16): 5e-2}


def assert_close(actual, expected, tol: float, what: str) -> None:
  """max |actual - expected| <= tol * max(1, max |expected|)."""
  actual = np.asarray(actual).astype(np.float32)
  expected = np.asarray(expected).astype(np.float32)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  scale = max(1.0, float(np.max(np.abs(expected))))
  err = float(np.max(np.abs(actual - expected)))
  assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} * {scale:.3g}"


def normal(rng: np.random.Generator, shape, dtype) -> np.ndarray:
  """Host-side standard normals in `dtype` (no device compile per shape, unlike jax.random)."""
  return rng.standard_normal(shape, dtype=np.float32).astype(jnp.dtype(dtype))


def _sub_jaxprs(value):
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def pallas_launches(jaxpr: jex_core.Jaxpr):
  """Yields (grid, operand avals) of every pallas_call in a jaxpr, recursively."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      yield tuple(eqn.params["grid_mapping"].grid), [v.aval for v in eqn.invars]
    for param in eqn.params.values():
      for sub in _sub_jaxprs(param):
        yield from pallas_launches(sub)


def assert_launch_limits(fn, *args) -> int:
  """Every kernel launch in fn(*args) has <= 64 grid steps and operands <= 1 MiB. Returns the count."""
  launches = list(pallas_launches(jax.make_jaxpr(fn)(*args).jaxpr))
  assert launches, "no pallas_call found"
  for grid, avals in launches:
    assert int(np.prod(grid)) <= MAX_GRID_STEPS, f"grid {grid} has more than {MAX_GRID_STEPS} steps"
    for aval in avals:
      nbytes = int(np.prod(aval.shape)) * aval.dtype.itemsize
      assert nbytes <= MAX_OPERAND_BYTES, f"operand {aval.shape} {aval.dtype} is {nbytes} bytes"
  return len(launches)


def fast_jit(fn):
  """jax.jit with LLVM optimisations off: interpret-mode kernels compile ~2.5x faster and tiny shapes
  run just as fast, which keeps these CPU tests short."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})
