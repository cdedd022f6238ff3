"""The suite's one numerics policy: how close two results must be, by where they come from.

- The same compiled program run twice (a resume, a reload, a re-run): bitwise equal, `assert_same_program`.
- Two different XLA programs in float32 (jit vs eager, another batch or shape, blocking, remat, another
  implementation of the same maths): atol = rtol = 1e-5, `assert_close_programs`. XLA may fuse, reassociate and
  pick other kernels per program and per CPU, so exact equality there only holds on the machine it was seen on.
- mmjax against torch/transformers in float32: atol = rtol = 1e-4, `assert_close_torch`.

A test that needs a looser bound passes `tol=` with a comment saying why (bfloat16 inputs, a long accumulation).
Every function takes arrays or matching pytrees of arrays (a scalar `desired` leaf is compared with every element)
and an optional `msg` for the failure message; bfloat16 leaves are compared in float32.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

PROGRAMS = 1e-5
TORCH = 1e-4


def _leaves(actual: Any, desired: Any, msg: str = '') -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(path, actual, desired) per leaf; raises if the two trees differ in structure or a leaf in shape."""
  paths, tree = jax.tree_util.tree_flatten_with_path(actual)
  desired_leaves, desired_tree = jax.tree_util.tree_flatten(desired)
  if tree != desired_tree:
    raise AssertionError(f'different structures: {tree} vs {desired_tree}')
  out = []
  for (path, a), d in zip(paths, desired_leaves):
    a, d = np.asarray(a), np.asarray(d)
    if d.ndim == 0:
      d = np.broadcast_to(d, a.shape)
    name = ' '.join(filter(None, (msg, jax.tree_util.keystr(path)))) or 'value'
    if a.shape != d.shape:
      raise AssertionError(f'{name}: shape {a.shape} vs {d.shape}')
    out.append((name, a, d))
  return out


def _float(x: np.ndarray) -> np.ndarray:
  # ml_dtypes' floats (bfloat16) are not numpy number kinds, and assert_allclose cannot subtract them.
  return x if x.dtype.kind in 'biufc' else x.astype(np.float32)


def assert_same_program(actual: Any, desired: Any, *, msg: str = '') -> None:
  """Bitwise equality (NaNs equal), leaf by leaf: the same compiled program on the same inputs."""
  for name, a, d in _leaves(actual, desired, msg):
    np.testing.assert_array_equal(a, d, err_msg=name, strict=True)


def assert_close(actual: Any, desired: Any, *, tol: float, msg: str = '') -> None:
  """|actual - desired| <= tol + tol * |desired| elementwise, leaf by leaf."""
  for name, a, d in _leaves(actual, desired, msg):
    np.testing.assert_allclose(_float(a), _float(d), rtol=tol, atol=tol, err_msg=name)


def assert_close_programs(actual: Any, desired: Any, *, tol: float = PROGRAMS, msg: str = '') -> None:
  """Two different XLA programs computing the same float32 values: within 1e-5 unless `tol` says otherwise."""
  assert_close(actual, desired, tol=tol, msg=msg)


def assert_close_torch(actual: Any, desired: Any, *, tol: float = TORCH, msg: str = '') -> None:
  """mmjax against a torch/transformers reference in float32: within 1e-4 unless `tol` says otherwise."""
  assert_close(actual, desired, tol=tol, msg=msg)
