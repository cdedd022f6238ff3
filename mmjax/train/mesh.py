"""Device mesh from `config.mesh`, a dict of axis sizes where one -1 fills the rest."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh


def resolve_axis_sizes(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Replaces a single -1 by the size that makes the product equal `num_devices`."""
  sizes = dict(axes)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh may hold at most one -1, got {sizes}')
  bad = [k for k, v in sizes.items() if v != -1 and v < 1]
  if bad:
    raise ValueError(f'config.mesh sizes must be positive or -1, got {sizes}')
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(f'config.mesh {sizes}: {num_devices} devices are not divisible by {fixed}')
    sizes[free[0]] = num_devices // fixed
  elif fixed > num_devices:
    raise ValueError(f'config.mesh {sizes} needs {fixed} devices, but only {num_devices} are present')
  return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh over `devices` (default: all) with explicitly declared axis types.

  Axis types are declared `Auto` on purpose: the compiler propagates shardings from the
  explicit in/out shardings and logical constraints, independent of JAX's default.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes(axes, len(devices))
  names = tuple(sizes)
  shape = tuple(sizes[n] for n in names)
  used = int(np.prod(shape))
  if used < len(devices):
    # A fully specified mesh smaller than the machine (e.g. 1 device for a parity run) takes
    # the first devices; across processes every device must take part.
    if jax.process_count() > 1:
      raise ValueError(f'config.mesh {sizes} uses {used} of {len(devices)} devices; multi-process '
                       'runs must use them all (set one axis to -1)')
    logging.warning('config.mesh %s uses %d of %d devices', sizes, used, len(devices))
    devices = devices[:used]
  if len(devices) == jax.device_count():
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), names, axis_types=(AxisType.Auto,) * len(names))
