"""ViT encoder vs HF ViTLayer/ViTModel with copied weights; remat, dropout and a sharded run on 8 devices."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AxisType
from transformers import ViTConfig, ViTModel

from mmjax.nn import Encoder, EncoderBlock
from tests.numerics import assert_close_programs, assert_close_torch, assert_same_program

P = jax.sharding.PartitionSpec
WIDTH, HEADS, MLP = 32, 4, 64
CONFIG = ViTConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=MLP,
                   hidden_act='gelu', layer_norm_eps=1e-12, qkv_bias=True, attn_implementation='eager')


def _np(t: torch.Tensor) -> jax.Array:
  return jnp.asarray(t.detach().numpy())


def vit_layer_params(layer) -> dict:
  """HF ViTLayer state -> EncoderBlock params."""
  head_dim = WIDTH // HEADS
  attn = layer.attention
  qkv = {name: {'kernel': _np(getattr(attn, name).weight.T).reshape(WIDTH, HEADS, head_dim),
                'bias': _np(getattr(attn, name).bias).reshape(HEADS, head_dim)}
         for name in ('q_proj', 'k_proj', 'v_proj')}
  norm = lambda ln: {'scale': _np(ln.weight), 'bias': _np(ln.bias)}  # noqa: E731
  dense = lambda lin: {'kernel': _np(lin.weight.T), 'bias': _np(lin.bias)}  # noqa: E731
  return {
      'layernorm_before': norm(layer.layernorm_before),
      'attention': {**qkv, 'o_proj': {'kernel': _np(attn.o_proj.weight.T).reshape(HEADS, head_dim, WIDTH),
                                      'bias': _np(attn.o_proj.bias)}},
      'layernorm_after': norm(layer.layernorm_after),
      'mlp': {'fc1': dense(layer.mlp.fc1), 'fc2': dense(layer.mlp.fc2)},
  }


@pytest.fixture(scope='module')
def vit():
  """A random 2-layer HF ViTModel, our params copied from it, and an input [2, 5, WIDTH]."""
  torch.manual_seed(0)
  model = ViTModel(CONFIG, add_pooling_layer=False).eval()
  with torch.no_grad():  # HF init zeroes biases and sets LayerNorm to identity; perturb so every weight matters
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  params = {f'layers_{i}': vit_layer_params(layer) for i, layer in enumerate(model.layers)}
  params['layernorm'] = {'scale': _np(model.layernorm.weight), 'bias': _np(model.layernorm.bias)}
  x = np.random.default_rng(0).standard_normal((2, 5, WIDTH)).astype(np.float32)
  return model, params, x


def test_encoder_block_matches_vit_layer(vit):
  model, params, x = vit
  expected = model.layers[0](torch.from_numpy(x)).detach().numpy()
  block = EncoderBlock(HEADS, MLP, layer_norm_eps=1e-12)
  assert_close_torch(block.apply({'params': params['layers_0']}, jnp.asarray(x)), expected)
  variables = jax.eval_shape(block.init, jax.random.key(0), x)
  assert jax.tree.map(np.shape, nn.unbox(variables)['params']) == jax.tree.map(np.shape, params['layers_0'])
  spec = nn.get_partition_spec(variables)['params']
  assert spec['layernorm_before'] == {'scale': P('embed'), 'bias': P('embed')}
  assert spec['mlp']['fc1']['kernel'] == P('embed', 'mlp')
  assert spec['attention']['k_proj']['kernel'] == P('embed', 'kv_heads', 'head_dim')


def test_encoder_matches_vit_stack_with_and_without_remat(vit):
  model, params, x = vit
  h = torch.from_numpy(x)
  for layer in model.layers:
    h = layer(h)
  expected = model.layernorm(h).detach().numpy()
  encoders = [Encoder(2, HEADS, MLP, layer_norm_eps=1e-12, remat=remat) for remat in (False, True)]

  def loss_and_grads(encoder):
    def loss(p):
      out = encoder.apply({'params': p}, x)
      return jnp.sum(out ** 2), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  ((_, out), grads), ((_, out_remat), grads_remat) = map(loss_and_grads, encoders)
  assert_close_torch(out, expected)
  assert_close_torch(out_remat, expected)
  assert_close_programs(grads_remat, grads)
  # The rematerialisation primitive prints as remat2[...] (older jax) or checkpoint[...].
  remat_eqns = [re.findall(r'= (?:remat\w*|checkpoint)\[', str(jax.make_jaxpr(encoder.apply)({'params': params}, x)))
                for encoder in encoders]
  assert not remat_eqns[0] and len(remat_eqns[1]) == 2
  no_norm = jax.eval_shape(Encoder(1, HEADS, MLP, final_norm=False).init, jax.random.key(0), x)
  assert set(no_norm['params']) == {'layers_0'}


def test_dropout_uses_dropout_stream(vit):
  _, params, x = vit
  encoder = Encoder(2, HEADS, MLP, dropout_rate=0.5, remat=True)
  apply = jax.jit(encoder.apply, static_argnums=3)
  clean = apply({'params': params}, x, None, True)
  run = lambda seed: apply({'params': params}, x, None, False, rngs={'dropout': jax.random.key(seed)})  # noqa: E731
  assert_same_program(run(1), run(1))
  assert np.abs(np.asarray(run(1) - clean)).max() > 1e-2
  assert np.abs(np.asarray(run(1) - run(2))).max() > 1e-2


def test_sharded_encoder_matches_single_device(vit):
  _, params, x = vit
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 3)
  rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
           ('kv_heads', 'tensor'), ('length', None), ('head_dim', None))
  encoder = Encoder(2, HEADS, MLP)
  x = np.concatenate([x, x[::-1]])  # batch 4 splits over data x fsdp
  mask = jnp.arange(5)[None, None, None, :] < jnp.array([5, 4, 3, 2])[:, None, None, None]
  apply = jax.jit(encoder.apply)
  expected = apply({'params': params}, x, mask)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(jax.eval_shape(encoder.init, jax.random.key(0), x)),
                                          mesh, rules)
  assert shardings['params']['layers_0']['mlp']['fc1']['kernel'].spec == P('fsdp', 'tensor')
  sharded = jax.device_put({'params': params}, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(encoder.apply)(sharded, x, mask)
  assert out.sharding.spec[0] == ('data', 'fsdp')  # only the activation constraints can shard the batch
  assert_close_programs(out, expected)
