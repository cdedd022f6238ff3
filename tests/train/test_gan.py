"""A two-optimiser GAN with its own train step (tests/train/gan.py): exact resume after SIGKILL, 8 devices = 1."""
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax.train import train_and_evaluate
from tests.numerics import assert_close_programs
from tests.train import gan
from tests.train.launcher import run_launch, start_launch
from tests.train.metrics_io import read_metrics

CONFIG = 'tests/train/gan.py'
FLAGS = ('--config.ckpt_every=1', '--config.async_checkpointing=True')


def _leaves(tree):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _final(workdir):
  return _leaves(ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '12', 'state')))


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  reference = str(tmp_path / 'reference')
  workdir = str(tmp_path / 'killed')
  with open(tmp_path / 'reference.log', 'w') as ref_log, open(tmp_path / 'killed.log', 'w') as log:
    uninterrupted = start_launch(reference, *FLAGS, config=CONFIG, log=ref_log)  # runs alongside
    proc = start_launch(workdir, *FLAGS, config=CONFIG, log=log)
    metrics = os.path.join(workdir, 'metrics.jsonl')
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      if os.path.exists(metrics) and max(read_metrics(workdir) or [0]) >= 4:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.01)
    proc.wait(timeout=60)
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / 'reference.log').read_text()[-3000:]
  assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  killed_at = max(read_metrics(workdir))
  assert killed_at < 12
  final = run_launch(workdir, *FLAGS, config=CONFIG)
  assert final.returncode == 0, final.stderr[-3000:]
  assert 'Resumed from the checkpoint at step' in final.stderr
  ref, got = read_metrics(reference), read_metrics(workdir)
  assert sorted(got) == sorted(ref) == list(range(1, 13))
  for step in ref:
    for key in ('d_loss', 'g_loss', 'd_loss_mean', 'gen/lr', 'disc/lr'):
      assert got[step][key] == ref[step][key], f'{key} differs at step {step} (killed after step {killed_at})'
  a, b = _final(reference), _final(workdir)
  assert a.keys() == b.keys()
  assert any('ema' in k for k in a) and any('extra' in k for k in a)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The generator moved every second step, the discriminator every step.
  assert int(a["['opt_states']['gen']['count']"]) == 6 and int(a["['opt_states']['disc']['count']"]) == 12


def test_8_device_mesh_matches_1_device(tmp_path):
  runs = {}
  for name, mesh in (('one', {'data': 1, 'fsdp': 1, 'tensor': 1}), ('eight', {'data': 2, 'fsdp': 2, 'tensor': 2})):
    config = gan.get_config()
    config.mesh, config.total_steps, config.async_checkpointing = mesh, 6, False
    out = train_and_evaluate(config, str(tmp_path / name), gan.make_experiment(config))
    runs[name] = (read_metrics(str(tmp_path / name)), out['state'])
  (one, state_one), (eight, state_eight) = runs['one'], runs['eight']
  w1 = state_eight.params['generator']['w1']
  assert len(w1.sharding.device_set) == 8 and w1.addressable_shards[0].data.shape == (2, 4)
  for step in one:
    for key in ('d_loss', 'g_loss', 'disc/grad_norm', 'gen/grad_norm'):
      assert_close_programs(eight[step][key], one[step][key], msg=f'{key} {step}')
  for tree in ('params', 'ema', 'extra'):
    assert_close_programs(getattr(state_eight, tree), getattr(state_one, tree), msg=tree)
