"""Hooks: what the step loop runs after a step: logging, preemption, profiling, checkpoints, evaluation, and an
experiment's own (sample grids, extra metrics).

A hook is any object with
  every: int — run after each step that is a multiple of `every` (0: never periodically);
  __call__(state: TrainState, step: int, ctx: Context) -> mapping of scalars or None — called on every process
    (hooks may run collectives); returned scalars go to metrics.jsonl as a row of kind `kind`.
and optionally
  at_end: bool (default False) — also run after the run's last step (total_steps, a signal or stop_after_step);
  kind: str (default 'eval') — the metrics.jsonl row kind of what it returns;
  begin(state, step, ctx) — called once before the first step (step = the step the run starts from).
Hooks run in order: the trainer's (preemption, log, profile, checkpoint, eval), then the experiment's.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mmjax.train.metrics import MetricsWriter, Progress
from mmjax.train.state import TrainState

if TYPE_CHECKING:
  from mmjax.train.experiment import Context


class Hook(Protocol):
  every: int

  def __call__(self, state: TrainState, step: int, ctx: Context) -> Mapping[str, Any] | None:
    ...


@dataclasses.dataclass
class Loop:
  """What the step loop shares with its hooks."""
  total_steps: int
  writer: MetricsWriter
  metrics: Any = None  # device metrics of the step just taken
  stop: str = ''  # set by a hook: why the loop ends after this step ('' while it goes on)

  def last(self, step: int) -> bool:
    return bool(self.stop) or step == self.total_steps


def run_hooks(hooks: Sequence[Hook], state: TrainState, step: int, ctx: Context, loop: Loop) -> None:
  """Runs the hooks due after `step`, writing what they return."""
  for hook in hooks:
    every = int(getattr(hook, 'every', 0) or 0)
    if (every > 0 and step % every == 0) or (getattr(hook, 'at_end', False) and loop.last(step)):
      out = hook(state, step, ctx)
      if out:
        loop.writer.write(step, out, kind=getattr(hook, 'kind', 'eval'))


def begin_hooks(hooks: Sequence[Hook], state: TrainState, step: int, ctx: Context) -> None:
  for hook in hooks:
    if hasattr(hook, 'begin'):
      hook.begin(state, step, ctx)


class LogMetrics:
  """Checks every step's metrics one step late (so the host never waits for the device) and writes them every
  `log_every` steps with steps/s, examples/s and MFU; raises FloatingPointError on a non-finite step."""
  every = 1

  def __init__(self, loop: Loop, *, log_every: int, batch_size: int, start: int, progress: Progress,
               step_flops: float = 0.0, peak: float | None = None):
    self.loop, self.log_every, self.batch_size = loop, int(log_every), int(batch_size)
    self.progress, self.step_flops, self.peak = progress, step_flops, peak
    self.pending: tuple[int, Any] | None = None
    self.last_log = (start, time.perf_counter())

  def __call__(self, state, step, ctx):
    self.flush()
    self.pending = (step, self.loop.metrics)

  def flush(self) -> None:
    """Checks and logs the pending step, if any."""
    if self.pending is None:
      return
    step, dev = self.pending
    self.pending = None
    m = jax.device_get(dev)
    check_finite(step, m)
    if step % self.log_every == 0 or step == self.loop.total_steps:
      now = time.perf_counter()
      sps = (step - self.last_log[0]) / max(now - self.last_log[1], 1e-9)
      self.last_log = (step, now)
      scalars = {k: v for k, v in m.items() if k != 'finite'}
      scalars.update(steps_per_sec=sps, examples_per_sec=sps * self.batch_size)
      if self.step_flops and self.peak:
        scalars['mfu'] = self.step_flops * sps / (self.peak * jax.device_count())
      self.loop.writer.write(step, scalars)
    self.progress.update(step, float(m['loss']) if 'loss' in m else None)


def check_finite(step: int, m: Mapping[str, Any]) -> None:
  if bool(m.get('finite', True)):
    return
  bad = [k for k, v in m.items() if 'grad_norm' in k.split('/') and not np.all(np.isfinite(v))]
  loss = f'loss={float(m["loss"])}, ' if 'loss' in m else ''
  raise FloatingPointError(
      f'Non-finite training step {step}: {loss}'
      + (f'non-finite {", ".join(bad)}' if bad else 'a non-finite value in the step')
      + '. The state of the previous step was kept; the last checkpoint is intact.')


class StopSignals:
  """SIGTERM and SIGINT (Ctrl-C) as a request to stop cleanly, from a run's start-up to its final report.

  The handler only records the first signal (so that nothing is half written); the trainer stops at the next
  safe point: during start-up before the first step (nothing to save: the state is the restored checkpoint or a
  fresh init), in the loop after the current step with a checkpoint (`Preemption`), after the loop before the
  final evaluation or the report (the last step is saved already). A second SIGINT aborts at once
  (KeyboardInterrupt; a third interrupts a wait for a save in flight); a second SIGTERM changes nothing.

  Several processes: JAX's preemption sync manager (set up by jax.distributed) owns SIGTERM and makes every process
  stop after one agreed step; SIGINT is forwarded to it as a SIGTERM. Outside the loop the processes cannot agree
  on a stop, so there a signal only ends the run at its first step (start-up) or not at all (final evaluation).
  Handlers are installed from the main thread only; use as a context manager.
  """

  def __init__(self):
    self.received = ''  # name of the first signal, '' while none came
    self.multi = jax.process_count() > 1
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received:
      if signum == signal.SIGINT:
        self._restore()
        logging.warning('Second SIGINT: aborting at once; the last checkpoint is intact.')
        raise KeyboardInterrupt
      logging.warning('%s received again: already stopping.', name)
      return
    self.received = name
    logging.warning('%s received: stopping cleanly (if training: after the current step, with a checkpoint)%s.',
                    name, '; Ctrl-C again aborts at once' if signum == signal.SIGINT else '')
    if self.multi:  # the preemption sync manager listens to SIGTERM only
      os.kill(os.getpid(), signal.SIGTERM)

  def stop_requested(self) -> bool:
    """Whether to stop now, outside the step loop: a signal came and this is a single-process run."""
    return bool(self.received) and not self.multi

  def _restore(self) -> None:
    for sig, previous in self._previous.items():
      # None: a handler installed outside Python (e.g. by jax.distributed), which Python cannot put back.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()


class Preemption:
  """Ends the loop after the current step, with a checkpoint (the checkpoint hook runs at the end), on SIGTERM or
  SIGINT (`StopSignals`) or at `stop_after_step`.

  Several processes ask JAX's preemption sync manager at every step with the same step numbers; it names one step
  at which every process stops, so all of them join the same final checkpoint.
  """
  every = 1

  def __init__(self, loop: Loop, signals: StopSignals, stop_after_step: int | None = None):
    self.loop, self.signals, self.stop_after_step = loop, signals, stop_after_step

  def __call__(self, state, step, ctx):
    if self.signals.multi:
      term = multihost_utils.reached_preemption_sync_point(step)
    else:
      term = bool(self.signals.received)
    if term:
      self.loop.stop = self.signals.received or 'SIGTERM'
    elif self.stop_after_step is not None and step >= self.stop_after_step:
      self.loop.stop = 'stop_after_step'


class Profile:
  """Traces steps first..last (inclusive) with jax.profiler into `directory`."""
  every = 1

  def __init__(self, first: int, last: int, directory: str):
    self.first, self.last, self.directory = int(first), int(last), directory
    self.tracing = False

  def begin(self, state, step, ctx):
    if step + 1 == self.first:
      self._start()

  def _start(self):
    jax.profiler.start_trace(self.directory)
    self.tracing = True

  def __call__(self, state, step, ctx):
    if step + 1 == self.first:
      self._start()
    elif step == self.last and self.tracing:
      jax.block_until_ready(state)
      self.stop()
      logging.info('profile of steps %d..%d written to %s', self.first, self.last, self.directory)

  def stop(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


class Checkpoint:
  """Saves every `every` steps and after the last one. A step is saved only once its metrics were checked."""
  at_end = True

  def __init__(self, loop: Loop, ckpt, log: LogMetrics, data_state: Callable[[], Mapping[str, Any]], config,
               every: int):
    self.loop, self.ckpt, self.log, self.data_state, self.config = loop, ckpt, log, data_state, config
    self.every = int(every)

  def __call__(self, state, step, ctx):
    self.log.flush()  # never checkpoint a state whose step has not been checked
    self.ckpt.save(step, state.saved(), self.data_state(), self.config, force=self.loop.last(step))


class Evaluate:
  """Runs the evaluators every `every` steps (the trainer evaluates once more after the last step)."""
  kind = 'eval'

  def __init__(self, loop: Loop, evaluate: Callable[[TrainState], Mapping[str, float]], every: int):
    self.loop, self.evaluate, self.every = loop, evaluate, int(every)

  def __call__(self, state, step, ctx):
    if step != self.loop.total_steps:
      return self.evaluate(state)
    return None
