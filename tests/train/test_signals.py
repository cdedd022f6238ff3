"""SIGINT and SIGTERM stop a run cleanly from start-up to the final report; a second Ctrl-C aborts at once.

In-process: the trainer's handlers receive real signals (os.kill of this process); a guard handler installed
around each run catches any signal the trainer failed to handle, so a regression fails the test instead of killing
pytest. One launch.py subprocess checks the exit status a user sees.
"""
import contextlib
import dataclasses
import os
import signal
import time

import jax
import numpy as np
import pytest

from mmjax.train import train_and_evaluate
from tests.files import snapshot
from tests.train.launcher import start_launch
from tests.train.metrics_io import read_metrics
from tests.train.toy import toy_config, toy_experiment

ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}


@contextlib.contextmanager
def _guarded(sig):
  """Records `sig` while the trainer's handler is not installed (it would be a bug), instead of dying."""
  missed = []
  previous = signal.signal(sig, lambda s, f: missed.append(s))
  try:
    yield missed
  finally:
    signal.signal(sig, previous)


class _SendAt:
  """A hook that sends this process `sig` (`times` times) after step `at`."""

  def __init__(self, at, sig, times=1):
    self.every, self.at, self.sig, self.times = 1, at, sig, times

  def __call__(self, state, step, ctx):
    if step == self.at:
      for _ in range(self.times):
        os.kill(os.getpid(), self.sig)


def _config(**kw):
  return toy_config(mesh=ONE_DEVICE, **kw)


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())



def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  config = _config()
  return train_and_evaluate(config, str(tmp_path_factory.mktemp('reference')), toy_experiment(config))


def test_sigint_mid_run_checkpoints_and_a_rerun_resumes_bitwise(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config()
  experiment = dataclasses.replace(toy_experiment(config), hooks=[_SendAt(3, signal.SIGINT)])
  with _guarded(signal.SIGINT) as missed:
    out = train_and_evaluate(config, workdir, experiment)
  assert not missed
  assert out['preempted'] and 3 <= out['step'] < config.total_steps
  assert _steps(workdir) == [out['step']] == [max(read_metrics(workdir))]
  resumed = train_and_evaluate(config, workdir, toy_experiment(config))
  assert resumed['step'] == config.total_steps and not resumed['preempted']
  _assert_same_params(uninterrupted['state'], resumed['state'])


def test_a_second_sigint_aborts_at_once(tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config(ckpt_every=2)
  experiment = dataclasses.replace(toy_experiment(config), hooks=[_SendAt(3, signal.SIGINT, times=2)])
  with _guarded(signal.SIGINT) as missed:
    with pytest.raises(KeyboardInterrupt):
      train_and_evaluate(config, workdir, experiment)
    assert not missed
    os.kill(os.getpid(), signal.SIGINT)  # the handler in place before the run is back
    assert missed == [signal.SIGINT]
  assert _steps(workdir) == [2]  # the last periodic checkpoint is intact; no final one was written


def test_sigterm_while_restoring_exits_with_nothing_lost(uninterrupted, tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config()
  first = train_and_evaluate(config, workdir, toy_experiment(config), stop_after_step=4)
  assert first['step'] == 4
  before = snapshot(workdir)

  def load_frozen(ctx):  # runs while the checkpoint is restored
    os.kill(os.getpid(), signal.SIGTERM)
    return {}

  slow_start = dataclasses.replace(toy_experiment(config), load_frozen=load_frozen)
  with _guarded(signal.SIGTERM) as missed:
    out = train_and_evaluate(config, workdir, slow_start)
  assert not missed
  assert out['preempted'] and out['step'] == 4
  assert snapshot(workdir) == before
  resumed = train_and_evaluate(config, workdir, toy_experiment(config))
  assert resumed['step'] == config.total_steps
  _assert_same_params(uninterrupted['state'], resumed['state'])


def test_sigterm_during_setup_of_a_new_workdir_leaves_no_trace(tmp_path):
  workdir = tmp_path / 'new' / 'run'
  config = _config()
  experiment = toy_experiment(config)
  init = experiment.init_params

  def init_params(rng):  # traced while the run is set up
    os.kill(os.getpid(), signal.SIGTERM)
    return init(rng)

  with _guarded(signal.SIGTERM) as missed:
    out = train_and_evaluate(config, str(workdir), dataclasses.replace(experiment, init_params=init_params))
  assert not missed
  assert out['preempted'] and out['step'] is None
  assert not (tmp_path / 'new').exists()


def test_sigint_after_the_last_step_skips_the_final_eval_and_a_rerun_does_it(tmp_path):
  workdir = str(tmp_path / 'run')
  config = _config()
  calls = []

  def probe(params, ctx):
    calls.append(1)
    return {'one': 1.0}

  experiment = dataclasses.replace(toy_experiment(config, evaluators={'probe': probe}),
                                   hooks=[_SendAt(config.total_steps, signal.SIGINT)])
  with _guarded(signal.SIGINT) as missed:
    out = train_and_evaluate(config, workdir, experiment)
  assert not missed
  assert out['preempted'] and out['step'] == config.total_steps and not calls
  assert _steps(workdir) == [config.total_steps]
  again = train_and_evaluate(config, workdir, toy_experiment(config, evaluators={'probe': probe}))
  assert again['eval'] == {'probe/one': 1.0} and calls == [1]


def _wait_for_step(workdir, step, proc, timeout=300):  # start-up alone can take minutes on a loaded machine
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and read_metrics(workdir) and max(read_metrics(workdir)) >= step:
      return True
    time.sleep(0.02)
  return False


def test_ctrl_c_to_launch_checkpoints_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'launch')
  log = tmp_path / 'log.txt'
  with open(log, 'w') as f:
    proc = start_launch(workdir, '--config.total_steps=100000', '--config.log_every=1',
                        '--config.ckpt_every=100000', '--config.eval_every=0', log=f)
    assert _wait_for_step(workdir, 2, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
  out = log.read_text()
  assert 'Traceback' not in out and 'SIGINT received' in out
  steps = _steps(workdir)
  assert steps and steps == [max(read_metrics(workdir))]
  assert f'Stopping after step {steps[0]}' in out
