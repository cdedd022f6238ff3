"""from_pretrained onto a (fsdp=4, tensor=2) mesh of the 8 CPU devices: placement and 1-device parity."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from mmjax.models import init_cache
from mmjax.weights import from_pretrained
from tests.models.hf_reference import save_qwen2, save_siglip

RULES = {'batch': None, 'length': None, 'embed': 'fsdp', 'mlp': 'tensor', 'heads': 'tensor', 'kv_heads': 'tensor',
         'head_dim': None, 'vocab': 'tensor', 'conv_h': None, 'conv_w': None, 'conv_in': None}


@pytest.fixture(scope='module')
def mesh():
  return jax.make_mesh((4, 2), ('fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 2)


def test_qwen2_params_are_sharded_and_logits_match_one_device(tmp_path, mesh):
  save_qwen2(tmp_path, tied=False)
  module, params, _ = from_pretrained(tmp_path)
  _, sharded, _ = from_pretrained(tmp_path, mesh=mesh, rules=RULES)
  layer = sharded['layers_0']
  assert layer['self_attn']['q_proj']['kernel'].sharding.spec == P('fsdp', 'tensor', None)
  assert layer['self_attn']['k_proj']['bias'].sharding.spec == P('tensor', None)
  assert layer['self_attn']['o_proj']['kernel'].sharding.spec == P('tensor', None, 'fsdp')
  assert layer['mlp']['down_proj']['kernel'].sharding.spec == P('tensor', 'fsdp')
  assert sharded['embed_tokens']['embedding'].sharding.spec == P('tensor', 'fsdp')
  assert sharded['lm_head']['kernel'].sharding.spec == P('fsdp', 'tensor')
  kernel = layer['mlp']['gate_proj']['kernel']
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 48)}  # [64, 96] over 4 x 2 devices
  jax.tree.map(np.testing.assert_array_equal, sharded, params)

  ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 6)))
  mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1] * 6])
  apply = jax.jit(lambda p, ids, mask, cache: module.apply({'params': p}, ids, attention_mask=mask, cache=cache))
  expected = apply(params, ids, mask, None).logits
  expected_cached = apply(params, ids, mask, init_cache(module.config, 2, 8))
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(RULES.items())):
    logits = apply(sharded, ids, mask, None).logits
    cached = apply(sharded, ids, mask, init_cache(module.config, 2, 8))
  np.testing.assert_allclose(logits, expected, atol=1e-5)
  np.testing.assert_allclose(cached.logits, expected_cached.logits, atol=1e-5)
  assert cached.cache.keys[0].sharding.spec[2] == 'tensor'  # the cache follows the kv_heads rule


def test_siglip_params_are_sharded(tmp_path, mesh):
  save_siglip(tmp_path)
  _, params, _ = from_pretrained(tmp_path, mesh=mesh, rules=RULES)
  assert params['patch_embedding']['kernel'].sharding.spec == P(None, None, None, 'fsdp')
  assert params['layers_0']['mlp']['fc1']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert params['head']['attention']['in_proj']['kernel'].sharding.spec == P('fsdp', None, 'tensor', None)
