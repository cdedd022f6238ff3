"""The one trainer: `train_and_evaluate(config, workdir)`.

An experiment hands the trainer an `Experiment`: how to initialise the params, the loss,
the training data and the evaluators. The trainer owns everything else: mesh and
shardings, the jitted step, optimiser, EMA, checkpoints and resume, metrics, profiling,
NaN guard and SIGTERM handling.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.data import iterator_state_to_json, make_global_batch, make_iterator
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import optimizer as optim_lib
from mmjax.train.mesh import make_mesh
from mmjax.train.metrics import MetricsWriter, Progress, peak_flops, quiet_library_logs
from mmjax.train.sharding import batch_sharding, logical_shardings, rules_from_config

Params = Any
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Context:
  """What evaluators and reports need to run under the trainer's mesh."""
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


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One paper's training program, as the trainer sees it.

  init_params: rng -> params, each leaf boxed with logical axis names (flax
    `nn.with_logical_partitioning`).
  loss_fn: (params, batch, rng) -> (scalar loss, dict of scalar aux metrics). Runs
    inside jit under the mesh and logical rules.
  train_data: a pipeline from `mmjax.data.make_pipeline`: item n is this process's share
    of global batch n (dict of numpy arrays).
  evaluators: name -> (params, Context) -> dict of scalar metrics, run every
    `eval_every` steps and at the end (on the EMA params when `ema_decay` > 0).
  report: optional (params, Context) -> dict, run once after training (plots, samples).
  flops_per_example: model FLOPs of one training example (forward + backward), for MFU.
  """
  init_params: Callable[[jax.Array], Params]
  loss_fn: Callable[[Params, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
  train_data: Any
  evaluators: Mapping[str, Callable[[Params, Context], Mapping[str, float]]] = dataclasses.field(
      default_factory=dict)
  report: Callable[[Params, Context], Mapping[str, Any]] | None = None
  flops_per_example: float | None = None


def load_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Imports `config.experiment` and calls its `make_experiment(config)`."""
  if not config.get('experiment'):
    raise ValueError('config.experiment must name a module with make_experiment(config)')
  return importlib.import_module(config.experiment).make_experiment(config)


