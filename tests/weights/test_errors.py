"""Weight files that are there but cannot be read: every failure names the file (the shard of its index) and the
problem, as WeightsFileError (a ValueError, so launch.py prints it as one line and exits 2)."""
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from safetensors.numpy import load_file, save_file

from mmjax.weights import WeightsFileError, from_pretrained, load_into
from tests.hf_models import save_qwen2
from tests.train.launcher import REPO, launch_env

INDEX = 'model.safetensors.index.json'
SHARDS = [f'model-{i:05d}-of-00003.safetensors' for i in (1, 2, 3)]
ANY_TREE = {'x': jax.ShapeDtypeStruct((1,), jnp.float32)}  # the source fails to open before it is matched


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
  """A tiny Qwen2 HF folder whose weights are split over three shards listed in model.safetensors.index.json."""
  directory = tmp_path_factory.mktemp('sharded')
  save_qwen2(directory)
  tensors = load_file(directory / 'model.safetensors')
  (directory / 'model.safetensors').unlink()
  names = sorted(tensors)
  weight_map = {name: SHARDS[i * 3 // len(names)] for i, name in enumerate(names)}
  for shard in SHARDS:
    save_file({n: tensors[n] for n, s in weight_map.items() if s == shard}, directory / shard, {'format': 'pt'})
  (directory / INDEX).write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
  from_pretrained(directory)  # the folder is sound: each test below breaks one thing in a copy
  return directory


def _copy(sharded, tmp_path):
  shutil.copytree(sharded, tmp_path / 'hf')
  return tmp_path / 'hf'


def _truncate(path, keep):
  path.write_bytes(path.read_bytes()[:keep])


def _torch_file(path):
  torch.save({'weight': torch.zeros(2)}, path)


SHARD_DAMAGE = {
    'truncated': (lambda p: _truncate(p, p.stat().st_size - 100), r'is truncated: it holds \d+ of the \d+ bytes'),
    'truncated_header': (lambda p: _truncate(p, 40), r'is truncated: it holds 40 bytes, its header alone needs'),
    'empty': (lambda p: _truncate(p, 0), r'is empty \(0 bytes\)'),
    'tiny': (lambda p: _truncate(p, 5), r'is truncated: 5 bytes, less than a safetensors header'),
    'trailing': (lambda p: p.write_bytes(p.read_bytes() + bytes(10)), r'has 10 bytes past the tensor data its header'),
    'garbled_header': (lambda p: p.write_bytes(p.read_bytes()[:9] + b'#' + p.read_bytes()[10:]),
                       r'has a damaged header \(safetensors: .*invalid JSON in header'),
    'text': (lambda p: p.write_text('certainly not safetensors'), r'is not a safetensors file \(safetensors: .*'
                                                                  r'header too large\)'),
    'pickle': (_torch_file, r'is a pickle \(torch\.save\) file, not safetensors; pickle checkpoints are refused'),
}


@pytest.mark.parametrize('damage', SHARD_DAMAGE)
def test_a_damaged_shard_is_named_with_the_problem(sharded, tmp_path, damage):
  directory = _copy(sharded, tmp_path)
  breaks, problem = SHARD_DAMAGE[damage]
  breaks(directory / SHARDS[1])
  shard = rf'{directory}/{SHARDS[1]} \(one of the 3 shards of {INDEX}\) '
  with pytest.raises(WeightsFileError, match=shard + problem):
    from_pretrained(directory)
  with pytest.raises(WeightsFileError, match=shard + problem):
    load_into(ANY_TREE, directory)


def _edit_index(directory, edit):
  contents = json.loads((directory / INDEX).read_text())
  edit(contents['weight_map'])
  (directory / INDEX).write_text(json.dumps(contents))


def test_index_problems_name_the_index(sharded, tmp_path):
  directory = _copy(sharded, tmp_path)
  index = directory / INDEX
  good = index.read_text()
  _edit_index(directory, lambda m: m.update({'lm_head.weight': 'pytorch_model.bin'}))
  with pytest.raises(WeightsFileError, match=rf"{index} lists pickle files \['pytorch_model.bin'\] as shards; "
                                             'pickle checkpoints are refused'):
    from_pretrained(directory)
  index.write_text(good)
  _edit_index(directory, lambda m: m.update({'model.norm.weight': SHARDS[0], 'model.ghost.weight': SHARDS[0]}))
  with pytest.raises(WeightsFileError, match=rf'{index} lists tensors that their shards do not hold: '
                                             rf'model\.norm\.weight \(listed in {SHARDS[0]}, stored in {SHARDS[2]}\), '
                                             rf'model\.ghost\.weight \(listed in {SHARDS[0]}, stored in no shard\)'):
    from_pretrained(directory)
  index.write_text(good)
  (directory / SHARDS[2]).unlink()
  with pytest.raises(FileNotFoundError, match=rf"{index} lists shards that do not exist: \['{SHARDS[2]}'\]"):
    from_pretrained(directory)
  index.write_text('{"weight_map": {"lm_head.weight": ')
  with pytest.raises(WeightsFileError, match=rf'{index} is not valid JSON: Expecting value at line 1, column 35\.'):
    from_pretrained(directory)
  index.write_text('{"metadata": {}}')
  with pytest.raises(WeightsFileError, match=rf'{index} has no "weight_map" object'):
    load_into(ANY_TREE, directory)


def test_config_json_problems_name_the_file(sharded, tmp_path):
  directory = _copy(sharded, tmp_path)
  config_file = directory / 'config.json'
  config = json.loads(config_file.read_text())
  config_file.write_text('{\n  "model_type": "qwen2",\n  "hidden_size": 64,,\n}')
  with pytest.raises(WeightsFileError, match=rf'{config_file} is not valid JSON: Expecting property name enclosed '
                                             r'in double quotes at line 3, column 21\.'):
    from_pretrained(directory)
  for text, problem in (('', 'is empty; it should hold a JSON object'),
                        ('[1]', 'holds a JSON list; it should hold a JSON object')):
    config_file.write_text(text)
    with pytest.raises(WeightsFileError, match=f'{config_file} {problem}'):
      load_into(ANY_TREE, directory)
  config_file.write_text(json.dumps({k: v for k, v in config.items() if k != 'model_type'}))
  with pytest.raises(ValueError, match=rf'{config_file} has no model_type \(nor a diffusers _class_name\); '
                                       r'supported model types: \['):
    from_pretrained(directory)
  config_file.write_text(json.dumps({k: v for k, v in config.items() if k != 'hidden_size'}))
  with pytest.raises(WeightsFileError, match=rf"{config_file}: Qwen2 config.json lacks \['hidden_size'\]"):
    from_pretrained(directory)


def test_a_zero_length_single_file_is_named(tmp_path):
  save_qwen2(tmp_path)
  weights = tmp_path / 'model.safetensors'
  weights.write_bytes(b'')
  with pytest.raises(WeightsFileError, match=rf'{weights} is empty \(0 bytes\)'):
    from_pretrained(tmp_path)
  with pytest.raises(WeightsFileError, match=rf'{weights} is empty \(0 bytes\)'):
    load_into(ANY_TREE, weights, layout='qwen2')


@pytest.fixture(scope='module')
def params_checkpoint(tmp_path_factory):
  """An mmjax params checkpoint (params/ as `launch.py --mode convert` writes it) of a two-array tree."""
  directory = tmp_path_factory.mktemp('orbax')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / 'params', {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}})
  return directory


