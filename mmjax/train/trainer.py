"""The one trainer: `train_and_evaluate(config, workdir)`.

An experiment hands the trainer an `Experiment`: how to initialise the params, the loss (or its own train step),
the training data, the evaluators and hooks. The trainer owns everything else: mesh and shardings, the jitted
step, optimisers, EMA, frozen subtrees, checkpoints and resume, metrics, profiling, NaN guard and signals.

A run is three parts: `restore_or_init` (the newest checkpoint that restores, else init_from, else a fresh init),
`run_steps` (the step loop), and hooks that the loop runs every N steps (`mmjax.train.hooks`). A training run holds
its workdir's lock (`mmjax.train.workdir_lock`); `evaluate_checkpoint` only reads the workdir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from mmjax.data import iterator_state_to_json, make_global_batch, make_iterator
from mmjax.train import checkpoint as ckpt_lib, hooks as hooks_lib, optimizer as optim_lib
from mmjax.train.experiment import Context, Experiment, load_experiment
from mmjax.train.mesh import make_mesh
from mmjax.train.metrics import MetricsWriter, Progress, peak_flops, quiet_library_logs
from mmjax.train.sharding import batch_sharding, logical_shardings, rules_from_config
from mmjax.train.state import TrainState, select, union
from mmjax.train.step import default_train_step
from mmjax.train.workdir_lock import LOCK_NAME, workdir_lock
from mmjax.weights.source import WeightsMismatchError

__all__ = ['Context', 'Experiment', 'TrainSetup', 'evaluate', 'evaluate_checkpoint', 'load_experiment',
           'restore_checkpoint', 'restore_or_init', 'run_steps', 'train_and_evaluate']


def _config_at(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    if part not in node:
      raise ValueError(f'Experiment.optimizers names config.{key}, which the config lacks')
    node = node[part]
  return node


def _unboxed(tree: Any) -> Any:
  return jax.tree.map(lambda b: b.value if isinstance(b, nn.meta.AxisMetadata) else b, tree,
                      is_leaf=lambda b: isinstance(b, nn.meta.AxisMetadata))  # unbox() would constrain


def _size(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


class TrainSetup:
  """Mesh, shardings, optimisers and the jitted init/step of one run (benchmarks build steps from it)."""

  def __init__(self, config: ml_collections.ConfigDict, experiment: Experiment, workdir: str = '',
               mesh: Mesh | AbstractMesh | None = None):
    self.config = config
    self.exp = experiment
    if experiment.loss_fn is None and experiment.train_step is None:
      raise ValueError('Experiment needs a loss_fn (for the default step) or its own train_step')
    if config.batch_size % config.grad_accum_steps:
      raise ValueError(f'batch_size {config.batch_size} is not divisible by grad_accum_steps '
                       f'{config.grad_accum_steps}')
    self.mesh = make_mesh(dict(config.mesh)) if mesh is None else mesh  # an AbstractMesh: lowering only (aot.py)
    self.rules = rules_from_config(dict(config.sharding_rules), self.mesh)
    self.batch_sharding = batch_sharding(self.mesh, self.rules)
    self.replicated = NamedSharding(self.mesh, P())
    self.ctx = Context(config, workdir, self.mesh, self.rules, self.batch_sharding)
    with self.scope():
      boxed = jax.eval_shape(experiment.init_params, jax.random.PRNGKey(0))
      self.param_shardings = logical_shardings(boxed, self.mesh, self.rules)
      abstract_params = _unboxed(boxed)
      extra_shardings = {}
      if experiment.init_extra is not None:
        extra_shardings = logical_shardings(jax.eval_shape(experiment.init_extra, jax.random.PRNGKey(0)),
                                            self.mesh, self.rules)
    self.optimizers = self._make_optimizers(abstract_params)
    self.ema_match = None
    if config.ema_decay > 0:
      rx = re.compile(config.get('ema_regex') or '')
      self.ema_match = lambda path: bool(rx.search(path))  # noqa: E731
      if not jax.tree.leaves(select(abstract_params, self.ema_match)):
        raise ValueError(f'config.ema_regex {config.ema_regex!r} matches no parameter')
    with self.scope():
      # From the abstract params above: the model's init is traced once, not twice.
      self.abstract_state = jax.eval_shape(self._init_state, jax.random.PRNGKey(0), abstract_params)
    self.shardings = TrainState(
        step=self.replicated, rng=self.replicated, params=self.param_shardings,
        opt_states={name: optim_lib.mirror_shardings(s, abstract_params, self.param_shardings, self.replicated)
                    for name, s in self.abstract_state.opt_states.items()},
        ema=None if self.ema_match is None else select(self.param_shardings, self.ema_match),
        extra=extra_shardings, optimizers=self.optimizers)
    self.num_params = _size(abstract_params)
    self.group_sizes = {opt.name: opt.sizes(abstract_params) for opt in self.optimizers}
    self.num_unowned = self.num_params - sum(sum(s.values()) for s in self.group_sizes.values())
    self._frozen_abstract = None

  def _make_optimizers(self, abstract_params) -> tuple[optim_lib.Optimizer, ...]:
    keys = dict(self.exp.optimizers or {'main': 'optim'})
    opts = []
    for name, key in keys.items():
      opt = optim_lib.make_optimizer(_config_at(self.config, key), self.config.total_steps, name=name,
                                     where=f'config.{key}')
      opt.check(abstract_params)
      opts.append(opt)
    owner: dict[str, str] = {}
    for opt in opts:
      for path, lab in jax.tree_util.tree_flatten_with_path(opt.labels(abstract_params))[0]:
        if lab == optim_lib.UNOWNED:
          continue
        p = optim_lib.path_str(path)
        if p in owner:
          raise ValueError(f'parameter {p} is selected by two optimisers, {owner[p]!r} and {opt.name!r}: make '
                           f'the regexes of config.{keys[owner[p]]} and config.{keys[opt.name]} disjoint')
        owner[p] = opt.name
    return tuple(opts)

  def scope(self) -> contextlib.ExitStack:
    """Mesh + logical rules context for tracing model code."""
    stack = contextlib.ExitStack()
    abstract = isinstance(self.mesh, AbstractMesh)
    stack.enter_context(jax.sharding.use_abstract_mesh(self.mesh) if abstract else jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _init_state(self, rng, params=None) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    if params is None:
      params = nn.meta.unbox(self.exp.init_params(init_rng))
    extra = {}
    if self.exp.init_extra is not None:
      extra = nn.meta.unbox(self.exp.init_extra(jax.random.fold_in(init_rng, 1)))
    ema = None if self.ema_match is None else jax.tree.map(jnp.copy, select(params, self.ema_match))
    return TrainState(step=jnp.zeros((), jnp.int32), rng=train_rng, params=params,
                      opt_states={opt.name: opt.init(params) for opt in self.optimizers}, ema=ema, extra=extra,
                      optimizers=self.optimizers)

  def load_frozen(self) -> Any:
    """The experiment's frozen subtrees, loaded now (at every start: fresh or resumed) and placed on the mesh;
    leaves the loader left on the host are replicated."""
    if self.exp.load_frozen is None:
      tree = {}
    else:
      with self.scope():
        tree = self.exp.load_frozen(self.ctx)
      tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, self.replicated), tree)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    if self._frozen_abstract is None:
      union(self.abstract_state.params, abstract)  # raises if a frozen path is also a parameter
      self._frozen_abstract = abstract
    elif abstract != self._frozen_abstract:
      raise ValueError('Experiment.load_frozen returned different shapes or shardings than before')
    return tree

  @property
  def state_shardings(self) -> TrainState:
    """Shardings of the whole state, frozen subtrees included (they are loaded once to learn them if need be)."""
    if self._frozen_abstract is None:
      self.load_frozen()
    frozen = jax.tree.map(lambda a: a.sharding, self._frozen_abstract)
    return self.shardings.replace(frozen=frozen)

  def init_state(self, rng, params=None, frozen=None) -> TrainState:
    """The step-0 state: params from the experiment's init, or the given (already sharded) params, which are
    then used as they are (no random init is computed: a 72B start from a checkpoint never holds two copies);
    the frozen subtrees as given, else loaded."""
    frozen = self.load_frozen() if frozen is None else frozen
    with self.scope():
      if params is None:
        state = jax.jit(self._init_state, out_shardings=self.shardings)(rng)
      else:
        state = jax.jit(self._init_state, out_shardings=self.shardings, donate_argnums=1)(rng, params)
    return state.replace(frozen=frozen)

  def abstract_checkpoint(self) -> dict[str, Any]:
    """What a checkpoint holds (`TrainState.saved`), as ShapeDtypeStructs with this run's shardings."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state.saved(), self.shardings.saved())

  def restore(self, ckpt: ckpt_lib.Checkpointer, step: int) -> tuple[TrainState, dict[str, Any]]:
    """(state, data state) of checkpoint `step`, after checking it fits the config; frozen subtrees loaded."""
    ckpt.check_compatible(step, self.abstract_state.saved(), self.config)
    saved, data_state = ckpt.restore(step, self.abstract_checkpoint())
    return TrainState.from_saved(saved, self.optimizers, self.load_frozen()), data_state

  def size_metrics(self) -> dict[str, int]:
    """num_params, the parameters of every optimiser group, the unoptimised and the frozen ones."""
    out = {'num_params': self.num_params}
    several = len(self.optimizers) > 1
    for name, sizes in self.group_sizes.items():
      for group, n in sizes.items():
        out[f'num_params/{name}/{group}' if several else f'num_params/{group}'] = n
    if self.num_unowned:
      out['num_params/not_optimised'] = self.num_unowned
    if self._frozen_abstract:
      out['num_frozen_params'] = _size(self._frozen_abstract)
    return out

  def log_sizes(self) -> None:
    for opt in self.optimizers:
      rows = []
      for g in opt.groups:
        if g.name not in self.group_sizes[opt.name]:
          continue
        how = ('frozen' if g.frozen else f'{g.schedule} lr {g.lr:g}'
               + (f', frozen until step {g.frozen_until}' if g.frozen_until else ''))
        rows.append(f'{g.name} {self.group_sizes[opt.name][g.name]:,} ({how})')
      logging.info('optimiser %s (%s): %s', opt.name, opt.where, '; '.join(rows))
    if self.num_unowned:
      logging.info('%s parameters are selected by no optimiser and stay as initialised', f'{self.num_unowned:,}')
    if self._frozen_abstract:
      logging.info('frozen subtrees (loaded, never optimised or checkpointed): %s parameters',
                   f'{_size(self._frozen_abstract):,}')

  def build_step(self):
    """The jitted step: (state, batch) -> (state, metrics), the state donated. The experiment's train_step (or
    the default one) runs with rng = fold_in(state.rng, state.step); then the step advances and the EMA follows
    the params (unless the step's 'finite' metric is False)."""
    cfg, exp = self.config, self.exp
    inner = exp.train_step or default_train_step(exp.loss_fn, int(cfg.grad_accum_steps))
    decay = float(cfg.ema_decay)

    mesh = self.mesh if isinstance(self.mesh, AbstractMesh) else self.mesh.abstract_mesh

    def step_fn(state: TrainState, batch):
      # jit traces at the first call, wherever that is: the model's activation constraints need the mesh and the
      # logical rules in the trace itself, not around jax.jit.
      with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(self.rules):
        new, metrics = inner(state, batch, jax.random.fold_in(state.rng, state.step))
      if jax.tree.structure(new) != jax.tree.structure(state):
        raise TypeError('train_step returned a state of another structure than it was given:\n'
                        f'  {jax.tree.structure(new)}\nvs\n  {jax.tree.structure(state)}')
      metrics = dict(metrics)
      new = new.replace(step=state.step + 1, rng=state.rng, frozen=state.frozen)
      keep = jnp.logical_not(metrics['finite']) if 'finite' in metrics else False
      return new.update_ema(decay, keep=keep), metrics

    shardings = self.state_shardings
    options = dict(cfg.get('xla_options') or {}) or None
    with self.scope():
      return jax.jit(step_fn, in_shardings=(shardings, self.batch_sharding),
                     out_shardings=(shardings, self.replicated), donate_argnums=(0,), compiler_options=options)


