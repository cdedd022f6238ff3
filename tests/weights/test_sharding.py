"""from_pretrained onto meshes of the 8 CPU devices: placement as the trainer places it and 1-device parity."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from mmjax.models import init_cache
from mmjax.train.sharding import DEFAULT_RULES, logical_shardings, rules_from_config
from mmjax.weights import from_pretrained
from tests.hf_models import save_qwen2, save_siglip
from tests.numerics import assert_close_programs

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
  assert_close_programs(logits, expected)
  assert_close_programs(cached.logits, expected_cached.logits)
  assert cached.cache.keys[0].sharding.spec[2] == 'tensor'  # the cache follows the kv_heads rule


def test_siglip_params_are_sharded(tmp_path, mesh):
  save_siglip(tmp_path)
  _, params, _ = from_pretrained(tmp_path, mesh=mesh, rules=RULES)
  assert params['patch_embedding']['kernel'].sharding.spec == P(None, None, None, 'fsdp')
  assert params['layers_0']['mlp']['fc1']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert params['head']['attention']['in_proj']['kernel'].sharding.spec == P('fsdp', None, 'tensor', None)


def test_a_mesh_axis_that_does_not_divide_is_replicated_as_in_the_trainer(tmp_path):
  """tensor=4 does not divide Qwen2's 2 KV heads: those dimensions are replicated, exactly as the trainer's
  logical_shardings place them (with the trainer's default rules when none are given)."""
  save_qwen2(tmp_path, tied=False)
  mesh = jax.make_mesh((2, 4), ('fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 2)
  module, params, config = from_pretrained(tmp_path)
  _, sharded, _ = from_pretrained(tmp_path, mesh=mesh)
  attention = sharded['layers_0']['self_attn']
  assert attention['k_proj']['kernel'].sharding.spec == P('fsdp', None, None)
  assert attention['q_proj']['kernel'].sharding.spec == P('fsdp', 'tensor', None)
  boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  trainer = logical_shardings(boxed, mesh, rules_from_config(DEFAULT_RULES, mesh))
  assert jax.tree.map(lambda x: x.sharding, sharded) == trainer
  jax.tree.map(np.testing.assert_array_equal, sharded, params)
