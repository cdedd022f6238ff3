"""`TrainState`: everything one training run carries from step to step.

Fields:
  step: int32 scalar, the number of completed train steps.
  rng: the run's base PRNG key; step s draws `jax.random.fold_in(rng, s)`.
  params: the trained parameters (a nested dict; leaves are arrays).
  opt_states: {optimiser name: OptState}, one per named optimiser.
  ema: None, or the exponential moving average of the parameters `config.ema_regex` selects: a nested dict with
    the same paths as those parameters (and no others).
  extra: non-gradient buffers (running means, path-length averages) that a custom step updates; {} by default.
  frozen: subtrees that are neither optimised, averaged nor checkpointed (a DPO reference, a frozen VAE, a
    teacher): the experiment's `load_frozen` places them on the mesh at every start, fresh or resumed.
  optimizers: (static) the named `Optimizer`s, so a custom step applies one by name with `apply_gradients`.

A checkpoint holds `saved()`: every field except `frozen` and `optimizers`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from mmjax.train.optimizer import Optimizer

Params = Any


def select(tree: Params, regex_match) -> Params:
  """The nested dict of the leaves of `tree` whose '/'-joined path `regex_match(path)` accepts."""
  flat = traverse_util.flatten_dict(tree, sep='/')
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if regex_match(k)}, sep='/')


def overlay(base: Params, top: Params) -> Params:
  """`base` with the leaves of `top` (same paths) substituted."""
  if not top:
    return base
  flat = traverse_util.flatten_dict(base, sep='/')
  flat.update(traverse_util.flatten_dict(top, sep='/'))
  return traverse_util.unflatten_dict(flat, sep='/')


def union(params: Params, frozen: Params) -> Params:
  """One tree holding both the trained `params` and the `frozen` subtrees (whose paths must not collide)."""
  if not frozen:
    return params
  flat = traverse_util.flatten_dict(params, sep='/')
  extra = traverse_util.flatten_dict(frozen, sep='/')
  clash = sorted(set(flat) & set(extra))
  if clash:
    raise ValueError(f'load_frozen returned paths that the params also hold: {", ".join(clash[:5])}')
  flat.update(extra)
  return traverse_util.unflatten_dict(flat, sep='/')


@struct.dataclass
class TrainState:
  """The state of a training run (see the module docstring)."""
  step: jax.Array
  rng: jax.Array
  params: Params
  opt_states: dict[str, Any]
  ema: Params | None = None
  extra: Any = struct.field(default_factory=dict)
  frozen: Params = struct.field(default_factory=dict)
  optimizers: tuple[Optimizer, ...] = struct.field(pytree_node=False, default=())

  def optimizer(self, name: str) -> Optimizer:
    for opt in self.optimizers:
      if opt.name == name:
        return opt
    raise KeyError(f'no optimiser named {name!r}; the run has {[o.name for o in self.optimizers]}')

  def apply_gradients(self, grads: Params, optimizer: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Applies optimiser `optimizer` (default: the only one) to the parameters it owns.

    grads: a tree like `params`; entries of parameters the optimiser does not update are ignored.
    Returns the new state and the optimiser's metrics ('grad_norm', 'lr', per group 'grad_norm/<g>', 'lr/<g>').
    """
    if optimizer is None:
      if len(self.optimizers) != 1:
        raise ValueError(f'apply_gradients needs an optimiser name; the run has {[o.name for o in self.optimizers]}')
      optimizer = self.optimizers[0].name
    params, opt_state, metrics = self.optimizer(optimizer).update(grads, self.opt_states[optimizer], self.params)
    return self.replace(params=params, opt_states={**self.opt_states, optimizer: opt_state}), metrics

  def model_params(self, params: Params | None = None) -> Params:
    """`params` (default: the state's) together with the frozen subtrees: what the model's apply sees."""
    return union(self.params if params is None else params, self.frozen)

  def eval_params(self) -> Params:
    """The parameters to evaluate: the EMA where there is one, the trained params elsewhere, and the frozen ones."""
    return union(overlay(self.params, self.ema), self.frozen)

  def update_ema(self, decay: float, keep: jax.Array | bool = False) -> TrainState:
    """ema <- decay * ema + (1 - decay) * params on the EMA's paths; unchanged where `keep` is True."""
    if self.ema is None:
      return self
    current = select(self.params, traverse_util.flatten_dict(self.ema, sep='/').__contains__)
    ema = jax.tree.map(lambda e, p: jnp.where(keep, e, e * decay + p * (1.0 - decay)), self.ema, current)
    return self.replace(ema=ema)

  def saved(self) -> dict[str, Any]:
    """What a checkpoint holds: everything but the frozen subtrees."""
    out = {'step': self.step, 'rng': self.rng, 'params': self.params, 'opt_states': self.opt_states}
    if self.ema is not None:
      out['ema'] = self.ema
    if self.extra:
      out['extra'] = self.extra
    return out

  @classmethod
  def from_saved(cls, saved: dict[str, Any], optimizers: tuple[Optimizer, ...], frozen: Params) -> TrainState:
    return cls(step=saved['step'], rng=saved['rng'], params=saved['params'], opt_states=dict(saved['opt_states']),
               ema=saved.get('ema'), extra=saved.get('extra', {}), frozen=frozen, optimizers=optimizers)