def evaluate(setup: TrainSetup, state: TrainState, ctx: Context) -> dict[str, float]:
  """The experiment's evaluators on `state.eval_params()`, as {'<evaluator>/<metric>': value}."""
  params = state.eval_params()
  out = {}
  with setup.scope():
    for name, fn in setup.exp.evaluators.items():
      for k, v in fn(params, ctx).items():
        out[f'{name}/{k}'] = float(v)
  return out


def _all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (a step restores on all of them or is skipped by all)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def restore_checkpoint(setup: TrainSetup, ckpt: ckpt_lib.Checkpointer, step: int | None = None
                       ) -> tuple[int, TrainState, dict[str, Any], dict[int, str]] | None:
  """(step, state, data state, skipped) of the newest step of `ckpt` that restores completely, reading only.

  Walks back from the latest step past those that do not restore (skipped: step -> why, naming the file; each is
  logged, none is deleted). `step` picks one, which must restore. None when there is no step directory at all.
  Raises CorruptCheckpointError naming the files when no step restores, and IncompatibleCheckpointError (from
  `TrainSetup.restore`) when the newest complete step does not fit the config, which every step shares.
  """
  steps = ckpt.steps()
  if step is not None and step not in steps:
    raise FileNotFoundError(f'--restore_step {step}: {ckpt.directory} has no step {step} '
                            f'(it has {", ".join(map(str, steps)) or "none"})')
  if not steps:
    return None
  skipped: dict[int, str] = {}
  for candidate in [step] if step is not None else reversed(steps):
    why = ckpt.problem(candidate)
    if why is None:
      try:
        state, data_state = setup.restore(ckpt, candidate)
      except ckpt_lib.CorruptCheckpointError as e:
        why = str(e)
    if not _all_processes(why is None):
      why = why or 'it does not restore on another process (see its log)'
    if why is None:
      return candidate, state, data_state, skipped
    skipped[candidate] = why
    logging.warning('Skipping the checkpoint at step %d: %s', candidate, why)
  if step is not None:
    raise ckpt_lib.CorruptCheckpointError(f'--restore_step {step}: {skipped[step]}')
  raise ckpt_lib.CorruptCheckpointError(
      f'No checkpoint in {ckpt.directory} restores: ' + '; '.join(f'step {s}: {w}' for s, w in skipped.items())
      + '. Nothing was changed: move the bad steps out of checkpoints/ to start afresh.')


