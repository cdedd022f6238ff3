"""Two jax.distributed processes on 127.0.0.1 (CPU, gloo) train together and agree."""
import os
import re
import signal
import socket
import subprocess
import time

from tests.train.launcher import REPO, launch_args, launch_env

LOSS = re.compile(r'train step (\d+): .*?\bloss=([0-9.eE+-]+)')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_5_steps_with_identical_losses(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / 'mp')
  procs = []
  for pid in range(2):
    args = launch_args(workdir, '--config.total_steps=5', '--config.log_every=1', '--config.ckpt_every=5',
                       '--config.eval_every=0', f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={pid}')
    procs.append(subprocess.Popen(args, cwd=REPO, env=launch_env(devices=2), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=300)
    outs.append(out)
    assert p.returncode == 0, out[-3000:]
  losses = [dict((int(s), float(v)) for s, v in LOSS.findall(o)) for o in outs]
  assert sorted(losses[0]) == [1, 2, 3, 4, 5], outs[0][-2000:]
  assert losses[0] == losses[1]
  assert 'on 4 devices (2 processes)' in outs[0]


def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / 'mp_term')
  procs = []
  for pid in range(2):
    args = launch_args(workdir, '--config.total_steps=100000', '--config.log_every=1',
                       '--config.ckpt_every=100000', '--config.eval_every=0',
                       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={pid}')
    procs.append(subprocess.Popen(args, cwd=REPO, env=launch_env(devices=1), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 180
  while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) > 5):
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[1][-3000:]
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert len(steps) == 1 and steps[0] > 3
  assert all(f'Stopping after step {steps[0]}' in o for o in outs)
