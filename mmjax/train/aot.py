"""Ahead-of-time lowering at real size without the devices: the training step of an experiment and a generation
step, on an abstract mesh (MaxText's train_compile).

  lowered = lower_train_step(get_config('size=72b'), {'data': 1, 'fsdp': 32, 'tensor': 8})
  lowered.seconds, lowered.setup.num_params, lowered.lowered.as_text()

The training step is the trainer's own (`TrainSetup.build_step`: the same state, shardings, optimisers and jit), traced
with `jax.ShapeDtypeStruct`s on a `jax.sharding.AbstractMesh`, so a 72B step on a 256-device pod lowers on a laptop
in seconds (with `scan_layers`). The data comes from the experiment module's `abstract_experiment(config) ->
(Experiment, {batch key: ShapeDtypeStruct of the global batch})`, which builds the model and loss without reading
any data. Lowering checks shapes, dtypes, shardings and the program; compiling needs the devices
(`launch.py --mode compile` only lowers).
"""
from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmjax.generate import decode_loop as loop
from mmjax.generate.adapters import as_adapter
from mmjax.generate.batching import bucket
from mmjax.generate.sampling import sampling_setup
from mmjax.generate.session import request_keys, stop_rules
from mmjax.train.mesh import resolve_axis_sizes
from mmjax.train.sharding import DEFAULT_RULES, fit_sharding, logical_shardings, rules_from_config
from mmjax.train.trainer import TrainSetup

__all__ = ['LoweredStep', 'abstract_mesh', 'lower_generation', 'lower_train_step', 'summary']


def abstract_mesh(axes: Mapping[str, int], num_devices: int | None = None) -> AbstractMesh:
  """An AbstractMesh of `axes` (name -> size; one -1 fills `num_devices`), every axis `Auto` as in make_mesh."""
  sizes = resolve_axis_sizes(axes, num_devices if num_devices is not None else _product(axes))
  names = tuple(sizes)
  return AbstractMesh(tuple(sizes[n] for n in names), names, axis_types=(AxisType.Auto,) * len(names))


def _product(axes: Mapping[str, int]) -> int:
  if any(v == -1 for v in axes.values()):
    raise ValueError(f'mesh {dict(axes)} has a -1: give the number of devices to lower for (--compile_devices)')
  out = 1
  for v in axes.values():
    out *= v
  return out


@dataclasses.dataclass(frozen=True)
class LoweredStep:
  """A lowered program: `lowered` (jax.stages.Lowered), `seconds` (tracing + lowering, wall clock), the
  `TrainSetup` it came from (None for generation) and the abstract `args` it was lowered for."""
  lowered: Any
  seconds: float
  setup: TrainSetup | None
  args: tuple


def lower_train_step(config: ml_collections.ConfigDict, mesh: Mapping[str, int] | AbstractMesh | Mesh | None = None,
                     *, num_devices: int | None = None, platform: str = 'cpu') -> LoweredStep:
  """The trainer's step of `config.experiment`, lowered for `platform` on an abstract mesh.

  mesh: axis sizes (default config.mesh; a -1 fills num_devices), an AbstractMesh, or a concrete Mesh (then
  `.lowered.compile()` compiles for its devices: the benchmarks' compile times). The state and batch are
  ShapeDtypeStructs carrying the run's NamedShardings; the trace runs under the mesh and logical rules, so the
  activations' logical constraints are in the program. Raises ValueError when the experiment module has no
  `abstract_experiment(config)` or the mesh does not fit.
  """
  if not isinstance(mesh, (AbstractMesh, Mesh)):
    mesh = abstract_mesh(dict(config.mesh) if mesh is None else mesh, num_devices)
  module = importlib.import_module(config.experiment)
  make = getattr(module, 'abstract_experiment', None)
  if make is None:
    raise ValueError(f'config.experiment={config.experiment!r} defines no abstract_experiment(config) -> '
                     '(Experiment, batch ShapeDtypeStructs), so its step cannot be lowered without data')
  experiment, batch = make(config)
  setup = TrainSetup(config, experiment, mesh=mesh)
  shardings = setup.state_shardings
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       setup.abstract_state.replace(frozen={}), shardings)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=setup.batch_sharding) for k, v in batch.items()}
  step = setup.build_step()
  start = time.perf_counter()
  with setup.scope():
    traced = step.trace(state, batch)
  lowered = traced.lower(lowering_platforms=(platform,))
  return LoweredStep(lowered, time.perf_counter() - start, setup, (state, batch))


