"""The decoder family's shared pieces: RoPE scalings against transformers at real checkpoint sizes, the KV-cache
hook of MultiHeadAttention, scanned layers (Qwen2 and Llama) against unscanned ones, and the remat policies."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.ad_checkpoint import print_saved_residuals
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from mmjax.models import LlamaConfig, LlamaForCausalLM
from mmjax.models.decoder import REMAT_POLICIES, stack_layers, unstack_layers
from mmjax.models.kv_cache import init_cache, write_chunk
from mmjax.nn import MultiHeadAttention
from mmjax.nn.multihead_attention import ATTENTION_OUTPUT
from mmjax.nn.rope import RopeScaling, inverse_frequencies
from mmjax.weights import from_pretrained, load_into, save_pretrained
from mmjax.weights.source import Source, fill
from tests.hf_models import LLAMA3_ROPE, qwen2_logits, save_llama, save_qwen2
from tests.numerics import assert_close_programs, assert_close_torch

# The hub configs of Llama-3.1-8B and of a linearly extended Llama-2 (head_dim 128).
HUB_SCALINGS = {
    'llama3': (500000.0, dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)),
    'linear': (10000.0, dict(rope_type='linear', factor=4.0)),
}
P = jax.sharding.PartitionSpec


@pytest.mark.parametrize('name', list(HUB_SCALINGS))
def test_inverse_frequencies_match_transformers(name):
  theta, rope = HUB_SCALINGS[name]
  config = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
                                    rope_parameters={**rope, 'rope_theta': theta})
  expected, attention_factor = ROPE_INIT_FUNCTIONS[name](config, 'cpu')
  assert attention_factor == 1.0
  ours = inverse_frequencies(128, theta=theta, scaling=RopeScaling(**rope))
  assert_close_torch(ours, expected.numpy())
  plain = inverse_frequencies(128, theta=theta)
  assert not np.allclose(ours, plain)
  if name == 'llama3':  # the highest frequencies are kept, the lowest divided by the factor
    assert ours[0] == plain[0] and np.isclose(ours[-1], plain[-1] / 8.0)


def test_scaling_errors():
  with pytest.raises(ValueError, match="unsupported RoPE type 'yarn'"):
    RopeScaling('yarn')
  with pytest.raises(ValueError, match='high_freq_factor > low_freq_factor'):
    RopeScaling('llama3', factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0)


def test_kv_hook_attends_over_the_cache():
  """A chunk written into a cache by the hook and attended by lengths equals attention over the whole sequence."""
  layer = MultiHeadAttention(4, 8, num_kv_heads=2, out_bias=False)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 32)), jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  params = layer.init(jax.random.key(0), x, causal=True, positions=positions)
  full = layer.apply(params, x, causal=True, positions=positions)
  seen = []

  def record(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    seen.append((k, v))
    return k, v

  # The first 4 tokens attend within themselves; the hook sees their keys (after RoPE) and values.
  head = layer.apply(params, x[:, :4], causal=True, positions=positions[:, :4], kv_hook=record)
  assert_close_programs(head, full[:, :4])
  start, prefix = jnp.zeros((2,), jnp.int32), jnp.full((2,), 4)
  buffers = [write_chunk(jnp.zeros((2, 8, 2, 8)), chunk, start) for chunk in seen[0]]
  # The last 2 tokens are written after them and attend to slots [0, 6) causally.
  hook = lambda k, v: (write_chunk(buffers[0], k, prefix), write_chunk(buffers[1], v, prefix))  # noqa: E731
  tail = layer.apply(params, x[:, 4:], causal=True, positions=positions[:, 4:], kv_hook=hook, kv_lengths=prefix + 2)
  assert_close_programs(tail, full[:, 4:])


@pytest.fixture(scope='module', params=['qwen2', 'llama3.1'])
def family_member(request, tmp_path_factory):
  """(HF model, unscanned module, params, scanned module, stacked params) of a random checkpoint."""
  directory = tmp_path_factory.mktemp(request.param)
  if request.param == 'qwen2':
    reference = save_qwen2(directory)
  else:
    reference = save_llama(directory, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE)
  module, params, config = from_pretrained(directory)
  scanned = module.clone(config=dataclasses.replace(config, scan_layers=True))
  return reference, module, params, scanned, stack_layers(params)


def test_scanned_parameters_are_the_stacked_layers(family_member):
  _, module, params, scanned, stacked = family_member
  ids = jnp.zeros((1, 2), jnp.int32)
  boxed = jax.eval_shape(scanned.init, jax.random.key(0), ids)['params']
  assert jax.tree.map(lambda a: a.shape, nn.unbox(boxed)) == jax.tree.map(lambda a: a.shape, stacked)
  specs = nn.get_partition_spec(boxed)
  assert specs['layers']['self_attn']['q_proj']['kernel'] == P('layers', 'embed', 'heads', 'head_dim')
  assert specs['layers']['mlp']['down_proj']['kernel'] == P('layers', 'mlp', 'embed')
  assert 'scan' in str(jax.make_jaxpr(lambda p: scanned.apply({'params': p}, ids).logits)(stacked))
  jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), params)


def test_scanned_equals_unscanned(family_member):
  """Logits (with left padding) and gradients of the scanned model equal the unscanned model's and HF's."""
  reference, module, params, scanned, stacked = family_member
  ids = np.random.default_rng(0).integers(0, 128, (2, 9))
  mask = (np.arange(9)[None, :] >= np.array([[0], [4]])).astype(np.int32)

  def loss_and_logits(m):
    def f(p):
      logits = m.apply({'params': p}, ids, attention_mask=mask).logits
      return jnp.sum(jnp.where(mask[..., None] > 0, jnp.sin(logits), 0.0)), logits
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (_, plain_logits), plain_grads = loss_and_logits(module)(params)
  (_, scan_logits), scan_grads = loss_and_logits(scanned)(stacked)
  real = mask.astype(bool)
  assert_close_programs(np.asarray(scan_logits)[real], np.asarray(plain_logits)[real])
  assert_close_programs(scan_grads, stack_layers(plain_grads))
  assert_close_torch(np.asarray(scan_logits)[real], qwen2_logits(reference, ids, mask.astype(np.int64))[real])


def test_scanned_decoding_equals_unscanned(family_member):
  _, module, params, scanned, stacked = family_member
  ids = np.random.default_rng(1).integers(0, 128, (2, 8))

  def decode(m, p):
    step = jax.jit(lambda p, ids, cache: m.apply({'params': p}, ids, cache=cache))
    out = step(p, ids[:, :5], init_cache(m.config, 2, 8))
    logits = [out.logits]
    for i in range(5, 8):
      out = step(p, ids[:, i:i + 1], out.cache)
      logits.append(out.logits)
    return jnp.concatenate(logits, axis=1), out.cache

  scan_logits, scan_cache = decode(scanned, stacked)
  plain_logits, plain_cache = decode(module, params)
  assert_close_programs(scan_logits, plain_logits)
  assert scan_cache.stacked and scan_cache.keys.shape == (len(plain_cache.keys), *plain_cache.keys[0].shape)
  assert_close_programs(scan_cache, plain_cache.replace(keys=jnp.stack(plain_cache.keys),
                                                        values=jnp.stack(plain_cache.values)))


def test_round_trip_through_the_stacked_layout(family_member, tmp_path):
  """HF -> stacked -> HF is bitwise: what transformers reloads equals the reference tensor by tensor."""
  reference, _, params, scanned, stacked = family_member
  save_pretrained(tmp_path, scanned, stacked)  # the scanned model's stacked layers are written per layer
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
  original = reference.state_dict()
  assert reloaded.keys() == original.keys()
  for key, value in original.items():
    assert torch.equal(reloaded[key], value), key
  # The HF folder fills a scanned model's stacked tree directly, bitwise.
  abstract = jax.eval_shape(lambda: nn.unbox(scanned.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))))
  jax.tree.map(np.testing.assert_array_equal, load_into(abstract['params'], tmp_path), stacked)
  with pytest.raises(ValueError, match='already stacked'):
    stack_layers(stacked)


class _Stacked(Source):
  """An in-memory source holding a scanned model's stacked parameters."""
  where = 'a scanned checkpoint'

  def __init__(self, params):
    self.arrays = flatten_dict(params)

  @property
  def paths(self):
    return frozenset(self.arrays)

  def misshapen(self, wanted):
    return [f'{"/".join(p)}: {self.arrays[p].shape}' for p, v in wanted.items() if self.arrays[p].shape != v.shape]

  def read(self, wanted):
    return {p: jnp.asarray(self.arrays[p], v.dtype) for p, v in wanted.items()}