class _Preemption:
  """Turns SIGTERM into a stop request the loop polls after each step.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption sync manager
  (set up by jax.distributed) propagates a SIGTERM seen by any process and names one step at
  which every process stops, so all of them join the same final checkpoint.
  """

  def __init__(self):
    self._flag = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: will checkpoint after the current step and exit.')
    self._flag = True

  def requested(self, step: int) -> bool:
    """Call once per step, on every process, with the same step numbers."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class TrainSetup:
  """Mesh, shardings, optimiser and the jitted init/step of one run (benchmarks build steps from it)."""

  def __init__(self, config, experiment: Experiment):
    self.config = config
    self.exp = experiment
    self.mesh = make_mesh(dict(config.mesh))
    self.rules = rules_from_config(dict(config.sharding_rules), self.mesh)
    self.batch_sharding = batch_sharding(self.mesh, self.rules)
    self.opt = optim_lib.make_optimizer(config.optim, config.total_steps)
    self.replicated = NamedSharding(self.mesh, P())
    if config.batch_size % config.grad_accum_steps:
      raise ValueError(f'batch_size {config.batch_size} is not divisible by grad_accum_steps '
                       f'{config.grad_accum_steps}')
    with self.scope():
      boxed = jax.eval_shape(experiment.init_params, jax.random.PRNGKey(0))
      self.param_shardings = logical_shardings(boxed, self.mesh, self.rules)
      abstract_params = jax.tree.map(lambda b: b.value if isinstance(b, nn.meta.AxisMetadata) else b, boxed,
                                     is_leaf=lambda b: isinstance(b, nn.meta.AxisMetadata))
      self.labels = self.opt.labels(abstract_params)
      abstract_opt = jax.eval_shape(self.opt.tx.init, abstract_params)
    # A group's optimiser state holds MaskedNode (no array) for the other groups' parameters.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(
        self.opt.tx, lambda v, s: v if masked(v) else s, abstract_opt, self.param_shardings,
        transform_non_params=lambda _: self.replicated, is_leaf=masked)
    self.state_shardings = {
        'step': self.replicated, 'rng': self.replicated,
        'params': self.param_shardings, 'opt_state': opt_shardings,
    }
    if config.ema_decay > 0:
      self.state_shardings['ema_params'] = self.param_shardings
    self.abstract_state = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
    self.groups = sorted(set(jax.tree.leaves(self.labels)))
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))

  def scope(self) -> contextlib.ExitStack:
    """Mesh + logical rules context for tracing model code."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _init_state(self, rng, params=None):
    init_rng, train_rng = jax.random.split(rng)
    if params is None:
      params = nn.meta.unbox(self.exp.init_params(init_rng))
    state = {'step': jnp.zeros((), jnp.int32), 'rng': train_rng, 'params': params,
             'opt_state': self.opt.tx.init(params)}
    if self.config.ema_decay > 0:
      state['ema_params'] = jax.tree.map(jnp.copy, params)
    return state

  def init_state(self, rng, params=None):
    """The step-0 state: params from the experiment's init, or the given (already sharded) params, which are
    then used as they are (no random init is computed: a 72B start from a checkpoint never holds two copies)."""
    with self.scope():
      if params is None:
        return jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
      return jax.jit(self._init_state, out_shardings=self.state_shardings, donate_argnums=1)(rng, params)

  def abstract_with_shardings(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)

  def build_step(self):
    cfg, opt, labels = self.config, self.opt, self.labels
    frozen = set(opt.frozen)
    accum = int(cfg.grad_accum_steps)
    loss_and_grad = jax.value_and_grad(self.exp.loss_fn, has_aux=True)
    default_schedule = opt.schedules.get(optim_lib.DEFAULT_GROUP) or next(iter(opt.schedules.values()))

    def compute_grads(params, batch, rng):
      if accum == 1:
        return loss_and_grad(params, batch, rng)
      micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

      def body(carry, xs):
        i, mb = xs
        (loss, aux), g = loss_and_grad(params, mb, jax.random.fold_in(rng, i))
        acc_g, acc_loss, acc_aux = carry
        return (jax.tree.map(jnp.add, acc_g, g), acc_loss + loss,
                jax.tree.map(jnp.add, acc_aux, aux)), None

      zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      aux_shape = jax.eval_shape(lambda: loss_and_grad(params, jax.tree.map(lambda x: x[0], micro), rng)[0][1])
      zeros_aux = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape)
      (g, loss, aux), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_aux),
                                       (jnp.arange(accum), micro))
      scale = 1.0 / accum
      g = jax.tree.map(lambda x, p: (x * scale).astype(p.dtype), g, params)
      return (loss * scale, jax.tree.map(lambda a: a * scale, aux)), g

    def step_fn(state, batch):
      rng = jax.random.fold_in(state['rng'], state['step'])
      (loss, aux), grads = compute_grads(state['params'], batch, rng)
      if frozen:  # frozen groups get no gradient, so XLA can skip computing it
        grads = jax.tree.map(lambda g, lab: jnp.zeros_like(g) if lab in frozen else g, grads, labels)
      grad_norm = optax.global_norm(grads)
      updates, opt_state = opt.tx.update(grads, state['opt_state'], state['params'])
      params = optax.apply_updates(state['params'], updates)
      new = {'step': state['step'] + 1, 'rng': state['rng'], 'params': params, 'opt_state': opt_state}
      if 'ema_params' in state:
        d = cfg.ema_decay
        new['ema_params'] = jax.tree.map(lambda e, p: e * d + p * (1.0 - d), state['ema_params'], params)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      # A non-finite step leaves the state untouched, so no later checkpoint holds NaNs.
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      metrics = {'loss': loss, 'grad_norm': grad_norm, 'lr': default_schedule(state['step']),
                 'finite': finite}
      if len(self.groups) > 1:
        for name, norm in optim_lib.group_norms(grads, labels, self.groups).items():
          if name not in frozen:
            metrics[f'grad_norm/{name}'] = norm
        for name, sched in opt.schedules.items():
          metrics[f'lr/{name}'] = sched(state['step'])
      metrics.update(aux)
      return new, metrics

    with self.scope():
      return jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                     out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))


