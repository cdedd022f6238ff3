"""TrainState features on the toy regression: frozen subtrees, frozen-until groups, EMA of a subtree, group
checks and sizes, experiment hooks."""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import train_and_evaluate
from tests.numerics import assert_close_programs
from tests.train.metrics_io import read_metrics
from tests.train.toy import toy_config, toy_experiment

ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}
TEACHER = np.arange(8, dtype=np.float32).reshape(4, 2) / 10


class Recorder:
  """An experiment hook: the parameters after every step, and one returned metric every second step."""
  every = 1
  kind = 'probe'

  def __init__(self):
    self.params, self.began = {}, None

  def begin(self, state, step, ctx):
    self.began = step

  def __call__(self, state, step, ctx):
    self.params[step] = jax.tree.map(np.asarray, state.params)
    return {'head_norm': float(jnp.linalg.norm(state.params['head']['w']))} if step % 2 == 0 else None


def _with_teacher(config, calls):
  """The toy regression distilled towards a frozen linear teacher that `load_frozen` places on the mesh."""
  exp = toy_experiment(config)

  def load_frozen(ctx):
    calls.append(ctx.workdir)
    return ctx.place({'teacher': {'w': nn.LogicallyPartitioned(TEACHER, ('embed', 'vocab'))}})

  def loss_fn(params, batch, rng, step):
    pred = (batch['x'] @ params['enc']['w'] + batch['x']) @ params['head']['w']
    return jnp.mean((pred - batch['y']) ** 2) + jnp.mean((pred - batch['x'] @ params['teacher']['w']) ** 2), {}

  return dataclasses.replace(exp, loss_fn=loss_fn, load_frozen=load_frozen)


def test_frozen_subtree_is_loaded_at_every_start_and_never_trained_averaged_or_saved(tmp_path):
  config = toy_config(mesh=ONE_DEVICE, total_steps=6, ema_decay=0.5, ckpt_every=3)
  calls = []
  full = train_and_evaluate(config, str(tmp_path / 'full'), _with_teacher(config, calls))
  assert len(calls) == 1
  state = full['state']
  np.testing.assert_array_equal(np.asarray(state.frozen['teacher']['w']), TEACHER)
  assert set(state.params) == set(state.ema) == {'enc', 'head'}
  opt_paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(state.opt_states)[0]]
  assert opt_paths and not any('teacher' in p for p in opt_paths)
  assert 'teacher' in state.eval_params() and 'teacher' not in state.saved()['params']
  saved = b''
  for root, _, files in os.walk(tmp_path / 'full' / 'checkpoints'):
    for f in files:
      with open(os.path.join(root, f), 'rb') as fh:
        saved += fh.read()
  assert b'head' in saved and b'teacher' not in saved  # tree metadata names every saved subtree

  split = str(tmp_path / 'split')
  train_and_evaluate(config, split, _with_teacher(config, calls), stop_after_step=3)
  resumed = train_and_evaluate(config, split, _with_teacher(config, calls))
  assert calls[1:] == [split, split]  # loaded again on resume
  for a, b in zip(jax.tree.leaves(state.saved()), jax.tree.leaves(resumed['state'].saved())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frozen_until_group_changes_only_after_step_k(tmp_path):
  lr = 0.01
  config = toy_config(mesh=ONE_DEVICE, total_steps=5, **{'optim.name': 'adamw', 'optim.lr': lr,
                                                         'optim.group_spec': 'head=^head/:frozen_until=3'})
  hook = Recorder()
  exp = dataclasses.replace(toy_experiment(config), hooks=(hook,))
  train_and_evaluate(config, str(tmp_path / 'run'), exp)
  assert hook.began == 0 and sorted(hook.params) == [1, 2, 3, 4, 5]
  initial_head = hook.params[1]['head']['w']
  for step in (2, 3):
    np.testing.assert_array_equal(hook.params[step]['head']['w'], initial_head)
    assert not np.array_equal(hook.params[step]['enc']['w'], hook.params[step - 1]['enc']['w'])
  # Its first update is Adam's first (fresh moments, bias correction from 1): lr times the gradient's sign.
  np.testing.assert_allclose(np.abs(hook.params[4]['head']['w'] - hook.params[3]['head']['w']), lr, rtol=1e-3)
  rows = read_metrics(str(tmp_path / 'run'))
  assert [rows[s]['lr/head'] for s in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, pytest.approx(lr)]
  assert rows[1]['grad_norm/head'] == 0.0 and rows[4]['grad_norm/head'] > 0
  probe = read_metrics(str(tmp_path / 'run'), 'probe')
  assert sorted(probe) == [2, 4]
  assert_close_programs(probe[4]['head_norm'], np.linalg.norm(hook.params[4]['head']['w']))


def test_ema_of_a_chosen_subtree_only(tmp_path):
  seen = {}

  def probe(params, ctx):
    seen.update(jax.tree.map(np.asarray, params))
    return {}

  config = toy_config(mesh=ONE_DEVICE, total_steps=4, ema_decay=0.5, ema_regex='^head/')
  out = train_and_evaluate(config, str(tmp_path / 'run'), toy_experiment(config, evaluators={'probe': probe}))
  state = out['state']
  assert set(state.ema) == {'head'}
  np.testing.assert_array_equal(seen['head']['w'], np.asarray(state.ema['head']['w']))
  np.testing.assert_array_equal(seen['enc']['w'], np.asarray(state.params['enc']['w']))
  assert not np.allclose(state.ema['head']['w'], state.params['head']['w'])


def test_group_that_matches_nothing_is_an_error_naming_it(tmp_path):
  config = toy_config(mesh=ONE_DEVICE, **{'optim.group_spec': 'head=^head/:lr=0.05;typo=^hed/'})
  with pytest.raises(ValueError, match=r"config\.optim\.groups\.typo: regex '\^hed/' matches no parameter"):
    train_and_evaluate(config, str(tmp_path / 'run'), toy_experiment(config))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_group_sizes_are_in_the_setup_row(tmp_path):
  config = toy_config(mesh=ONE_DEVICE, total_steps=2, **{'optim.group_spec': 'head=^head/:lr=0.05'})
  train_and_evaluate(config, str(tmp_path / 'run'), toy_experiment(config))
  setup = read_metrics(str(tmp_path / 'run'), 'setup')[0]
  assert setup['num_params/head'] == 4 * 2 and setup['num_params/default'] == 4 * 4
  assert setup['num_params'] == setup['num_params/head'] + setup['num_params/default']
  assert read_metrics(str(tmp_path / 'run'))[1]['lr/head'] == pytest.approx(0.05)


def test_checkpoint_of_the_old_state_layout_is_refused_with_the_way_out(tmp_path):
  from mmjax.train import IncompatibleCheckpointError
  from mmjax.train.checkpoint import Checkpointer
  config = toy_config(mesh=ONE_DEVICE)
  old = {'step': np.int32(4), 'rng': np.zeros(2, np.uint32), 'params': {'w': np.zeros(2, np.float32)},
         'opt_state': {'mu': {'w': np.zeros(2, np.float32)}}}
  ckpt = Checkpointer(str(tmp_path / 'old' / 'checkpoints'), every=1, keep=1, async_save=False)
  ckpt.save(4, old, {'iterator': {}}, config)
  ckpt.close()
  with pytest.raises(IncompatibleCheckpointError, match='layout of an older mmjax.*--config.init_from='):
    train_and_evaluate(config, str(tmp_path / 'old'), toy_experiment(config))
