"""optax optimiser from `config.optim`: schedule, clipping, parameter groups.

Parameter groups select parameters by a regex over their '/'-joined path. Each group has
its own peak learning rate (same schedule shape) or is frozen (no update, no optimiser
state). Unmatched parameters form the 'default' group at `optim.lr`.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

DEFAULT_GROUP = 'default'


def path_str(path) -> str:
  """'/'-joined name of a pytree key path."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def make_schedule(optim, peak_lr: float, total_steps: int) -> optax.Schedule:
  """Warmup (linear from 0) followed by cosine / linear decay or a constant."""
  warmup = int(optim.warmup_steps)
  decay_steps = max(int(total_steps) - warmup, 1)
  end = peak_lr * float(optim.end_lr_factor)
  if optim.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=float(optim.end_lr_factor))
  elif optim.schedule == 'linear':
    main = optax.linear_schedule(peak_lr, end, decay_steps)
  elif optim.schedule == 'constant':
    main = optax.constant_schedule(peak_lr)
  else:
    raise ValueError(f"optim.schedule must be 'cosine', 'linear' or 'constant', got {optim.schedule!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), main], [warmup])


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The optax transform plus what the trainer logs about it."""
  tx: optax.GradientTransformation
  schedules: Mapping[str, optax.Schedule]  # per non-frozen group
  labels: Callable[[Any], Any]  # params -> tree of group names
  frozen: tuple[str, ...]


def assign_groups(params: Any, groups: Mapping[str, Any]) -> Any:
  """Tree of group names, one per parameter; the first matching regex wins."""
  compiled = [(name, re.compile(g['regex'])) for name, g in groups.items()]

  def label(path, _):
    p = path_str(path)
    for name, rx in compiled:
      if rx.search(p):
        return name
    return DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def _base_tx(optim, lr: optax.Schedule) -> optax.GradientTransformation:
  if optim.name == 'adamw':
    # Decay matrices only: norms' scales and biases are left alone.
    return optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                       mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p))
  if optim.name == 'sgd':
    return optax.sgd(lr, momentum=optim.momentum or None)
  raise ValueError(f"optim.name must be 'adamw' or 'sgd', got {optim.name!r}")


def make_optimizer(optim, total_steps: int) -> Optimizer:
  """Builds the optimiser described by `config.optim`."""
  groups = dict(optim.groups) if optim.groups else {}
  if DEFAULT_GROUP in groups:
    raise ValueError(f"optim.groups may not define a group named {DEFAULT_GROUP!r}")
  for name, g in groups.items():
    try:
      re.compile(g['regex'])
    except re.error as e:
      raise ValueError(f'optim.groups.{name}.regex {g["regex"]!r} is not a valid regex: {e}') from e
  schedules, transforms, frozen = {}, {}, []
  for name, g in list(groups.items()) + [(DEFAULT_GROUP, {'lr': optim.lr, 'frozen': False})]:
    if g.get('frozen', False):
      transforms[name] = optax.set_to_zero()
      frozen.append(name)
      continue
    peak = float(g['lr']) if float(g.get('lr', -1.0)) >= 0 else float(optim.lr)
    schedules[name] = make_schedule(optim, peak, total_steps)
    transforms[name] = _base_tx(optim, schedules[name])

  labels = lambda params: assign_groups(params, groups)  # noqa: E731
  chain = []
  if optim.clip_norm and optim.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(float(optim.clip_norm)))
  chain.append(optax.multi_transform(transforms, labels))
  return Optimizer(optax.chain(*chain), schedules, labels, tuple(frozen))


def group_norms(grads: Any, labels: Any, names) -> dict[str, jax.Array]:
  """Global L2 norm of the gradient within each group."""
  out = {}
  for name in names:
    sel = jax.tree.map(lambda g, lab, n=name: g if lab == n else jnp.zeros((), g.dtype), grads, labels)
    out[name] = optax.global_norm(sel)
  return out
