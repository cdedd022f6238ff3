"""Run safety: evaluation only reads a workdir, one writer per workdir (lock), restore falls back past a corrupt
step, --restore_step, and metrics.jsonl keeps one row per step after a resume."""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax.train import evaluate_checkpoint, train_and_evaluate
from mmjax.train.checkpoint import SET_ASIDE, CorruptCheckpointError
from mmjax.train.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError
from tests.files import snapshot
from tests.train.launcher import run_launch, start_launch
from tests.train.metrics_io import read_metrics
from tests.train.toy import toy_config, toy_experiment

ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}


def _config(**overrides):
  return toy_config(**{'mesh': ONE_DEVICE, 'total_steps': 4, 'ckpt_every': 2, 'keep_ckpts': 0, **overrides})


def _probe(params, ctx):
  return {'w_sum': float(np.sum(np.asarray(params['head']['w'])))}


def _train(workdir, **kw):
  overrides = {k: kw.pop(k) for k in list(kw) if k not in ('restore_step', 'stop_after_step')}
  config = _config(**overrides)
  return train_and_evaluate(config, str(workdir), toy_experiment(config, evaluators={'probe': _probe}), **kw)



def _files(root):
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), 'rb').read()
          for d, _, fs in os.walk(root) for f in fs}


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _error_line(proc):
  """launch.py's one-line user error (exit 2, no traceback)."""
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith('launch.py: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _dead_pid():
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A toy run of 4 steps with checkpoints at steps 2 and 4, and its final state."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  out = _train(workdir)
  assert sorted(int(d) for d in os.listdir(workdir / 'checkpoints')) == [2, 4]
  return workdir, out['state']


@pytest.fixture
def run_copy(finished, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  shutil.copytree(finished[0], tmp_path / 'run')
  return tmp_path / 'run'


# --- evaluation reads only -------------------------------------------------------------------------------------


def test_eval_beside_a_save_in_progress_and_a_live_lock_changes_nothing(run_copy, finished):
  tmp = run_copy / 'checkpoints' / '6.orbax-checkpoint-tmp-1234'  # a save in progress of the live run
  (tmp / 'state').mkdir(parents=True)
  (tmp / 'state' / 'manifest.ocdbt').write_bytes(b'half written')
  lock = WorkdirLock(str(run_copy))
  lock.acquire()
  try:
    before = snapshot(run_copy, mtimes=True)
    config = _config()
    out = evaluate_checkpoint(config, str(run_copy), toy_experiment(config, evaluators={'probe': _probe}))
    assert snapshot(run_copy, mtimes=True) == before
  finally:
    lock.release()
  assert out['step'] == 4
  assert out['eval']['probe/w_sum'] == pytest.approx(float(np.sum(np.asarray(finished[1].params['head']['w']))))
  assert len(read_metrics(str(run_copy), 'eval')) == 1  # only the training run's own final eval row


def test_eval_of_a_mistyped_workdir_creates_nothing(tmp_path):
  config = _config()
  with pytest.raises(FileNotFoundError, match='has no checkpoints/ directory'):
    evaluate_checkpoint(config, str(tmp_path / 'typo'), toy_experiment(config))
  assert not os.path.exists(tmp_path / 'typo')


def test_launch_eval_beside_a_live_trainer(tmp_path):
  """A real trainer saving every step; `--mode eval --restore_step` in another process neither disturbs it nor
  writes to the workdir, and prints no orbax internals; the trainer then stops on SIGTERM with a checkpoint."""
  workdir = tmp_path / 'live'
  log = open(tmp_path / 'trainer.log', 'w')
  trainer = start_launch(str(workdir), '--config.total_steps=100000', '--config.ckpt_every=1',
                         '--config.log_every=1', '--config.eval_every=0', '--config.keep_ckpts=0', log=log)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and trainer.poll() is None and not (
        os.path.isdir(workdir / 'checkpoints') and sum(d.isdigit() for d in os.listdir(workdir / 'checkpoints')) > 1):
      time.sleep(0.1)
    assert trainer.poll() is None, open(tmp_path / 'trainer.log').read()[-3000:]
    assert os.path.exists(workdir / LOCK_NAME)
    first = min(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
    evaluated = run_launch(str(workdir), '--mode=eval', f'--restore_step={first}')
    assert trainer.poll() is None, open(tmp_path / 'trainer.log').read()[-3000:]
  finally:
    trainer.send_signal(signal.SIGTERM)
    trainer.wait(timeout=120)
    log.close()
  assert trainer.returncode == 0, open(tmp_path / 'trainer.log').read()[-3000:]
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'orbax' not in evaluated.stderr, evaluated.stderr[-3000:]
  summary = json.loads(evaluated.stdout)
  assert summary['step'] == first and 0 <= summary['eval']['test/accuracy'] <= 1
  assert not read_metrics(str(workdir), 'eval')  # eval results go to stdout, not to the trainer's metrics.jsonl
  assert not os.path.exists(workdir / LOCK_NAME)  # released at exit


# --- one writer per workdir ------------------------------------------------------------------------------------


def test_second_trainer_on_a_locked_workdir_exits_2_and_changes_nothing(run_copy):
  lock = WorkdirLock(str(run_copy))  # held by this (live) process, as a running trainer holds it
  lock.acquire()
  try:
    before = snapshot(run_copy, mtimes=True)
    proc = run_launch(str(run_copy), '--config.total_steps=8')
    assert snapshot(run_copy, mtimes=True) == before
  finally:
    lock.release()
  line = _error_line(proc)
  assert f'host {socket.gethostname()}, pid {os.getpid()}' in line and 'another run' in line


def test_lock_from_another_host_is_refused_with_the_way_out(run_copy):
  (run_copy / LOCK_NAME).write_text(json.dumps({'host': 'elsewhere-7', 'pid': 4242, 'since': time.time()}))
  before = snapshot(run_copy, mtimes=True)
  with pytest.raises(WorkdirLockedError, match=rf'host elsewhere-7, pid 4242.*delete {run_copy / LOCK_NAME}'):
    _train(run_copy)
  assert snapshot(run_copy, mtimes=True) == before


def test_stale_lock_of_a_killed_run_is_taken_over(run_copy, caplog):
  pid = _dead_pid()
  (run_copy / LOCK_NAME).write_text(json.dumps({'host': socket.gethostname(), 'pid': pid, 'since': 0}))
  out = _train(run_copy)
  assert out['step'] == 4
  assert f'pid {pid}' in caplog.text and 'Taking over the lock' in caplog.text
  assert not os.path.exists(run_copy / LOCK_NAME)


def test_lock_is_exclusive_and_released(tmp_path):
  first = WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(WorkdirLockedError, match=f'pid {os.getpid()}'):
    WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not os.listdir(tmp_path)
  second = WorkdirLock(str(tmp_path))
  second.acquire()
  assert json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()
  second.release()


# --- restore falls back past corrupt steps ---------------------------------------------------------------------


def _delete_state(step_dir):
  shutil.rmtree(step_dir / 'state')
  return 'state is missing'


def _delete_state_metadata(step_dir):
  os.remove(step_dir / 'state' / '_METADATA')
  return 'state/_METADATA is missing'


def _garbage_iterator(step_dir):
  (step_dir / 'data' / 'metadata').write_bytes(b'\x00{not json')
  return 'data/metadata is not valid JSON'


def _empty_iterator(step_dir):
  (step_dir / 'data' / 'metadata').write_bytes(b'')
  return 'data/metadata is empty'


def _damaged_arrays(step_dir):
  data = sorted(os.path.join(d, f) for d, _, fs in os.walk(step_dir / 'state') for f in fs if d.endswith('/d'))
  open(data[0], 'wb').close()  # one array data file truncated to nothing
  return 'state does not restore'


# orbax's metadata read fails on several arrays at once and their late callbacks find its event loop closed
_ORBAX_LATE_CALLBACKS = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
CORRUPTIONS = [_delete_state, _delete_state_metadata, _garbage_iterator, _empty_iterator,
               pytest.param(_damaged_arrays, marks=_ORBAX_LATE_CALLBACKS)]


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=['delete_state', 'delete_state_metadata', 'garbage_iterator',
                                                    'empty_iterator', 'damaged_arrays'])
def test_corrupt_latest_step_falls_back_to_the_previous_one(run_copy, finished, corrupt, caplog):
  bad = run_copy / 'checkpoints' / '4'
  why = corrupt(bad)
  files = _files(bad)
  out = _train(run_copy)
  assert f'Skipping the checkpoint at step 4: {bad}' in caplog.text and why in caplog.text
  assert 'Resumed from the checkpoint at step 2' in caplog.text
  assert out['step'] == 4
  _assert_same(out['state'].params, finished[1].params)  # steps 3 and 4 redone exactly
  assert _files(run_copy / SET_ASIDE / '4') == files  # kept as it was, out of the new saves' way
  assert sorted(int(d) for d in os.listdir(run_copy / 'checkpoints')) == [2, 4]


def test_empty_step_directory_is_never_latest(run_copy, finished, caplog):
  (run_copy / 'checkpoints' / '16').mkdir()
  config = _config()
  before = snapshot(run_copy, mtimes=True)
  evaluated = evaluate_checkpoint(config, str(run_copy), toy_experiment(config))
  assert evaluated['step'] == 4 and snapshot(run_copy, mtimes=True) == before
  out = _train(run_copy)
  assert f'Skipping the checkpoint at step 16: {run_copy / "checkpoints" / "16"} is empty' in caplog.text
  assert out['step'] == 4
  assert os.path.isdir(run_copy / SET_ASIDE / '16')


def test_no_good_step_fails_naming_the_files_and_changes_nothing(run_copy):
  _delete_state_metadata(run_copy / 'checkpoints' / '4')
  _empty_iterator(run_copy / 'checkpoints' / '2')
  before = snapshot(run_copy, mtimes=True)
  with pytest.raises(CorruptCheckpointError) as e:
    _train(run_copy)
  msg = str(e.value)
  assert len(msg.splitlines()) == 1
  assert str(run_copy / 'checkpoints' / '4' / 'state' / '_METADATA') in msg
  assert str(run_copy / 'checkpoints' / '2' / 'data' / 'metadata') in msg
  assert snapshot(run_copy, mtimes=True) == before


# --- --restore_step and metrics.jsonl --------------------------------------------------------------------------


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(row['step'], row['kind']) for row in map(json.loads, f)]


def test_restore_step_picks_a_step_and_metrics_keep_one_row_per_step(run_copy, finished, caplog):
  before = _rows(run_copy)
  out = _train(run_copy, restore_step=2)
  assert 'Resumed from the checkpoint at step 2' in caplog.text
  _assert_same(out['state'].params, finished[1].params)
  assert os.path.isdir(run_copy / SET_ASIDE / '4')  # the later step is kept aside, not deleted
  rows = _rows(run_copy)
  assert len(rows) == len(set(rows)) and sorted(rows) == sorted(before)
  again = _train(run_copy)  # finished already: no step is run, the final eval replaces its row
  assert again['step'] == 4
  rows = _rows(run_copy)
  assert len(rows) == len(set(rows)) and sorted(rows) == sorted(before)
  with pytest.raises(FileNotFoundError, match=r'--restore_step 3: .* has no step 3 \(it has 2, 4\)'):
    _train(run_copy, restore_step=3)


def test_half_written_metrics_line_of_a_killed_run_is_dropped(run_copy):
  with open(run_copy / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "kind": "tr')
  _train(run_copy)
  rows = _rows(run_copy)
  assert len(rows) == len(set(rows))
  assert sorted(read_metrics(str(run_copy))) == list(range(1, 5))
