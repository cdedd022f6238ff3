"""from_pretrained / save_pretrained: round trips through transformers, sharded and bf16 checkpoints, bad input."""
import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.weights import from_pretrained, registry, save_pretrained
from tests.hf_models import qwen2_logits, save_qwen2, save_siglip
from tests.numerics import assert_close_programs

IDS = np.random.default_rng(0).integers(0, 128, (2, 7))


@pytest.fixture(scope='module')
def qwen2_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('qwen2_src')
  return directory, save_qwen2(directory, tied=False)


@pytest.mark.parametrize('tied', [False, True], ids=['untied', 'tied'])
def test_qwen2_round_trip_through_transformers(tmp_path, tied):
  reference = save_qwen2(tmp_path / 'src', tied=tied)
  module, params, _ = from_pretrained(tmp_path / 'src')
  save_pretrained(tmp_path / 'out', module, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out', attn_implementation='eager')
  assert isinstance(reloaded, transformers.Qwen2ForCausalLM)
  assert reloaded.config.tie_word_embeddings == tied and reloaded.config.rope_parameters['rope_theta'] == 1e6
  assert_close_programs(qwen2_logits(reloaded.eval(), IDS), qwen2_logits(reference, IDS))


def test_siglip_round_trip_through_transformers(tmp_path):
  reference = save_siglip(tmp_path / 'src')
  module, params, _ = from_pretrained(tmp_path / 'src')
  save_pretrained(tmp_path / 'out', module.config, {'params': params})  # a config and a {'params': ...} wrapper
  reloaded = transformers.SiglipVisionModel.from_pretrained(tmp_path / 'out', attn_implementation='eager').eval()
  pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
  with torch.no_grad():
    expected, out = reference(pixels), reloaded(pixels)
  assert_close_programs(out.pooler_output.numpy(), expected.pooler_output.numpy())
  assert_close_programs(out.last_hidden_state.numpy(), expected.last_hidden_state.numpy())
  # The export carries the vision_model. prefix that both transformers 4.x and 5.x read.
  assert all(k.startswith('vision_model.') for k in load_file(tmp_path / 'out' / 'model.safetensors'))
  _, again, _ = from_pretrained(tmp_path / 'out')
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_sharded_checkpoint_loads_in_both_directions(tmp_path, qwen2_dir):
  source, reference = qwen2_dir
  module, params, _ = from_pretrained(source)
  save_pretrained(tmp_path, module, params, max_shard_size=20_000)
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  shards = sorted(set(index['weight_map'].values()))
  assert len(shards) > 2 and not (tmp_path / 'model.safetensors').exists()
  assert sorted(p.name for p in tmp_path.glob('model-*.safetensors')) == shards
  _, again, _ = from_pretrained(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation='eager').eval()
  assert_close_programs(qwen2_logits(reloaded, IDS), qwen2_logits(reference, IDS))
  save_pretrained(tmp_path, module, params)  # saving again unsharded removes the stale shards and index
  assert sorted(p.name for p in tmp_path.glob('model*')) == ['model.safetensors']


def test_bf16_checkpoint(tmp_path):
  reference = save_qwen2(tmp_path, tied=True, dtype=torch.bfloat16)
  assert load_file(tmp_path / 'model.safetensors')['model.norm.weight'].dtype == ml_dtypes.bfloat16
  embedding = reference.model.embed_tokens.weight.detach().float().numpy()
  module, params, _ = from_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert module.dtype == module.param_dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  np.testing.assert_array_equal(params['embed_tokens']['embedding'].astype(jnp.float32), embedding)
  _, params32, _ = from_pretrained(tmp_path)
  assert params32['embed_tokens']['embedding'].dtype == jnp.float32
  np.testing.assert_array_equal(params32['embed_tokens']['embedding'], embedding)
  q_kernel = params32['layers_0']['self_attn']['q_proj']['kernel']
  np.testing.assert_array_equal(q_kernel, reference.model.layers[0].self_attn.q_proj.weight.float().detach().numpy()
                                .T.reshape(q_kernel.shape))


def _rewrite(directory, edit):
  """Applies edit(dict of tensors) to directory/model.safetensors in place."""
  tensors = load_file(directory / 'model.safetensors')
  edit(tensors)
  save_file(tensors, directory / 'model.safetensors', metadata={'format': 'pt'})


def test_missing_and_extra_tensors_are_named(tmp_path):
  save_qwen2(tmp_path, tied=True)
  _rewrite(tmp_path, lambda t: t.pop('model.layers.1.mlp.up_proj.weight'))
  with pytest.raises(ValueError, match=r'Missing tensors: model\.layers\.1\.mlp\.up_proj\.weight\. '
                                       r'Unexpected tensors: none'):
    from_pretrained(tmp_path)
  _rewrite(tmp_path, lambda t: t.update({'model.layers.1.mlp.up_proj.weight': np.zeros((96, 64), np.float32),
                                         'model.layers.2.mlp.up_proj.weight': np.zeros((96, 64), np.float32),
                                         'model.rotary_emb.inv_freq': np.zeros(8, np.float32)}))
  with pytest.raises(ValueError, match=r'Missing tensors: none\. Unexpected tensors: '
                                       r'model\.layers\.2\.mlp\.up_proj\.weight\.$'):
    from_pretrained(tmp_path)

  def misshape(tensors):
    del tensors['model.layers.2.mlp.up_proj.weight']
    tensors['model.norm.weight'] = np.ones(3, np.float32)

  _rewrite(tmp_path, misshape)
  with pytest.raises(ValueError, match=r'model\.norm\.weight has shape \(3,\); the config needs \(64,\)'):
    from_pretrained(tmp_path)


def test_unsupported_model_type_and_pickle_only(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'mistral'}))
  with pytest.raises(ValueError, match=r"unsupported model_type 'mistral'; supported: "
                                       + re.escape(str(sorted(registry.MODEL_SPECS)))):
    from_pretrained(tmp_path)
  save_qwen2(tmp_path, tied=True)
  (tmp_path / 'model.safetensors').unlink()
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not unpickled')
  with pytest.raises(FileNotFoundError, match=r"only pickle checkpoints \['pytorch_model.bin'\]; they are refused"):
    from_pretrained(tmp_path)
  with pytest.raises(FileNotFoundError, match='has no config.json'):
    from_pretrained(tmp_path / 'absent')
  with pytest.raises(ValueError, match='pass mesh as well'):
    from_pretrained(tmp_path, rules={'embed': 'fsdp'})


def test_save_rejects_mismatched_params(tmp_path, qwen2_dir):
  module, params, _ = from_pretrained(qwen2_dir[0])
  params = {**params, 'extra': {'kernel': jnp.zeros(3)}}
  del params['norm']
  with pytest.raises(ValueError, match='missing norm/scale; unexpected extra/kernel'):
    save_pretrained(tmp_path, module, params)
