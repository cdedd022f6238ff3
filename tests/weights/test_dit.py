"""diffusers DiT folders: the round trip (import, export, reload in diffusers), missing tensors and non-DiT configs."""
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
from tests.models.test_dit import dit_inputs, save_dit, torch_forward

WEIGHTS = 'diffusion_pytorch_model.safetensors'


def test_round_trip_reloads_in_diffusers_with_identical_outputs(tmp_path):
  reference = save_dit(tmp_path / 'source', patch_size=2, out_channels=8)
  module, params, config = from_pretrained(tmp_path / 'source')
  save_pretrained(tmp_path / 'exported', module, params)
  written = json.loads((tmp_path / 'exported' / 'config.json').read_text())
  assert written['_class_name'] == 'DiTTransformer2DModel' and written['out_channels'] == 8
  assert (safetensors.numpy.load_file(tmp_path / 'exported' / WEIGHTS).keys()
          == safetensors.numpy.load_file(tmp_path / 'source' / WEIGHTS).keys())
  reloaded = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / 'exported').eval()
  for (name, before), after in zip(reference.state_dict().items(), reloaded.state_dict().values(), strict=True):
    assert torch.equal(before, after), name
  inputs = dit_inputs(config)
  np.testing.assert_array_equal(torch_forward(reloaded, *inputs), torch_forward(reference, *inputs))
  _, again, _ = from_pretrained(tmp_path / 'exported')
  for path, value in flatten_dict(params).items():
    np.testing.assert_array_equal(np.asarray(jax.device_get(flatten_dict(again)[path])), np.asarray(value))


def test_a_missing_tensor_is_named_with_its_file(tmp_path):
  save_dit(tmp_path, patch_size=1)
  weights = tmp_path / WEIGHTS
  tensors = safetensors.numpy.load_file(weights)
  missing = 'transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight'
  del tensors[missing]
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(ValueError, match=rf'{re.escape(str(weights))}: the weights do not match config.json\. '
                                       rf'Missing tensors: .*{re.escape(missing)}'):
    from_pretrained(tmp_path)


def test_a_transformer_2d_model_that_is_not_a_dit_is_refused(tmp_path):
  config = {'_class_name': 'Transformer2DModel', 'in_channels': 4, 'num_layers': 1, 'norm_type': 'layer_norm'}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=rf'{re.escape(str(tmp_path / "config.json"))}: this Transformer2DModel is not '
                                       'a DiT'):
    from_pretrained(tmp_path)
