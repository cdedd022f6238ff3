"""Sharded training on 8 CPU devices: parity with 1 device, cross-topology restore, golden specs."""
import json
import os

import jax
import numpy as np
import pytest

from configs import vit_digits
from experiments.vit_digits.experiment import make_experiment
from mmjax.train import evaluate_checkpoint, train_and_evaluate
from mmjax.train.mesh import make_mesh
from mmjax.train.sharding import partition_specs_json
from mmjax.train.trainer import TrainSetup
from tests.numerics import assert_close_programs
from tests.train.metrics_io import read_metrics

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'vit_digits_smoke_partition_specs.json')


def _config(mesh, steps=8):
  c = vit_digits.get_config('variant=smoke')
  c.mesh = mesh
  c.total_steps = steps
  c.log_every = 1
  c.eval_every = 0
  c.ckpt_every = steps
  c.progress_bar = False
  c.async_checkpointing = False
  c.data.augment = False
  return c


@pytest.fixture(scope='module')
def sharded_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('sharded'))
  config = _config({'data': 2, 'fsdp': 2, 'tensor': 2})
  out = train_and_evaluate(config, workdir, make_experiment(config))
  return config, workdir, out


def test_mesh_fills_minus_one_and_rejects_bad_sizes():
  assert dict(make_mesh({'data': -1, 'fsdp': 2, 'tensor': 1}).shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  with pytest.raises(ValueError, match='at most one -1'):
    make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match='not divisible'):
    make_mesh({'data': -1, 'fsdp': 3})
  with pytest.raises(ValueError, match='only 8 are present'):
    make_mesh({'data': 16})


def test_params_are_really_sharded(sharded_run):
  _, _, out = sharded_run
  kernel = out['state'].params['encoder']['layers_0']['mlp']['fc1']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert len({s.device for s in kernel.addressable_shards}) == 8
  assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)


def test_2x2x2_mesh_matches_one_device(sharded_run, tmp_path):
  _, sharded_dir, _ = sharded_run
  config = _config({'data': 1, 'fsdp': 1, 'tensor': 1})
  train_and_evaluate(config, str(tmp_path / 'one'), make_experiment(config))
  one, eight = read_metrics(str(tmp_path / 'one')), read_metrics(sharded_dir)
  assert sorted(one) == sorted(eight) == list(range(1, 9))
  for key in ('loss', 'grad_norm'):
    assert_close_programs([one[s][key] for s in one], [eight[s][key] for s in one])


@pytest.mark.parametrize('mesh', [{'data': 1, 'fsdp': 1, 'tensor': 1}, {'data': 1, 'fsdp': 2, 'tensor': 2}])
def test_checkpoint_from_8_devices_restores_on_fewer(sharded_run, mesh):
  _, workdir, out = sharded_run
  config = _config(mesh)
  restored = evaluate_checkpoint(config, workdir, make_experiment(config))
  n = int(np.prod(list(mesh.values())))
  for a, b in zip(jax.tree.leaves(out['state'].params), jax.tree.leaves(restored['state'].params)):
    assert len(b.sharding.device_set) == n
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert restored['eval']['test/accuracy'] == pytest.approx(out['eval']['test/accuracy'])


def test_golden_partition_specs_of_the_smoke_config():
  config = _config({'data': 2, 'fsdp': 2, 'tensor': 2})
  specs = partition_specs_json(TrainSetup(config, make_experiment(config)).param_shardings)
  if os.environ.get('UPDATE_GOLDEN'):
    with open(GOLDEN, 'w') as f:
      f.write(specs + '\n')
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert json.loads(specs) == golden
  # Spot checks that make the golden file meaningful, not just self-consistent.
  assert golden['encoder/layers_0/attention/q_proj/kernel'] == ['fsdp', 'tensor', None]
  assert golden['head/kernel'] == ['fsdp', 'tensor']


def test_the_step_keeps_the_models_activation_constraints():
  """The step traces at its first call, outside any mesh context: the model's logical activation constraints must
  still become sharding constraints in the program (they did not while the rules only surrounded jax.jit)."""
  config = _config({'data': 2, 'fsdp': 2, 'tensor': 2})
  setup = TrainSetup(config, make_experiment(config))
  size, channels = config.data.image_size, 1 if config.data.grayscale else 3
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, size, size, channels), np.float32,
                                         sharding=setup.batch_sharding),
           'label': jax.ShapeDtypeStruct((config.batch_size,), np.int32, sharding=setup.batch_sharding)}
  text = setup.build_step().lower(setup.abstract_state, batch).as_text()
  assert text.count('sharding_constraint') >= 2 * config.model.depth, text.count('sharding_constraint')