def lower_generation(module: nn.Module, mesh: Mapping[str, int] | AbstractMesh, *, rows: int, prompt_len: int,
                     max_new_tokens: int, rules: Mapping[str, Any] | None = None, platform: str = 'cpu'
                     ) -> dict[str, LoweredStep]:
  """The engine's programs for one batch of `rows` prompts of `prompt_len` tokens (bucketed lengths) and a budget of
  max_new_tokens, on an abstract mesh with parameters sharded by their logical names (`rules`, default
  DEFAULT_RULES) and the KV cache's rows and KV heads over the batch and kv_heads axes, as
  `mmjax.generate.sharding` places them: {'prefill': ..., 'decode_loop': ...} (greedy decoding)."""
  if not isinstance(mesh, AbstractMesh):
    mesh = abstract_mesh(mesh)
  table = rules_from_config(DEFAULT_RULES if rules is None else rules, mesh)
  adapter = as_adapter(module)
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))['params']
  params = _with_shardings(nn.meta.unbox(boxed), logical_shardings(boxed, mesh, table))
  rows_spec = NamedSharding(mesh, P(dict(table).get('batch')))
  tokens = jax.ShapeDtypeStruct((rows, prompt_len), jnp.int32, sharding=fit_sharding(rows_spec, (rows,)))
  lengths = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=tokens.sharding)
  budget = bucket(max_new_tokens, minimum=8)
  cache_len = loop.cache_len(prompt_len, budget)
  out = {}
  start = time.perf_counter()
  with jax.sharding.use_abstract_mesh(mesh):
    traced = loop.prefill.trace(adapter, params, tokens, lengths, {}, static_inputs=(), cache_len=cache_len)
  out['prefill'] = LoweredStep(traced.lower(lowering_platforms=(platform,)), time.perf_counter() - start, None,
                               (params, tokens, lengths))

  logits, cache = traced.out_info
  specs = cache.partition_specs(dict(table).get('batch'), dict(table).get('kv_heads'))
  cache = jax.tree.map(lambda leaf, spec: jax.ShapeDtypeStruct(
      leaf.shape, leaf.dtype, sharding=fit_sharding(NamedSharding(mesh, spec), leaf.shape)), cache, specs,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  filters, values = sampling_setup(0.0, None, None, None)
  stop = stop_rules(max_new_tokens, 0, None, adapter.vocab_size)
  real = jax.ShapeDtypeStruct((rows,), jnp.bool_)
  keys = jax.eval_shape(lambda: request_keys(0, jnp.zeros(rows, jnp.uint32)))
  state = jax.eval_shape(lambda c: loop.begin(logits, c, real, keys, jnp.zeros(rows, jnp.int32), budget=budget),
                         cache)
  state = state.replace(cache=cache)
  small = _abstract((values, stop, jnp.int32(max_new_tokens)))
  start = time.perf_counter()
  with jax.sharding.use_abstract_mesh(mesh):
    traced = loop.decode_loop.trace(adapter, params, state, *small, filters=filters)
  out['decode_loop'] = LoweredStep(traced.lower(lowering_platforms=(platform,)), time.perf_counter() - start, None,
                                   (params, state))
  return out


def _with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def summary(lowered: LoweredStep) -> dict[str, Any]:
  """What `launch.py --mode compile` prints: mesh, parameter count, lowering seconds, size of the program."""
  setup = lowered.setup
  return {'mesh': dict(setup.mesh.shape), 'num_params': setup.num_params, 'lower_seconds': round(lowered.seconds, 2),
          'stablehlo_chars': len(lowered.lowered.as_text())}
