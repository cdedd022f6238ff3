"""Exact resume, crash safety (SIGKILL at any moment) and SIGTERM, each in fresh processes."""
import os
import shutil
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train.launcher import run_launch, start_launch
from tests.train.metrics_io import read_metrics

FLAGS = ('--config.total_steps=20', '--config.log_every=1', '--config.ckpt_every=5',
         '--config.eval_every=0')


def _final_state(workdir, step=20):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _assert_same_run(ref_dir, other_dir):
  ref, got = read_metrics(ref_dir), read_metrics(other_dir)
  assert sorted(got) == sorted(ref) == list(range(1, 21))
  for step in ref:
    assert got[step]['loss'] == ref[step]['loss'], f'loss differs at step {step}'
    assert got[step]['lr'] == ref[step]['lr'], f'lr differs at step {step}'
  a, b = _final_state(ref_dir), _final_state(other_dir)
  flat_a, flat_b = _leaves(a), _leaves(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def _leaves(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_leaves(v, f'{prefix}{k}/'))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, v in enumerate(tree):
      out.update(_leaves(v, f'{prefix}{i}/'))
    return out
  return {prefix: np.asarray(tree)}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reference'))
  proc = run_launch(workdir, *FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope='module')
def stopped_at_10(tmp_path_factory):
  """A run of the same config stopped by --stop_after_step=10 (checkpoint at 10); tests resume copies of it."""
  workdir = str(tmp_path_factory.mktemp('stopped') / 'run')
  first = run_launch(workdir, *FLAGS, '--stop_after_step=10')
  assert first.returncode == 0, first.stderr[-3000:]
  assert max(read_metrics(workdir)) == 10
  return workdir


def test_resume_after_step_10_is_bitwise_exact(reference, stopped_at_10, tmp_path):
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(stopped_at_10, workdir)
  second = run_launch(workdir, *FLAGS)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 10' in second.stderr
  _assert_same_run(reference, workdir)


def _wait_for_step(workdir, step, proc, timeout=120):
  deadline = time.time() + timeout
  path = os.path.join(workdir, 'metrics.jsonl')
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    if os.path.exists(path) and read_metrics(workdir) and max(read_metrics(workdir)) >= step:
      return True
    time.sleep(0.02)
  raise TimeoutError(f'step {step} not reached in {workdir}')


def test_sigkill_at_several_points_then_resume_is_exact(reference, tmp_path):
  workdir = str(tmp_path / 'killed')
  # Checkpoint every step, asynchronously, so that kills land during saves too.
  flags = FLAGS + ('--config.ckpt_every=1', '--config.async_checkpointing=True')
  rng = np.random.default_rng(0)
  killed_at = []
  for target in (3, 8, 14):
    proc = start_launch(workdir, *flags)
    if _wait_for_step(workdir, target, proc):
      time.sleep(float(rng.uniform(0.0, 0.05)))
      proc.send_signal(signal.SIGKILL)
      killed_at.append(target)
    proc.wait(timeout=60)
  assert killed_at, 'no process was killed'
  final = run_launch(workdir, *flags)
  assert final.returncode == 0, final.stderr[-3000:]
  _assert_same_run(reference, workdir)


def test_half_written_checkpoint_is_ignored(reference, stopped_at_10, tmp_path):
  """A save interrupted mid-write leaves only a temporary directory, which restore skips."""
  workdir = str(tmp_path / 'partial')
  shutil.copytree(stopped_at_10, workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  partial = os.path.join(ckpts, '15.orbax-checkpoint-tmp')
  shutil.copytree(os.path.join(ckpts, '10'), partial)
  for root, _, files in os.walk(os.path.join(partial, 'state')):
    for f in files[: len(files) // 2]:
      os.remove(os.path.join(root, f))
  second = run_launch(workdir, *FLAGS)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 10' in second.stderr
  assert not os.path.exists(partial)
  _assert_same_run(reference, workdir)


def test_sigterm_writes_a_final_checkpoint_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'term')
  proc = start_launch(workdir, '--config.total_steps=100000', '--config.log_every=1',
                      '--config.ckpt_every=100000', '--config.eval_every=0')
  assert _wait_for_step(workdir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert steps and max(steps) >= 3
  assert max(steps) == max(read_metrics(workdir))