def restore_or_init(setup: TrainSetup, ckpt: ckpt_lib.Checkpointer, *,
                    restore_step: int | None = None) -> tuple[TrainState, Any, bool]:
  """(state, data iterator, resumed): the newest checkpoint of the workdir that restores (or `restore_step`),
  else `config.init_from`'s params, else the experiment's init. The frozen subtrees are loaded either way.

  When resuming, the step directories after the restored step (those that did not restore, or all later ones with
  `restore_step`) are moved into `checkpoints_set_aside/` by process 0, so the run saves its own steps there;
  nothing is deleted.
  """
  config, exp = setup.config, setup.exp
  found = restore_checkpoint(setup, ckpt, restore_step)
  if found is not None:
    step, state, data_state, skipped = found
    later = [s for s in ckpt.steps() if s > step]
    if later and jax.process_index() == 0:
      ckpt.set_aside(later, {s: skipped.get(s, f'after --restore_step {step}') for s in later})
    if jax.process_count() > 1:  # no process saves before the step directories are out of the way
      multihost_utils.sync_global_devices('mmjax: steps set aside')
    logging.info('Resumed from the checkpoint at step %d in %s', step, setup.ctx.workdir)
    return state, make_iterator(exp.train_data, state_json=data_state['iterator']), True

  params = None
  rng = jax.random.PRNGKey(config.seed)
  if config.get('init_from'):
    from mmjax.weights import initial_params  # imports every model's key map: only runs that start from weights
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            setup.abstract_state.params, setup.param_shardings)
    init_rng = jax.random.split(rng)[0]  # the key _init_state gives a fresh init: uncovered leaves match it
    try:
      with setup.scope():
        params = initial_params(config.init_from, abstract, exp.init_params, init_rng)
    except WeightsMismatchError as e:
      raise ckpt_lib.IncompatibleCheckpointError(f'config.init_from: {e}') from None
  state = setup.init_state(rng, params=params)
  return state, make_iterator(exp.train_data), False


