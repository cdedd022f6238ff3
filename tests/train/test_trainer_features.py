"""Trainer features on a toy regression: metrics, NaN guard, accumulation, EMA, groups, profiling."""
import dataclasses
import glob
import os

import jax
import numpy as np
import pytest

from mmjax.train import group, train_and_evaluate
from mmjax.train.trainer import TrainSetup
from tests.numerics import assert_close_programs
from tests.train.metrics_io import read_metrics
from tests.train.toy import toy_config, toy_data, toy_experiment

ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}


def _run(tmp_path, name='run', source=None, evaluators=None, **overrides):
  overrides.setdefault('mesh', ONE_DEVICE)
  config = toy_config(**overrides)
  workdir = str(tmp_path / name)
  out = train_and_evaluate(config, workdir, toy_experiment(config, source, evaluators))
  return out, workdir


def test_metrics_jsonl_has_required_fields_and_loss_decreases(tmp_path):
  out, workdir = _run(tmp_path, total_steps=12)
  rows = read_metrics(workdir)
  assert sorted(rows) == list(range(1, 13))
  for row in rows.values():
    assert {'step', 'loss', 'lr', 'grad_norm', 'steps_per_sec', 'examples_per_sec'} <= set(row)
  assert rows[12]['loss'] < 0.5 * rows[1]['loss']
  assert read_metrics(workdir, 'setup')[0]['num_params'] == 4 * 4 + 4 * 2
  assert out['step'] == 12 and not out['preempted']


def test_nan_guard_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
  # Batch 3 (examples 16..23, no shuffling) holds a NaN input.
  source = toy_data(nan_rows=[19])
  with pytest.raises(FloatingPointError, match='step 3'):
    _run(tmp_path, source=source, ckpt_every=1)
  from mmjax.train.checkpoint import Checkpointer
  ckpt = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=3)
  assert ckpt.latest_step() == 2
  ckpt.close()


def test_grad_accumulation_matches_full_batch(tmp_path):
  full, _ = _run(tmp_path, 'full', total_steps=5)
  accum, _ = _run(tmp_path, 'accum', total_steps=5, grad_accum_steps=4)
  assert_close_programs(accum['state'].params, full['state'].params)


def test_frozen_group_is_not_updated_and_group_lrs_are_logged(tmp_path):
  config_groups = {'enc': group('^enc/', frozen=True), 'head': group('^head/', lr=0.05)}
  cfg = toy_config(mesh=ONE_DEVICE, total_steps=3)
  for k, v in config_groups.items():
    cfg.optim.groups[k] = v
  exp = toy_experiment(cfg)
  initial = TrainSetup(cfg, exp).init_state(jax.random.PRNGKey(cfg.seed)).params
  initial = jax.tree.map(np.asarray, initial)
  out = train_and_evaluate(cfg, str(tmp_path / 'g'), exp)
  rows = read_metrics(str(tmp_path / 'g'))
  assert rows[1]['lr/head'] == pytest.approx(0.05)
  assert 'grad_norm/enc' not in rows[1] and 'grad_norm/head' in rows[1]
  np.testing.assert_array_equal(np.asarray(out['state'].params['enc']['w']), initial['enc']['w'])
  assert not np.allclose(np.asarray(out['state'].params['head']['w']), initial['head']['w'])


def test_ema_is_kept_checkpointed_and_used_for_eval(tmp_path):
  seen = {}

  def probe(params, ctx):
    seen['w'] = np.asarray(params['head']['w'])
    return {'dummy': 0.0}

  out, workdir = _run(tmp_path, total_steps=4, ema_decay=0.5, evaluators={'probe': probe})
  state = out['state']
  np.testing.assert_array_equal(seen['w'], np.asarray(state.ema['head']['w']))
  assert not np.allclose(state.ema['head']['w'], state.params['head']['w'])
  from mmjax.train.checkpoint import Checkpointer
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=1)
  meta = ckpt.manager.item_metadata(4)['state']
  assert set(meta['ema']) == {'enc', 'head'}
  ckpt.close()