def test_stacked_parameters_fill_an_unrolled_model(family_member):
  """A scanned run's parameters read into the per-layer tree (what converting a scanned workdir to HF does), and
  a layer count that does not match is named."""
  _, _, params, _, stacked = family_member
  wanted = flatten_dict(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  jax.tree.map(np.testing.assert_array_equal, unflatten_dict(fill(_Stacked(stacked), wanted)), params)
  three = flatten_dict(jax.tree.map(lambda x: jax.ShapeDtypeStruct((3, *x.shape[1:]), x.dtype), stacked))
  with pytest.raises(ValueError, match='stacks 3 layers'):
    fill(_Stacked(params), three)


def test_remat_policies_give_the_same_gradients(capsys):
  """Every remat policy (and one scanned) gives the gradients of no remat; each saves what it names."""
  config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
  module, ids = LlamaForCausalLM(config), jnp.asarray(np.random.default_rng(2).integers(0, 32, (2, 6)))
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), ids)['params'])  # one compile, not one per operation

  def grad(m, p):
    return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(m.apply({'params': p}, ids).logits))))(p)

  expected = grad(module, params)
  saved = {}
  for policy in ('none', *REMAT_POLICIES):
    remat = module.clone(remat_policy=policy)
    assert_close_programs(grad(remat, params), expected, msg=policy)
    print_saved_residuals(lambda p, m=remat: jnp.sum(m.apply({'params': p}, ids).logits), params)
    saved[policy] = capsys.readouterr().out.splitlines()
  scanned = module.clone(config=dataclasses.replace(config, scan_layers=True), remat_policy='save_dots')
  assert_close_programs(grad(scanned, stack_layers(params)), stack_layers(expected))
  # Fewer residuals the more is recomputed; save_attention keeps one named output per layer on top of 'full'.
  assert len(saved['full']) < len(saved['save_attention']) < len(saved['save_dots']) < len(saved['none'])
  assert sum(ATTENTION_OUTPUT in line for line in saved['save_attention']) == config.num_hidden_layers
  with pytest.raises(ValueError, match="unknown remat_policy 'dots'"):
    module.clone(remat_policy='dots').apply({'params': params}, ids)
