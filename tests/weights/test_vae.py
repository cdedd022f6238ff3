"""diffusers AutoencoderKL folders: the round trip (import, export, reload in diffusers), the pre-0.14 attention
names, missing and duplicated tensors."""
import json
import re

import diffusers
import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax.traverse_util import flatten_dict

from mmjax.weights import from_pretrained, save_pretrained
from tests.models.test_vae import save_vae, vae_inputs

WEIGHTS = 'diffusion_pytorch_model.safetensors'
# Current -> pre-0.14 names of the mid-block attention tensors.
OLD_NAMES = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}


def _host(params) -> dict:
  return {path: np.asarray(jax.device_get(value)) for path, value in flatten_dict(params).items()}


def _torch_forward(model: diffusers.AutoencoderKL, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(images)).sample.numpy()


def test_round_trip_reloads_in_diffusers_with_identical_outputs(tmp_path):
  reference = save_vae(tmp_path / 'source', scaling_factor=0.13025, force_upcast=False)
  module, params, config = from_pretrained(tmp_path / 'source')
  assert config.scaling_factor == 0.13025 and not config.force_upcast
  save_pretrained(tmp_path / 'exported', module, params)
  written = json.loads((tmp_path / 'exported' / 'config.json').read_text())
  assert written['_class_name'] == 'AutoencoderKL' and written['scaling_factor'] == 0.13025
  assert (safetensors.numpy.load_file(tmp_path / 'exported' / WEIGHTS).keys()
          == safetensors.numpy.load_file(tmp_path / 'source' / WEIGHTS).keys())
  reloaded = diffusers.AutoencoderKL.from_pretrained(tmp_path / 'exported').eval()
  assert reloaded.config.scaling_factor == 0.13025 and list(reloaded.config.block_out_channels) == [8, 16]
  for (name, before), after in zip(reference.state_dict().items(), reloaded.state_dict().values(), strict=True):
    assert torch.equal(before, after), name
  images = vae_inputs()[0]
  np.testing.assert_array_equal(_torch_forward(reloaded, images), _torch_forward(reference, images))
  again = _host(from_pretrained(tmp_path / 'exported')[1])
  for path, value in _host(params).items():
    np.testing.assert_array_equal(again[path], value)


def _rename_to_old(tensors: dict) -> dict:
  out = {}
  for name, value in tensors.items():
    for new, old in OLD_NAMES.items():
      name = re.sub(rf'(mid_block\.attentions\.0)\.{re.escape(new)}\.', rf'\1.{old}.', name)
    out[name] = value
  return out


def test_the_pre_0_14_attention_names_are_read(tmp_path):
  save_vae(tmp_path / 'new')
  save_vae(tmp_path / 'old')
  weights = tmp_path / 'old' / WEIGHTS
  tensors = _rename_to_old(safetensors.numpy.load_file(weights))
  assert 'encoder.mid_block.attentions.0.proj_attn.bias' in tensors and 'decoder.mid_block.attentions.0.query.weight' \
      in tensors and not any('to_q' in name for name in tensors)
  safetensors.numpy.save_file(tensors, weights)
  old, new = _host(from_pretrained(tmp_path / 'old')[1]), _host(from_pretrained(tmp_path / 'new')[1])
  assert old.keys() == new.keys()
  for path, value in new.items():
    np.testing.assert_array_equal(old[path], value, err_msg='/'.join(path))
  # Both spellings of one tensor in a folder: refused, naming both.
  tensors['decoder.mid_block.attentions.0.to_q.weight'] = tensors['decoder.mid_block.attentions.0.query.weight']
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(ValueError, match=r"tensors '.*attentions\.0\.(query|to_q)\.weight' and "
                                       r"'.*attentions\.0\.(query|to_q)\.weight' are the same parameter"):
    from_pretrained(tmp_path / 'old')


def test_a_missing_tensor_is_named_with_its_file(tmp_path):
  save_vae(tmp_path)
  weights = tmp_path / WEIGHTS
  tensors = safetensors.numpy.load_file(weights)
  missing = 'decoder.up_blocks.0.upsamplers.0.conv.weight'
  del tensors[missing]
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(ValueError, match=rf'{re.escape(str(weights))}: the weights do not match config.json\. '
                                       rf'Missing tensors: {re.escape(missing)}\.'):
    from_pretrained(tmp_path)


def test_an_unsupported_block_type_is_named_with_the_config_file(tmp_path):
  save_vae(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['up_block_types'] = ['UpDecoderBlock2D', 'AttnUpDecoderBlock2D']
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=rf'{re.escape(str(tmp_path / "config.json"))}: AutoencoderKL up_block_types='):
    from_pretrained(tmp_path)