def run_steps(setup: TrainSetup, state: TrainState, data_iter, hooks, loop: hooks_lib.Loop) -> TrainState:
  """Steps from `state.step` to `loop.total_steps`, running the due hooks after each; a hook that sets
  `loop.stop` ends the loop after that step."""
  start = int(jax.device_get(state.step))
  step_fn = setup.build_step()
  hooks_lib.begin_hooks(hooks, state, start, setup.ctx)
  t0 = time.perf_counter()
  for step in range(start + 1, loop.total_steps + 1):
    batch = make_global_batch(next(data_iter), setup.batch_sharding)
    state, loop.metrics = step_fn(state, batch)
    if step == start + 1:
      jax.block_until_ready(loop.metrics)
      logging.info('first step (compile + run) took %.2fs', time.perf_counter() - t0)
    hooks_lib.run_hooks(hooks, state, step, setup.ctx, loop)
    if loop.stop:
      logging.warning('Stopping after step %d with a checkpoint (%s).', step, loop.stop)
      break
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       experiment: Experiment | None = None, *,
                       stop_after_step: int | None = None, restore_step: int | None = None,
                       allow_config_change: Sequence[str] = ()) -> dict[str, Any]:
  """Trains `experiment` (default: `load_experiment(config)`) in `workdir`, resuming if possible.

  SIGTERM and SIGINT stop the run cleanly from start-up to the final report (`hooks.StopSignals`): a checkpoint
  after the current step, or nothing to save before the first step or after the last. A run that fails or stops
  before its first step leaves no trace in a workdir it created.

  Args:
    config: a ConfigDict holding the keys of `mmjax.train.config.base_config()`.
    workdir: where checkpoints, metrics.jsonl, reports and traces go. A rerun with the
      same workdir resumes from the newest checkpoint that restores (`restore_checkpoint`).
      The run holds the workdir's lock (`workdir_lock`): a second run on it is refused.
    experiment: the Experiment to train.
    stop_after_step: checkpoint and return once this step is done (for time-sliced jobs);
      the schedule still spans `config.total_steps`.
    restore_step: resume from this step instead (the later ones are set aside, not deleted).
    allow_config_change: config keys (or subtrees) that may differ from the resumed checkpoint's config although
      the change could corrupt the run (`mmjax.train.resume_config`: batch_size, data.*, seed, ...).

  Returns:
    {'step': last step (None when a signal stopped the run before it restored a checkpoint), 'eval': final eval
     metrics, 'report': report output, 'preempted': whether a signal or stop_after_step ended the run early,
     'state': the final TrainState (None like 'step')}.
  """
  with hooks_lib.StopSignals() as signals, _NewWorkdir(workdir) as new_workdir:
    with workdir_lock(workdir):
      try:
        return _train_and_evaluate(config, workdir, experiment, stop_after_step=stop_after_step,
                                   restore_step=restore_step, allow_config_change=allow_config_change,
                                   signals=signals, started=new_workdir.keep)
      finally:
        new_workdir.clear()