def test_xla_options_reach_the_step_compile(tmp_path):
  """config.xla_options are the step's compiler options: another optimisation level trains the same toy run
  within the policy's 1e-5 between programs, and an option XLA does not know fails the first step, naming it."""
  base, _ = _run(tmp_path, 'base', total_steps=3)
  other, _ = _run(tmp_path, 'other', total_steps=3, xla_options={'xla_backend_optimization_level': 2})
  assert_close_programs(other['state'].params, base['state'].params)
  with pytest.raises(Exception, match='xla_no_such_option'):
    _run(tmp_path, 'bad', total_steps=1, xla_options={'xla_no_such_option': 1})


def test_profile_and_tensorboard_outputs(tmp_path):
  _, workdir = _run(tmp_path, total_steps=4, profile_steps=(2, 3), tensorboard=True)
  assert glob.glob(os.path.join(workdir, 'profile', '**', '*.xplane.pb'), recursive=True)
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))


def test_stop_after_step_checkpoints_and_resume_finishes(tmp_path):
  out, workdir = _run(tmp_path, total_steps=6)
  config = toy_config(mesh=ONE_DEVICE, total_steps=6)
  first = train_and_evaluate(config, str(tmp_path / 'split'), toy_experiment(config), stop_after_step=3)
  assert first['preempted'] and first['step'] == 3
  second = train_and_evaluate(config, str(tmp_path / 'split'), toy_experiment(config))
  assert second['step'] == 6
  for a, b in zip(jax.tree.leaves(out['state']), jax.tree.leaves(second['state'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_relative_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = toy_config(mesh=ONE_DEVICE, total_steps=2, ckpt_every=1, async_checkpointing=True)
  out = train_and_evaluate(config, 'relative/run', toy_experiment(config))
  assert out['step'] == 2
  assert os.path.isdir(tmp_path / 'relative' / 'run' / 'checkpoints' / '2')


def test_keep_ckpts_and_interval(tmp_path):
  _, workdir = _run(tmp_path, total_steps=7, ckpt_every=2, keep_ckpts=2)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps == [6, 7]  # saves at 2, 4, 6 and the final step; only the newest two are kept


def test_init_from_another_run_and_its_priority(tmp_path):
  first, first_dir = _run(tmp_path, 'first', total_steps=4)
  # lr 0: the second run's params stay at what it was initialised with.
  second, second_dir = _run(tmp_path, 'second', total_steps=2, init_from=first_dir, **{'optim.lr': 0.0})
  for a, b in zip(jax.tree.leaves(first['state'].params), jax.tree.leaves(second['state'].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A workdir checkpoint wins over init_from: resuming ignores it.
  again = train_and_evaluate(toy_config(mesh=ONE_DEVICE, total_steps=2, init_from='/nonexistent',
                                        **{'optim.lr': 0.0}), second_dir, toy_experiment(toy_config()))
  assert again['step'] == 2


def test_init_from_computes_no_random_init(tmp_path):
  """With init_from the experiment's init_params is traced for shapes only, never compiled to compute values."""
  _, first_dir = _run(tmp_path, 'first', total_steps=2)

  def traces(name, **overrides):
    config = toy_config(mesh=ONE_DEVICE, total_steps=3, **overrides)
    experiment = toy_experiment(config)
    calls, init = [], experiment.init_params
    experiment = dataclasses.replace(experiment, init_params=lambda rng: calls.append(1) or init(rng))
    train_and_evaluate(config, str(tmp_path / name), experiment)
    return len(calls)

  assert traces('from_checkpoint', init_from=first_dir) == traces('fresh') - 1


def test_init_from_with_mismatched_shapes_names_them(tmp_path):
  import orbax.checkpoint as ocp

  from mmjax.train import IncompatibleCheckpointError
  bad = {'enc': {'w': np.zeros((4, 4), np.float32)}, 'head': {'w': np.zeros((4, 3), np.float32)}}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / 'src' / 'params', bad)
  with pytest.raises(IncompatibleCheckpointError, match=r'head/w: \(4, 3\).*\(4, 2\)'):
    _run(tmp_path, init_from=str(tmp_path / 'src'))