METADATA_DAMAGE = {
    'missing': (lambda p: (p / '_METADATA').unlink(), '{params} has no _METADATA: the save that wrote it did not '
                                                      'finish'),
    'garbage': (lambda p: (p / '_METADATA').write_text('garbage{'), '{params}/_METADATA is not valid JSON'),
    'empty': (lambda p: (p / '_METADATA').write_text(''), '{params}/_METADATA is empty'),
    'no_tree': (lambda p: (p / '_METADATA').write_text('{}'), '{params}/_METADATA holds no orbax tree_metadata'),
    'arrays_deleted': (lambda p: shutil.rmtree(p / 'd'), '{params}: orbax cannot read its array metadata'),
}


@pytest.mark.parametrize('damage', METADATA_DAMAGE)
def test_a_damaged_params_checkpoint_is_named(params_checkpoint, tmp_path, damage):
  shutil.copytree(params_checkpoint, tmp_path / 'ckpt')
  abstract = {'dense': {'kernel': jax.ShapeDtypeStruct((3, 4), jnp.float32),
                        'bias': jax.ShapeDtypeStruct((4,), jnp.float32)}}
  np.testing.assert_array_equal(load_into(abstract, tmp_path / 'ckpt')['dense']['kernel'], np.ones((3, 4)))
  breaks, problem = METADATA_DAMAGE[damage]
  breaks(tmp_path / 'ckpt' / 'params')
  with pytest.raises(WeightsFileError, match=problem.format(params=tmp_path / 'ckpt' / 'params')):
    load_into(abstract, tmp_path / 'ckpt')


def _convert_fails(*flags):
  proc = subprocess.run([sys.executable, 'launch.py', '--mode=convert', *flags], cwd=REPO, env=launch_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


def test_launch_convert_prints_the_named_file_in_one_line(sharded, tmp_path):
  directory = _copy(sharded, tmp_path)
  _truncate(directory / SHARDS[0], 100)
  line = _convert_fails(f'--convert_from={directory}', f'--convert_to={tmp_path / "orbax"}')
  assert f'{directory}/{SHARDS[0]} (one of the 3 shards of {INDEX}) is truncated' in line, line
  (tmp_path / 'ckpt' / 'params').mkdir(parents=True)
  (tmp_path / 'ckpt' / 'params' / '_METADATA').write_text('garbage{')
  shutil.copy(directory / 'config.json', tmp_path / 'ckpt')
  line = _convert_fails(f'--convert_from={tmp_path / "ckpt"}', f'--convert_to={tmp_path / "hf_out"}')
  assert f'{tmp_path / "ckpt" / "params" / "_METADATA"} is not valid JSON' in line, line
  assert not (tmp_path / 'orbax').exists() and not (tmp_path / 'hf_out').exists()