class _NewWorkdir:
  """Makes the workdir (and its missing parents) and, if the run fails or stops before its first step, removes
  what it made: `clear()` (called inside the workdir's lock) empties a workdir this run created, all but the lock
  file, and leaving the context removes the directories it created once they are empty. A workdir that existed,
  or that another process made first, is left as it is."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.created: list[str] = []  # directories this run made, outermost first
    self.kept = False

  def __enter__(self) -> _NewWorkdir:
    missing, path = [], self.workdir
    while not os.path.exists(path) and os.path.dirname(path) != path:
      missing.append(path)
      path = os.path.dirname(path)
    for path in reversed(missing):
      try:
        os.mkdir(path)
      except FileExistsError:  # made by another process at the same moment: not ours to remove
        continue
      self.created.append(path)
    return self

  def keep(self) -> None:
    """The first step is about to run: whatever happens next, the workdir stays."""
    self.kept = True

  def clear(self) -> None:
    if self.kept or self.workdir not in self.created:
      return
    for name in os.listdir(self.workdir):
      path = os.path.join(self.workdir, name)
      if name == LOCK_NAME:
        continue
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(path)

  def __exit__(self, *exc) -> None:
    if self.kept:
      return
    for path in reversed(self.created):
      try:
        os.rmdir(path)
      except OSError:  # not empty: another run writes there now
        break


def _stopped_before_first_step(signals: hooks_lib.StopSignals, state: TrainState | None = None) -> dict[str, Any]:
  step = None if state is None else int(jax.device_get(state.step))
  logging.warning('Stopped by %s before the first step%s; nothing needed saving.', signals.received,
                  '' if step is None else f' (the state is that of step {step})')
  return {'step': step, 'eval': {}, 'report': None, 'preempted': True, 'state': state}


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, experiment: Experiment | None, *,
                        stop_after_step: int | None, restore_step: int | None, allow_config_change: Sequence[str],
                        signals: hooks_lib.StopSignals, started: Callable[[], None]) -> dict[str, Any]:
  quiet_library_logs()
  experiment = experiment or load_experiment(config)
  setup = TrainSetup(config, experiment, workdir)
  if signals.stop_requested():
    return _stopped_before_first_step(signals)
  ctx = setup.ctx
  is_primary = jax.process_index() == 0
  logging.info('mesh %s on %d devices (%d processes); %s parameters',
               dict(setup.mesh.shape), jax.device_count(), jax.process_count(), f'{setup.num_params:,}')
  peak = peak_flops(jax.devices()[0].device_kind)
  step_flops = (experiment.flops_per_example or 0.0) * config.batch_size
  if step_flops:
    logging.info('model FLOPs per step: %.3e; MFU %s', step_flops,
                 f'is logged against {peak:.3g} FLOP/s per device' if peak else
                 f'is not logged: no peak FLOP/s known for {jax.devices()[0].device_kind!r}')

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=config.ckpt_every,
                               keep=config.keep_ckpts, async_save=config.async_checkpointing,
                               allow_config_change=tuple(allow_config_change))
  state, data_iter, resumed = restore_or_init(setup, ckpt, restore_step=restore_step)
  if signals.stop_requested():
    return _stopped_before_first_step(signals, state)
  setup.log_sizes()
  start = int(jax.device_get(state.step))
  writer = MetricsWriter(workdir, tensorboard=config.tensorboard, is_primary=is_primary)
  writer.drop_after(start if resumed else -1)  # the steps after `start` are redone; a fresh start redoes all
  if not resumed:
    writer.write(0, setup.size_metrics(), kind='setup')

  loop = hooks_lib.Loop(int(config.total_steps), writer)
  progress = Progress(start=start, total=config.total_steps, batch_size=config.batch_size,
                      enabled=config.progress_bar and is_primary)
  log = hooks_lib.LogMetrics(loop, log_every=config.log_every, batch_size=config.batch_size, start=start,
                             progress=progress, step_flops=step_flops, peak=peak)
  preemption = hooks_lib.Preemption(loop, signals, stop_after_step)
  hooks: list[Any] = [preemption, log]
  profile = None
  if config.profile_steps:
    profile = hooks_lib.Profile(config.profile_steps[0], config.profile_steps[-1], os.path.join(workdir, 'profile'))
    hooks.append(profile)
  hooks.append(hooks_lib.Checkpoint(loop, ckpt, log, lambda: {'iterator': iterator_state_to_json(data_iter)},
                                    config, every=config.ckpt_every))
  if config.eval_every:
    hooks.append(hooks_lib.Evaluate(loop, lambda s: evaluate(setup, s, ctx), every=config.eval_every))
  hooks += list(experiment.hooks)

  started()
  try:
    state = run_steps(setup, state, data_iter, hooks, loop)
    log.flush()
  finally:
    progress.close()
    if profile is not None:
      profile.stop()
    ckpt.close()
  step = int(jax.device_get(state.step))
  final_eval: dict[str, float] = {}
  report = None
  # The last step is saved: a signal now skips what is left, which a rerun (resuming at the last step) does.
  if not loop.stop and not signals.stop_requested():
    final_eval = evaluate(setup, state, ctx)
    if final_eval:
      writer.write(step, final_eval, kind='eval')
    if experiment.report is not None and not signals.stop_requested():  # every process joins; files on process 0
      with setup.scope():
        report = experiment.report(state.eval_params(), ctx)
  writer.close()
  stopped = bool(loop.stop) or signals.stop_requested()
  return {'step': step, 'eval': final_eval, 'report': report, 'preempted': stopped, 'state': state}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        experiment: Experiment | None = None, *, step: int | None = None) -> dict[str, Any]:
  """Runs the evaluators on a checkpoint of `workdir`: the newest that restores, or `step`.

  Only reads the workdir (no lock, no directory made, no temporary directory cleaned), so it can run beside the
  workdir's live training run. The results are returned and logged (launch.py prints them), never added to
  metrics.jsonl, which belongs to the training run.
  """
  quiet_library_logs()
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'--workdir {workdir} has no checkpoints/ directory: it is not the workdir of a '
                            'training run (is the path right?)')
  experiment = experiment or load_experiment(config)
  setup = TrainSetup(config, experiment, workdir)
  found = restore_checkpoint(setup, ckpt_lib.Checkpointer(directory, read_only=True), step)
  if found is None:
    raise FileNotFoundError(f'{directory} holds no checkpoint to evaluate')
  step, state, _, _ = found
  results = evaluate(setup, state, setup.ctx)
  logging.info('eval of the checkpoint at step %d: %s', step, ', '.join(f'{k}={v:.6g}' for k, v in results.items()))
  return {'step': step, 'eval': results, 'state': state}

