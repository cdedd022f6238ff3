"""Config changes on resume: those that would silently corrupt the run are refused with the diff unless
--allow_config_change names them; safe ones are accepted with a warning; stateless ones (clip_norm) are accepted."""
import logging
import shutil

import ml_collections
import pytest

from mmjax.train import evaluate_checkpoint, optim_config, train_and_evaluate
from mmjax.train.resume_config import REFUSED, SAFE, STATELESS, ConfigChangeError, changes, check, classify
from tests.files import snapshot
from tests.train.toy import toy_config, toy_experiment

ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}
# The silent corruptions of issue 12 (break 5): key -> the value the resumed run asks for.
CORRUPTING = {'batch_size': 16, 'param_dtype': 'bfloat16', 'data.test_fraction': 0.3, 'seed': 7, 'total_steps': 10}


def _config(**kw):
  c = toy_config(mesh=ONE_DEVICE, **kw)
  c.data = ml_collections.ConfigDict({'test_fraction': 0.2, 'verify': True})  # the toy reads no split: keys only
  return c


def _with(config, changes_):
  config = ml_collections.ConfigDict(config.to_dict())
  config.update_from_flattened_dict(changes_)
  return config



@pytest.fixture(scope='module')
def at_step_4(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  config = _config()
  assert train_and_evaluate(config, workdir, toy_experiment(config), stop_after_step=4)['step'] == 4
  return workdir


@pytest.fixture
def workdir(at_step_4, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(at_step_4, copy)
  return copy


def test_each_silent_change_is_refused_with_the_diff(workdir):
  before = snapshot(workdir)
  config = _with(_config(), CORRUPTING)
  with pytest.raises(ConfigChangeError) as e:
    train_and_evaluate(config, workdir, toy_experiment(config))
  msg = str(e.value)
  for line in ('batch_size: 8 -> 16', "param_dtype: 'float32' -> 'bfloat16'", 'data.test_fraction: 0.2 -> 0.3',
               'seed: 0 -> 7', 'total_steps: 8 -> 10'):
    assert line in msg
  assert f'--allow_config_change={",".join(sorted(CORRUPTING))}' in msg
  assert snapshot(workdir) == before


def test_the_flag_accepts_what_it_names_only(workdir, caplog):
  config = _with(_config(), CORRUPTING)
  with pytest.raises(ConfigChangeError) as e:
    train_and_evaluate(config, workdir, toy_experiment(config), allow_config_change=['batch_size', 'data'])
  listed = {line.split(':')[0].strip() for line in str(e.value).splitlines() if line.startswith('  ')}
  assert listed == {'param_dtype', 'seed', 'total_steps'}
  with caplog.at_level(logging.WARNING):
    out = train_and_evaluate(config, workdir, toy_experiment(config), allow_config_change=sorted(CORRUPTING))
  assert out['step'] == 10
  warned = ' '.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert all(key in warned for key in CORRUPTING)


def test_a_mistyped_allowed_key_is_named(workdir):
  config = _config()
  with pytest.raises(ValueError, match='--allow_config_change names batchsize'):
    train_and_evaluate(config, workdir, toy_experiment(config), allow_config_change=['batchsize'])


def test_safe_changes_are_accepted_with_a_warning(workdir, caplog):
  config = _with(_config(), {'log_every': 2, 'keep_ckpts': 1, 'data.verify': False})
  with caplog.at_level(logging.WARNING):
    out = train_and_evaluate(config, workdir, toy_experiment(config))
  assert out['step'] == 8
  warned = ' '.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert 'log_every: 1 -> 2' in warned and 'keep_ckpts: 3 -> 1' in warned and 'data.verify' in warned


def test_clip_norm_change_is_accepted_both_ways(tmp_path):
  workdir = str(tmp_path / 'clip')
  clipped = _config(**{'optim.clip_norm': 1.0})
  train_and_evaluate(clipped, workdir, toy_experiment(clipped), stop_after_step=2)
  unclipped = _config(**{'optim.clip_norm': 0.0})
  assert train_and_evaluate(unclipped, workdir, toy_experiment(unclipped), stop_after_step=4)['step'] == 4
  assert train_and_evaluate(clipped, workdir, toy_experiment(clipped))['step'] == 8


def test_evaluation_is_not_policed(workdir):
  config = _with(_config(), CORRUPTING)
  assert evaluate_checkpoint(config, workdir, toy_experiment(config))['step'] == 4


def test_policy_table():
  assert classify('optim.lr')[0] == REFUSED
  assert classify('optim.groups.vision.lr')[0] == REFUSED
  assert classify('optim.clip_norm')[0] == STATELESS
  assert classify('optim_g.clip_norm', optimisers={'optim_g'})[0] == STATELESS
  assert classify('optim_g.b1', optimisers={'optim_g'})[0] == REFUSED
  for key in ('compute_dtype', 'grad_accum_steps', 'mesh.fsdp', 'eval.batch_size', 'async_checkpointing'):
    assert classify(key)[0] == SAFE, key
  for key in ('data.dir', 'model.num_heads', 'ema_decay', 'some_experiment_key'):
    assert classify(key)[0] == REFUSED, key


def test_changes_find_optimisers_anywhere_and_keys_on_one_side():
  old = {'optim_d': optim_config().to_dict(), 'batch_size': 8}
  new = {'optim_d': optim_config(lr=0.5, clip_norm=0.0).to_dict(), 'batch_size': 8, 'sample_every': 10}
  found = {c.key: c for c in changes(old, new)}
  assert set(found) == {'optim_d.lr', 'optim_d.clip_norm', 'sample_every'}
  assert found['optim_d.lr'].kind == REFUSED and found['optim_d.clip_norm'].kind == STATELESS
  assert str(found['sample_every']).startswith('sample_every: <absent> -> 10')
  with pytest.raises(ConfigChangeError, match='optim_d.lr: 0.001 -> 0.5'):
    check(old, new, allowed=['sample_every'])
  assert len(check(old, new, allowed=['optim_d.lr', 'sample_every'])) == 3
