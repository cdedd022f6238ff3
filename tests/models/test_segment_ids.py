"""Padding and packing as segment ids through the decoder family: a packed row equals its documents run one by
one (logits and gradients, scanned and unscanned), and RoPE positions restart per document."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import LlamaConfig, LlamaForCausalLM, init_cache
from mmjax.models.decoder import segment_positions, stack_layers
from tests.numerics import assert_close_programs

CONFIG = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
LENGTHS = (5, 4)  # two documents packed into one row of 12 tokens, then 3 padding tokens


def test_segment_positions_restart_per_document():
  ids = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [0, 0, 3, 3, 3, 3, 3]])
  np.testing.assert_array_equal(segment_positions(ids), [[0, 1, 2, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4]])


@pytest.mark.parametrize('scan', [False, True])
def test_a_packed_row_equals_its_documents(scan):
  module = LlamaForCausalLM(dataclasses.replace(CONFIG, scan_layers=scan))
  rng = np.random.default_rng(0)
  docs = [jnp.asarray(rng.integers(0, 32, (1, n)), jnp.int32) for n in LENGTHS]
  packed = jnp.concatenate([*docs, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.asarray([[1] * LENGTHS[0] + [2] * LENGTHS[1] + [0] * 3], jnp.int32)
  params = nn.unbox(jax.jit(LlamaForCausalLM(CONFIG).init)(jax.random.key(0), packed)['params'])  # one compile
  params = stack_layers(params) if scan else params

  def loss(p, ids, segment_ids=None):
    logits = module.apply({'params': p}, ids, segment_ids=segment_ids).logits
    real = jnp.ones(ids.shape, bool) if segment_ids is None else segment_ids > 0
    return jnp.sum(jnp.where(real[..., None], jnp.sin(logits), 0.0)), logits

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, packed_logits), packed_grads = step(params, packed, segments)
  separate = [step(params, doc) for doc in docs]
  assert_close_programs(packed_logits[:, :sum(LENGTHS)], jnp.concatenate([s[0][1] for s in separate], axis=1))
  assert_close_programs(packed_grads, jax.tree.map(lambda *g: sum(g), *(s[1] for s in separate)))
  # Without the segments the second document would see the first: the comparison can fail.
  (_, leaky), _ = step(params, packed, (segments > 0).astype(jnp.int32))
  assert not np.allclose(leaky[:, LENGTHS[0]:sum(LENGTHS)], packed_logits[:, LENGTHS[0]:sum(LENGTHS)], atol=1e-3)


def test_padding_equals_unpadded_and_segments_refuse_a_cache():
  module = LlamaForCausalLM(CONFIG)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 32, (1, 6)), jnp.int32)
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), ids)['params'])
  padded = jnp.concatenate([jnp.zeros((1, 2), jnp.int32), ids], axis=1)
  mask = jnp.asarray([[0, 0] + [1] * 6])
  # Jitted: one compile per forward instead of one per operation.
  forward = jax.jit(lambda p, x, m: module.apply({'params': p}, x, attention_mask=m).logits)
  got = forward(params, padded, mask)[:, 2:]
  assert_close_programs(got, forward(params, ids, None))
  with pytest.raises(ValueError, match='segment_ids .* without a cache'):
    module.apply({'params': params}, ids, segment_ids=jnp.ones_like(ids), cache=init_cache(CONFIG, 1, 8))
