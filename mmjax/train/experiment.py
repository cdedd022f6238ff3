"""The trainer's contract with a paper: `Experiment` (what to train) and `Context` (the run it trains in)."""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from mmjax.data import make_global_batch
from mmjax.train.hooks import Hook
from mmjax.train.sharding import logical_shardings
from mmjax.train.step import LossFn, TrainStep

Params = Any


@dataclasses.dataclass(frozen=True)
class Context:
  """What evaluators, hooks and frozen loaders need to run under the trainer's mesh."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  rules: tuple
  batch_sharding: NamedSharding

  def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return make_global_batch(local_batch, self.batch_sharding)

  def gather(self, x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) global array, as numpy on every process."""
    if jax.process_count() == 1 or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def place(self, tree: Any) -> Any:
    """`tree` on the mesh: leaves boxed with logical axis names (`nn.with_logical_partitioning`) are sharded by
    the run's rules, other leaves replicated. Every process passes the same values."""
    shardings = logical_shardings(tree, self.mesh, self.rules)
    return jax.device_put(nn.meta.unbox(tree), shardings)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One paper's training program, as the trainer sees it.

  init_params: rng -> params (a nested dict), each leaf boxed with logical axis names (flax
    `nn.with_logical_partitioning`).
  loss_fn: (params, batch, rng, step) -> (scalar loss, dict of scalar aux metrics), for the default step. params
    holds the frozen subtrees too; step is the int32 number of completed steps (0 in the first). Runs inside jit
    under the mesh and logical rules. None when `train_step` is given.
  train_data: a pipeline from `mmjax.data.make_pipeline`: item n is this process's share
    of global batch n (dict of numpy arrays).
  evaluators: name -> (params, Context) -> dict of scalar metrics, run every `eval_every` steps and at the end on
    `TrainState.eval_params()` (the EMA where there is one, and the frozen subtrees).
  report: optional (params, Context) -> dict, run once after training (plots, samples).
  flops_per_example: model FLOPs of one training example (forward + backward), for MFU.
  train_step: optional (TrainState, batch, rng) -> (TrainState, metrics) replacing the default step (see
    `mmjax.train.step`): several optimisers, alternating updates, lazy regularisation, a reference model.
  optimizers: optional {name: config key of an optimiser sub-dict (keys of `optim_config()`)}; default
    {'main': 'optim'}. Each updates the parameters its sub-dict's `regex` selects; no parameter may have two.
  init_extra: optional rng -> tree of non-gradient buffers (`TrainState.extra`; leaves may carry logical axis
    names), checkpointed with the params.
  load_frozen: optional Context -> tree placed on the mesh (e.g. with `Context.place`), called at every start
    (fresh or resumed): `TrainState.frozen`, never optimised, averaged or checkpointed.
  hooks: objects run by the step loop (see `mmjax.train.hooks.Hook`): `every`, `__call__(state, step, ctx)`.
  """
  init_params: Callable[[jax.Array], Params]
  loss_fn: LossFn | None
  train_data: Any
  evaluators: Mapping[str, Callable[[Params, Context], Mapping[str, float]]] = dataclasses.field(
      default_factory=dict)
  report: Callable[[Params, Context], Mapping[str, Any]] | None = None
  flops_per_example: float | None = None
  train_step: TrainStep | None = None
  optimizers: Mapping[str, str] | None = None
  init_extra: Callable[[jax.Array], Any] | None = None
  load_frozen: Callable[[Context], Params] | None = None
  hooks: Sequence[Hook] = ()


def load_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Imports `config.experiment` and calls its `make_experiment(config)`."""
  if not config.get('experiment'):
    raise ValueError('config.experiment must name a module with make_experiment(config)')
  return importlib.import_module(config.experiment).make_experiment(config)
