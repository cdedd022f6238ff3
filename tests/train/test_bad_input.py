"""Bad input gets a clear error naming the problem, and the workdir keeps everything it had."""

import pytest

from configs import vit_digits
from experiments.vit_digits.experiment import make_experiment
from mmjax.data import ImageReadError, write_image_folder
from mmjax.train import IncompatibleCheckpointError, train_and_evaluate
from tests.files import snapshot
from tests.train.launcher import run_launch


def _config(**kw):
  c = vit_digits.get_config('variant=smoke')
  c.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  c.progress_bar = False
  c.async_checkpointing = False
  c.total_steps = 4
  c.ckpt_every = 4
  c.eval_every = 0
  c.update_from_flattened_dict(kw)
  return c


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  config = _config()
  train_and_evaluate(config, workdir, make_experiment(config))
  return workdir


def test_unknown_config_key_names_the_key_and_closest_ones(tmp_path):
  workdir = tmp_path / 'never'
  proc = run_launch(str(workdir), '--config.optim.lrr=0.1')
  assert proc.returncode == 2
  assert "unknown config key 'optim.lrr'" in proc.stderr
  assert 'optim.lr' in proc.stderr.split("unknown config key 'optim.lrr'")[1]
  assert not workdir.exists()


def test_unknown_config_argument_is_named(tmp_path):
  proc = run_launch(str(tmp_path / 'never'), config='configs/vit_digits.py:mdoe=smoke')
  assert proc.returncode != 0
  assert "unknown config argument 'mdoe'" in proc.stderr


def test_missing_data_directory(trained_workdir):
  before = snapshot(trained_workdir)
  config = _config(**{'data.dir': '/nonexistent/digits'})
  with pytest.raises(FileNotFoundError, match='/nonexistent/digits/train'):
    train_and_evaluate(config, trained_workdir, make_experiment(config))
  assert snapshot(trained_workdir) == before


def test_corrupt_image_in_folder_dataset_is_named(tmp_path):
  root = tmp_path / 'folder'
  write_image_folder(root / 'train', 'train')
  write_image_folder(root / 'test', 'test')
  bad = sorted((root / 'train' / '3').iterdir())[5]
  bad.write_bytes(b'this is not a png')
  config = _config(**{'data.dir': str(root)})
  with pytest.raises(ImageReadError, match=str(bad)):
    make_experiment(config)


def test_checkpoint_from_an_incompatible_config(trained_workdir):
  before = snapshot(trained_workdir)
  config = _config(**{'model.width': 48})
  with pytest.raises(IncompatibleCheckpointError) as e:
    train_and_evaluate(config, trained_workdir, make_experiment(config))
  msg = str(e.value)
  assert 'incompatible config' in msg
  assert 'patch_embed/kernel' in msg and '(2, 2, 1, 32)' in msg and '(2, 2, 1, 48)' in msg
  assert 'model.width: 32 -> 48' in msg
  assert snapshot(trained_workdir) == before


@pytest.mark.parametrize('change, error', [({'data.dir': '/nonexistent/digits'}, FileNotFoundError),
                                           ({'grad_accum_steps': 3}, ValueError),
                                           ({'compute_dtype': 'bfloat'}, TypeError)])
def test_a_failed_start_leaves_no_trace_in_a_new_workdir(tmp_path, change, error):
  with pytest.raises(error):
    train_and_evaluate(_config(**change), str(tmp_path / 'new' / 'run'))  # the experiment loads inside
  assert not (tmp_path / 'new').exists()
