"""Shared checks for the Pallas kernel tests: tolerances and the CPU launch-size limits."""
from __future__ import annotations

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from tests import numerics

MAX_OPERAND_BYTES = 1 << 20
MAX_GRID_STEPS = 64

# A kernel against its reference is two XLA programs: float32 takes the policy's 1e-5 (tests/numerics.py).
# bfloat16 (8 mantissa bits, ~4e-3 per rounding) is looser: forward ~2e-2, and gradients ~5e-2 since the backward
# rounds through more matmuls.
FORWARD_TOL = {jnp.dtype(jnp.float32): numerics.PROGRAMS, jnp.dtype(jnp.bfloat16): 2e-2}
GRAD_TOL = {jnp.dtype(jnp.float32): numerics.PROGRAMS, jnp.dtype(jnp.bfloat16): 5e-2}


def assert_close(actual, expected, tol: float, what: str) -> None:
  """Finite, and |actual - expected| <= tol + tol * |expected| elementwise (compared in float32)."""
  actual, expected = np.asarray(actual).astype(np.float32), np.asarray(expected).astype(np.float32)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  numerics.assert_close({what: actual}, {what: expected}, tol=tol)


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
