"""Two jax.distributed processes on 127.0.0.1 (CPU, gloo) train together and agree."""
import re
import socket
import subprocess

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
