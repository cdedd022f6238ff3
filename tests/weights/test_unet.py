"""diffusers UNet2DConditionModel folders: the round trip in both projection variants (import, export, reload in
diffusers), missing tensors and unsupported configs, named."""
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
from tests.models.test_unet import LINEAR_PROJECTION, UNET, save_unet, torch_forward, unet_inputs

WEIGHTS = 'diffusion_pytorch_model.safetensors'


@pytest.mark.parametrize('overrides', [{}, LINEAR_PROJECTION], ids=['conv-projection', 'linear-projection'])
def test_round_trip_reloads_in_diffusers_with_identical_outputs(tmp_path, overrides):
  reference = save_unet(tmp_path / 'source', **overrides)
  module, params, _ = from_pretrained(tmp_path / 'source')
  save_pretrained(tmp_path / 'exported', module, params)
  written = json.loads((tmp_path / 'exported' / 'config.json').read_text())
  assert written['_class_name'] == 'UNet2DConditionModel'
  assert written['use_linear_projection'] == bool(overrides)
  assert (safetensors.numpy.load_file(tmp_path / 'exported' / WEIGHTS).keys()
          == safetensors.numpy.load_file(tmp_path / 'source' / WEIGHTS).keys())
  reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / 'exported').eval()
  assert _public(reloaded.config) == _public(reference.config)
  for (name, before), after in zip(reference.state_dict().items(), reloaded.state_dict().values(), strict=True):
    assert torch.equal(before, after), name
  sample, timestep, context = unet_inputs()
  np.testing.assert_array_equal(torch_forward(reloaded, sample, timestep, torch.from_numpy(context)),
                                torch_forward(reference, sample, timestep, torch.from_numpy(context)))
  _, again, _ = from_pretrained(tmp_path / 'exported')
  for path, value in flatten_dict(params).items():
    np.testing.assert_array_equal(np.asarray(jax.device_get(flatten_dict(again)[path])), np.asarray(value))


def _public(config) -> dict:
  """A diffusers config without its bookkeeping keys, tuples as lists (as config.json stores them)."""
  return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith('_')}))


def test_a_missing_tensor_is_named_with_its_file(tmp_path):
  save_unet(tmp_path)
  weights = tmp_path / WEIGHTS
  tensors = safetensors.numpy.load_file(weights)
  missing = 'up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight'
  del tensors[missing]
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(ValueError, match=rf'{re.escape(str(weights))}: the weights do not match config.json\. '
                                       rf'Missing tensors: .*{re.escape(missing)}'):
    from_pretrained(tmp_path)


def test_an_unsupported_unet_config_is_named_with_its_file(tmp_path):
  """An SDXL UNet (added text/time embeddings) is refused before any weight is read."""
  config = {'_class_name': 'UNet2DConditionModel', **UNET, 'addition_embed_type': 'text_time',
            'addition_time_embed_dim': 256}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'config.json'))}: UNet2DConditionModel "
                                       r"addition_embed_type='text_time' is not supported"):
    from_pretrained(tmp_path)
