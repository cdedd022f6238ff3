"""MultiHeadAttention (GQA + RoPE) vs HF Qwen2Attention with copied weights; parameter axes; errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding

from mmjax.nn import MultiHeadAttention
from tests.numerics import assert_close_torch

P = jax.sharding.PartitionSpec


def hf_projection_params(linear: torch.nn.Linear, heads: int, head_dim: int, out: bool = False) -> dict:
  """HF Linear -> DenseGeneral params: [H*D, E] -> [E, H, D] for q/k/v, [E, H*D] -> [H, D, E] for o."""
  w = linear.weight.detach().numpy().T
  params = {'kernel': jnp.asarray(w.reshape(heads, head_dim, -1) if out else w.reshape(-1, heads, head_dim))}
  if linear.bias is not None:
    params['bias'] = jnp.asarray(linear.bias.detach().numpy().reshape(-1 if out else (heads, head_dim)))
  return params


def test_matches_qwen2_attention_with_rope_and_gqa():
  torch.manual_seed(0)
  heads, kv_heads, head_dim, b, s = 4, 2, 8, 2, 6
  config = Qwen2Config(hidden_size=32, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       rope_parameters={'rope_type': 'default', 'rope_theta': 1000.0}, attn_implementation='eager')
  ref = Qwen2Attention(config, layer_idx=0).eval()
  x = np.random.default_rng(0).standard_normal((b, s, 32)).astype(np.float32)
  positions = np.array([np.arange(s) + 11, np.arange(s)], np.int64)
  cos_sin = Qwen2RotaryEmbedding(config)(torch.from_numpy(x), torch.from_numpy(positions))
  causal = torch.triu(torch.full((s, s), float('-inf')), diagonal=1)[None, None].expand(b, 1, s, s)
  expected = ref(torch.from_numpy(x), cos_sin, causal)[0].detach().numpy()

  params = {name: hf_projection_params(getattr(ref, name), n, head_dim, out=name == 'o_proj')
            for name, n in (('q_proj', heads), ('k_proj', kv_heads), ('v_proj', kv_heads), ('o_proj', heads))}
  layer = MultiHeadAttention(heads, head_dim, num_kv_heads=kv_heads, out_bias=False, rope_theta=1000.0)
  out = layer.apply({'params': params}, jnp.asarray(x), causal=True, positions=jnp.asarray(positions))
  assert_close_torch(out, expected)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert jax.tree.map(np.shape, nn.unbox(variables)['params']) == jax.tree.map(np.shape, params)


def test_parameter_axes():
  layer = MultiHeadAttention(4, 8, num_kv_heads=2)
  spec = nn.get_partition_spec(jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 3, 16))))['params']
  assert spec['q_proj'] == {'kernel': P('embed', 'heads', 'head_dim'), 'bias': P('heads', 'head_dim')}
  assert spec['k_proj'] == spec['v_proj'] == {'kernel': P('embed', 'kv_heads', 'head_dim'),
                                               'bias': P('kv_heads', 'head_dim')}
  assert spec['o_proj'] == {'kernel': P('heads', 'head_dim', 'embed'), 'bias': P('embed')}


def test_cross_attention_shapes_and_errors():
  layer = MultiHeadAttention(2, out_features=5)
  x, kv = jnp.ones((2, 3, 8)), jnp.ones((2, 7, 8))
  variables = jax.eval_shape(layer.init, jax.random.key(0), x, kv)
  assert jax.eval_shape(layer.apply, variables, x, kv).shape == (2, 3, 5)
  bf16 = MultiHeadAttention(2, out_features=5, dtype=jnp.bfloat16)
  assert jax.eval_shape(bf16.apply, variables, x, kv, mask=jnp.ones((7,), bool)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='self-attention'):
    jax.eval_shape(functools.partial(layer.apply, positions=jnp.zeros((2, 3), jnp.int32)), variables, x, kv)
  with pytest.raises(ValueError, match='num_heads=3'):
    jax.eval_shape(MultiHeadAttention(3).init, jax.random.key(0), x)