def _check_finite(step: int, m: Mapping[str, Any]) -> None:
  if bool(m['finite']):
    return
  bad = [k for k, v in m.items() if k.startswith('grad_norm/') and not np.isfinite(v)]
  raise FloatingPointError(
      f'Non-finite training step {step}: loss={float(m["loss"])}, grad_norm={float(m["grad_norm"])}'
      + (f'; non-finite gradient in groups {", ".join(k.split("/", 1)[1] for k in bad)}' if bad else '')
      + '. The state of the previous step was kept; the last checkpoint is intact.')


def evaluate(setup: TrainSetup, state, ctx: Context) -> dict[str, float]:
  params = state.get('ema_params', state['params'])
  out = {}
  with setup.scope():
    for name, fn in setup.exp.evaluators.items():
      for k, v in fn(params, ctx).items():
        out[f'{name}/{k}'] = float(v)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       experiment: Experiment | None = None, *,
                       stop_after_step: int | None = None) -> dict[str, Any]:
  """Trains `experiment` (default: `load_experiment(config)`) in `workdir`, resuming if possible.

  Args:
    config: a ConfigDict holding the keys of `mmjax.train.config.base_config()`.
    workdir: where checkpoints, metrics.jsonl, reports and traces go. A rerun with the
      same workdir resumes from the latest checkpoint.
    experiment: the Experiment to train.
    stop_after_step: checkpoint and return once this step is done (for time-sliced jobs);
      the schedule still spans `config.total_steps`.

  Returns:
    {'step': last step, 'eval': final eval metrics, 'report': report output,
     'preempted': whether SIGTERM or stop_after_step ended the run early}.
  """
  os.makedirs(workdir, exist_ok=True)
  quiet_library_logs()
  experiment = experiment or load_experiment(config)
  setup = TrainSetup(config, experiment)
  is_primary = jax.process_index() == 0
  ctx = Context(config, workdir, setup.mesh, setup.rules, setup.batch_sharding)
  logging.info('mesh %s on %d devices (%d processes); %s parameters',
               dict(setup.mesh.shape), jax.device_count(), jax.process_count(), f'{setup.num_params:,}')
  peak = peak_flops(jax.devices()[0].device_kind)
  step_flops = (experiment.flops_per_example or 0.0) * config.batch_size
  if step_flops:
    logging.info('model FLOPs per step: %.3e; MFU %s', step_flops,
                 f'is logged against {peak:.3g} FLOP/s per device' if peak else
                 f'is not logged: no peak FLOP/s known for {jax.devices()[0].device_kind!r}')

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=config.ckpt_every,
                               keep=config.keep_ckpts, async_save=config.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_compatible(latest, setup.abstract_state, config)
    state, data_state = ckpt.restore(latest, setup.abstract_with_shardings())
    data_iter = make_iterator(experiment.train_data, state_json=data_state['iterator'])
    logging.info('Resumed from the checkpoint at step %d in %s', latest, workdir)
  else:
    params = None
    if config.get('init_from'):
      abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              setup.abstract_state['params'], setup.param_shardings)
      params = ckpt_lib.load_params(config.init_from, abstract)
      logging.info('Initialised the params from %s', config.init_from)
    state = setup.init_state(jax.random.PRNGKey(config.seed), params=params)
    data_iter = make_iterator(experiment.train_data)
  start = int(jax.device_get(state['step']))

  writer = MetricsWriter(workdir, tensorboard=config.tensorboard, is_primary=is_primary)
  if start == 0 and latest is None:
    writer.write(0, {'num_params': setup.num_params}, kind='setup')
  step_fn = setup.build_step()
  t0 = time.perf_counter()
  compiled_at = None
  progress = Progress(start=start, total=config.total_steps, batch_size=config.batch_size,
                      enabled=config.progress_bar and is_primary)
  profile = tuple(config.profile_steps or ())
  pending = None  # (step, device metrics) of the previous step: checked one step late
  last_log = (start, time.perf_counter())
  preempted = False
  final_eval: dict[str, float] = {}

  def flush(p):
    nonlocal last_log
    step, dev = p
    m = jax.device_get(dev)
    _check_finite(step, m)
    if step % config.log_every == 0 or step == config.total_steps:
      now = time.perf_counter()
      sps = (step - last_log[0]) / max(now - last_log[1], 1e-9)
      last_log = (step, now)
      scalars = {k: v for k, v in m.items() if k != 'finite'}
      scalars.update(steps_per_sec=sps, examples_per_sec=sps * config.batch_size)
      if step_flops and peak:
        scalars['mfu'] = step_flops * sps / (peak * jax.device_count())
      writer.write(step, scalars)
    progress.update(step, float(m['loss']))

  with _Preemption() as preemption:
    try:
      for step in range(start + 1, config.total_steps + 1):
        if profile and step == profile[0]:
          jax.profiler.start_trace(os.path.join(workdir, 'profile'))
        local = next(data_iter)
        batch = make_global_batch(local, setup.batch_sharding)
        state, metrics = step_fn(state, batch)
        if compiled_at is None:
          jax.block_until_ready(metrics)
          compiled_at = time.perf_counter() - t0
          logging.info('first step (compile + run) took %.2fs', compiled_at)
        if pending is not None:
          flush(pending)
        pending = (step, metrics)
        if profile and step == profile[-1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          logging.info('profile of steps %s written to %s', profile, os.path.join(workdir, 'profile'))
        preempted_now = preemption.requested(step)
        stop_now = preempted_now or (stop_after_step is not None and step >= stop_after_step)
        if stop_now or step == config.total_steps or step % config.ckpt_every == 0:
          flush(pending)  # never checkpoint a state whose step has not been checked
          pending = None
          ckpt.save(step, state, {'iterator': iterator_state_to_json(data_iter)}, config, force=stop_now or step == config.total_steps)
        if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
          writer.write(step, evaluate(setup, state, ctx), kind='eval')
        if stop_now:
          preempted = True
          logging.warning('Stopping after step %d with a checkpoint (%s).', step,
                          'SIGTERM' if preempted_now else 'stop_after_step')
          break
      if pending is not None:
        flush(pending)
    finally:
      progress.close()
      ckpt.close()
  step = int(jax.device_get(state['step']))
  report = None
  if not preempted:
    final_eval = evaluate(setup, state, ctx)
    if final_eval:
      writer.write(step, final_eval, kind='eval')
    if experiment.report is not None:  # every process joins; the report writes files on process 0
      with setup.scope():
        report = experiment.report(state.get('ema_params', state['params']), ctx)
  writer.close()
  return {'step': step, 'eval': final_eval, 'report': report, 'preempted': preempted,
          'state': state}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        experiment: Experiment | None = None, *, step: int | None = None) -> dict[str, Any]:
  """Restores a checkpoint of `workdir` (default: the latest) and runs the evaluators."""
  experiment = experiment or load_experiment(config)
  setup = TrainSetup(config, experiment)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=config.ckpt_every,
                               keep=config.keep_ckpts, async_save=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint to evaluate in {os.path.join(workdir, "checkpoints")}')
  ckpt.check_compatible(step, setup.abstract_state, config)
  state, _ = ckpt.restore(step, setup.abstract_with_shardings())
  ckpt.close()
  ctx = Context(config, workdir, setup.mesh, setup.rules, setup.batch_sharding)
  results = evaluate(setup, state, ctx)
  writer = MetricsWriter(workdir, is_primary=jax.process_index() == 0)
  writer.write(step, results, kind='eval')
  writer.close()
  return {'step': step, 'eval': results, 'state': state}
