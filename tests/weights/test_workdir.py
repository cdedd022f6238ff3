"""read_workdir_params: the EMA of the latest finished step, past empty and partial step directories, onto the
wanted shardings, naming mismatches, and never writing into the workdir."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax.train.checkpoint import Checkpointer
from mmjax.weights import WeightsMismatchError, load_into, read_workdir_params
from tests.files import snapshot

SHAPES = {'enc': {'w': (8, 4), 'b': (4,)}, 'head': {'w': (4, 2)}}


def _tree(value):
  return {name: {k: np.full(shape, value + i, np.float32) for i, (k, shape) in enumerate(sub.items())}
          for name, sub in SHAPES.items()}


def _abstract(shapes=SHAPES, sharding=None):
  return {name: {k: jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding) for k, shape in sub.items()}
          for name, sub in shapes.items()}



def _save_state(workdir, step, state):
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(workdir / 'checkpoints' / str(step) / 'state', state)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """Steps 2 (params only) and 5 (params + an EMA of 'enc'), written by the trainer's Checkpointer; then an empty
  step 7, a partly copied step 9 and a save in progress."""
  root = tmp_path_factory.mktemp('run')
  ckpt = Checkpointer(str(root / 'checkpoints'), every=1, keep=5, async_save=False)
  ckpt.save(2, {'step': np.int32(2), 'params': _tree(20)}, {'iterator': '{}'}, {'model': 'toy'})
  ckpt.save(5, {'step': np.int32(5), 'params': _tree(50), 'ema': {'enc': _tree(500)['enc']}}, {'iterator': '{}'},
            {'model': 'toy'})
  ckpt.close()
  (root / 'checkpoints' / '7').mkdir()
  (root / 'checkpoints' / '9' / 'state').mkdir(parents=True)
  (root / 'checkpoints' / '9' / 'state' / 'manifest.ocdbt').write_bytes(b'partial')
  (root / 'checkpoints' / '11.orbax-checkpoint-tmp-1').mkdir()
  return root


def test_latest_finished_step_with_its_ema_and_nothing_written(workdir):
  before = snapshot(workdir, mtimes=True)
  params, info = read_workdir_params(workdir, _abstract())
  assert (info.step, info.ema) == (5, True)
  np.testing.assert_array_equal(params['enc']['w'], _tree(500)['enc']['w'])  # the EMA where there is one
  np.testing.assert_array_equal(params['head']['w'], _tree(50)['head']['w'])  # the params elsewhere
  old, info = read_workdir_params(workdir, _abstract(), step=2)
  assert (info.step, info.ema) == (2, False)
  jax.tree.map(np.testing.assert_array_equal, old, _tree(20))
  stored, _ = read_workdir_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, stored, params)
  jax.tree.map(np.testing.assert_array_equal, load_into(_abstract(), workdir), params)
  assert snapshot(workdir, mtimes=True) == before


def test_ema_params_key_and_placement(tmp_path):
  _save_state(tmp_path, 3, {'step': np.int32(3), 'params': _tree(1), 'ema_params': _tree(2)})
  mesh = jax.make_mesh((4, 2), ('fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 2)
  sharding = NamedSharding(mesh, P('fsdp'))
  params, info = read_workdir_params(tmp_path, _abstract(sharding=sharding))
  assert info.ema
  jax.tree.map(np.testing.assert_array_equal, params, _tree(2))
  assert params['enc']['w'].sharding == sharding
  assert {s.data.shape for s in params['enc']['w'].addressable_shards} == {(2, 4)}


def test_mismatches_and_missing_steps_are_named(workdir, tmp_path):
  shapes = {**SHAPES, 'head': {'w': (4, 3)}, 'extra': {'w': (2,)}}
  with pytest.raises(WeightsMismatchError, match=r'missing 1 parameters: extra/w'):
    read_workdir_params(workdir, _abstract(shapes))
  shapes.pop('extra')
  with pytest.raises(WeightsMismatchError, match=r'step 5\) does not fit the model: head/w: \(4, 2\) in the '
                                                 r'checkpoint vs \(4, 3\) in the model'):
    read_workdir_params(workdir, _abstract(shapes))
  with pytest.raises(WeightsMismatchError, match=r'unexpected 1 parameters: head/w'):
    read_workdir_params(workdir, _abstract({'enc': SHAPES['enc']}))
  with pytest.raises(FileNotFoundError, match=r'has no finished step 7; it has 2, 5'):
    read_workdir_params(workdir, step=7)
  (tmp_path / 'checkpoints' / '1').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='holds no finished checkpoint'):
    read_workdir_params(tmp_path)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='is not a trainer workdir'):
    read_workdir_params(tmp_path / 'empty')
  assert not any((tmp_path / 'empty').iterdir())  # a CheckpointManager would have made checkpoints/ there


def test_training_conversion_and_generation_read_the_same_parameters(tmp_path):
  """One workdir (the latest step keeps an EMA of one layer; a later step directory is empty): the trainer's
  init_from, --mode convert and the generation CLI's loader all take the latest step's params with that EMA."""
  from flax.traverse_util import flatten_dict, unflatten_dict

  from mmjax.weights import from_pretrained, initial_params, orbax_to_hf
  from mmjax.weights.load_model import load_model
  from tests.hf_models import save_qwen2
  save_qwen2(tmp_path / 'hf', tied=False)
  _, params, _ = from_pretrained(tmp_path / 'hf')
  shift = lambda tree, value: jax.tree.map(lambda x: np.asarray(x) + np.float32(value), tree)  # noqa: E731
  ckpt = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=5, async_save=False)
  ckpt.save(2, {'step': np.int32(2), 'params': shift(params, 1)}, {'iterator': '{}'}, {'model': 'tiny'})
  ema = {'layers_0': shift(params['layers_0'], 3)}
  ckpt.save(5, {'step': np.int32(5), 'params': shift(params, 2), 'ema': ema}, {'iterator': '{}'}, {'model': 'tiny'})
  ckpt.close()
  (tmp_path / 'run' / 'checkpoints' / '8').mkdir()
  want = unflatten_dict({**flatten_dict(shift(params, 2)), **flatten_dict(ema)})
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)

  def no_random_init(rng):
    raise AssertionError('every parameter comes from the workdir')

  training = initial_params(str(tmp_path / 'run'), abstract, no_random_init, jax.random.key(0))
  orbax_to_hf(tmp_path / 'run', tmp_path / 'converted', hf_config=tmp_path / 'hf')
  _, conversion, _ = from_pretrained(tmp_path / 'converted')
  generation = load_model(tmp_path / 'run', base=tmp_path / 'hf').params
  for got in (training, conversion, generation):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), want)
