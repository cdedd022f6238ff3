"""LlamaForCausalLM vs transformers (Llama-2-like, Llama-3.1 llama3 RoPE scaling, linear scaling, GQA, tied),
the HF round trip, config parsing and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mmjax.models import LlamaConfig, LlamaForCausalLM, init_cache
from mmjax.nn.rope import RopeScaling
from mmjax.weights import from_pretrained, save_pretrained
from tests.hf_models import LINEAR_ROPE, LLAMA3_ROPE, qwen2_logits, save_llama
from tests.numerics import assert_close_programs, assert_close_torch

VARIANTS = {
    'llama2': {},
    'llama3.1_gqa': dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
    'linear_mqa': dict(num_key_value_heads=1, rope_parameters=LINEAR_ROPE),
    'llama3.2_tied': dict(tied=True, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
}
# Positions up to 40 reach past wavelengths the scalings change (see tests.hf_models.LLAMA3_ROPE).
IDS = np.random.default_rng(0).integers(0, 128, (2, 40))


@pytest.fixture(scope='module', params=list(VARIANTS))
def llama(request, tmp_path_factory):
  """(variant, HF model, directory, mmjax module, params, jitted run(params, ids, mask) -> logits)."""
  directory = tmp_path_factory.mktemp(request.param)
  reference = save_llama(directory, **VARIANTS[request.param])
  module, params, config = from_pretrained(directory)
  assert isinstance(module, LlamaForCausalLM) and isinstance(config, LlamaConfig)
  run = jax.jit(lambda p, ids, mask: module.apply({'params': p}, ids, attention_mask=mask).logits)
  return request.param, reference, directory, module, params, run


def test_config_reads_the_variant(llama):
  name, reference, _, module, params, _ = llama
  config = module.config
  assert config.num_key_value_heads == reference.config.num_key_value_heads
  assert config.tie_word_embeddings == ('lm_head' not in params) == ('tied' in name)
  assert 'bias' not in params['layers_0']['self_attn']['q_proj']
  expected = {'llama2': None, 'llama3.1_gqa': 'llama3', 'linear_mqa': 'linear', 'llama3.2_tied': 'llama3'}[name]
  assert (config.rope_scaling and config.rope_scaling.rope_type) == expected


def test_logits_match_transformers(llama):
  _, reference, _, _, params, run = llama
  assert_close_torch(run(params, IDS, None), qwen2_logits(reference, IDS))


def test_left_padded_logits_match_transformers(llama):
  _, reference, _, _, params, run = llama
  ids = IDS[:, :12]
  mask = (np.arange(12)[None, :] >= np.array([[0], [5]])).astype(np.int64)
  real = mask.astype(bool)
  assert_close_torch(np.asarray(run(params, ids, mask))[real], qwen2_logits(reference, ids, mask)[real])


def test_another_rope_changes_the_logits(llama):
  """The variant with its scaling removed (or, unscaled, with a linear one) differs from HF: the parity above
  exercises the scaling."""
  _, reference, _, module, params, _ = llama
  other = None if module.config.rope_scaling else RopeScaling('linear', 4.0)
  changed = module.clone(config=LlamaConfig(**{**module.config.__dict__, 'rope_scaling': other}))
  logits = changed.apply({'params': params}, IDS).logits
  assert np.abs(np.asarray(logits) - qwen2_logits(reference, IDS)).max() > 1e-2


def test_round_trip_through_transformers_is_bitwise(llama, tmp_path):
  _, reference, _, module, params, _ = llama
  save_pretrained(tmp_path, module, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation='eager').eval()
  assert isinstance(reloaded, transformers.LlamaForCausalLM)
  assert reloaded.config.rope_parameters == reference.config.rope_parameters
  ours, theirs = reloaded.state_dict(), reference.state_dict()
  assert ours.keys() == theirs.keys()
  for key in theirs:
    assert torch.equal(ours[key], theirs[key]), key
  _, params_again, config_again = from_pretrained(tmp_path)
  assert config_again == module.config
  jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_kv_cache_decode_equals_full_forward(llama):
  """Prefill 30 tokens, then decode 10 one by one: the logits of the full forward at every position."""
  _, _, _, module, params, run = llama
  full = run(params, IDS, None)
  step = jax.jit(lambda p, ids, cache: module.apply({'params': p}, ids, cache=cache))
  out = step(params, IDS[:, :30], init_cache(module.config, 2, 40))
  logits = [out.logits]
  for i in range(30, 40):
    out = step(params, IDS[:, i:i + 1], out.cache)
    logits.append(out.logits)
  assert_close_programs(jnp.concatenate(logits, axis=1), full)


def test_config_from_hf_dict():
  base = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4)
  v4 = LlamaConfig.from_hf_dict({**base, 'rope_theta': 5e5, 'rope_scaling': {
      'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
      'original_max_position_embeddings': 8192}})  # transformers 4.x, as the Llama-3.1 hub configs
  assert v4.rope_theta == 5e5 and v4.rope_scaling == RopeScaling('llama3', 8.0, 1.0, 4.0, 8192)
  v5 = LlamaConfig.from_hf_dict({**base, 'rope_parameters': {'rope_type': 'linear', 'rope_theta': 1e6, 'factor': 2}})
  assert v5.rope_scaling == RopeScaling('linear', 2.0) and v5.num_key_value_heads == 4 and not v5.attention_bias
  assert LlamaConfig.from_hf_dict(v4.to_hf_dict()) == v4 and LlamaConfig.from_hf_dict(v5.to_hf_dict()) == v5
  with pytest.raises(ValueError, match="lacks \\['hidden_size'\\]"):
    LlamaConfig.from_hf_dict({k: v for k, v in base.items() if k != 'hidden_size'})
  with pytest.raises(ValueError, match="rope type 'yarn'.*attention_bias=true; mlp_bias=true"):
    LlamaConfig.from_hf_dict({**base, 'rope_scaling': {'type': 'yarn', 'factor': 2.0}, 'attention_bias': True,
                              'mlp_bias': True})
