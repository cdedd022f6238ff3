"""KV-cache decoding: prefill + jitted decode steps reproduce full-sequence logits, with left padding and with rows
of different cache lengths; the cache's two layouts and its overflow rule."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.models import init_cache
from mmjax.models.kv_cache import write_chunk
from mmjax.weights import from_pretrained
from tests.hf_models import save_qwen2
from tests.numerics import assert_close_programs


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """(module, params, jitted step(params, ids, mask, cache) -> CausalLMOutput, jitted full(params, ids, mask)).

  The tests share batch 2 and max_len 12, so that decode steps compile once.
  """
  directory = tmp_path_factory.mktemp('qwen2_cache')
  save_qwen2(directory, tied=False, seed=1)
  module, params, _ = from_pretrained(directory)
  step = jax.jit(lambda p, ids, mask, cache: module.apply({'params': p}, ids, attention_mask=mask, cache=cache))
  full = jax.jit(lambda p, ids, mask: module.apply({'params': p}, ids, attention_mask=mask).logits)
  return module, params, step, full


def test_left_padded_prefill_and_decode_match_full_sequence(model):
  module, params, step, full = model
  prompt_len, new_tokens = 6, 5
  lengths = np.array([6, 2])
  prompt_mask = (np.arange(prompt_len)[None, :] >= prompt_len - lengths[:, None]).astype(np.int32)
  tokens = np.random.default_rng(0).integers(0, 128, (2, prompt_len + new_tokens))
  full_mask = np.concatenate([prompt_mask, np.ones((2, new_tokens), np.int32)], axis=1)
  expected = np.asarray(full(params, tokens, full_mask))

  cache = init_cache(module.config, 2, 12)
  out = step(params, tokens[:, :prompt_len], prompt_mask, cache)
  real = prompt_mask.astype(bool)
  assert_close_programs(np.asarray(out.logits)[real], expected[:, :prompt_len][real])
  np.testing.assert_array_equal(out.cache.lengths, [prompt_len] * 2)
  np.testing.assert_array_equal(out.cache.valid[:, :prompt_len], real)
  assert not out.cache.valid[:, prompt_len:].any()
  # One 2-token chunk, then single tokens: every decode step reuses one compiled function.
  position = prompt_len
  for size in (2, 1, 1, 1):
    chunk = tokens[:, position:position + size]
    out = step(params, chunk, np.ones_like(chunk, np.int32), out.cache)
    assert_close_programs(out.logits, expected[:, position:position + size])
    position += size
  np.testing.assert_array_equal(out.cache.lengths, [prompt_len + new_tokens] * 2)


def test_rows_with_different_cache_lengths(model):
  """Rows prefilled separately (no padding) and stacked: each row appends at its own length."""
  module, params, step, full = model
  tokens = np.random.default_rng(1).integers(0, 128, (2, 8))
  prompt_lens = [5, 2]
  caches = [step(params, tokens[b:b + 1, :n], np.ones((1, n), np.int32), init_cache(module.config, 1, 12)).cache
            for b, n in enumerate(prompt_lens)]
  cache = jax.tree.map(lambda *xs: jnp.concatenate(xs), *caches)
  np.testing.assert_array_equal(cache.lengths, prompt_lens)
  expected = np.asarray(full(params, tokens, np.ones_like(tokens, np.int32)))
  for t in range(3):
    ids = np.array([[tokens[b, n + t]] for b, n in enumerate(prompt_lens)])
    out = step(params, ids, np.ones((2, 1), np.int32), cache)
    for b, n in enumerate(prompt_lens):
      assert_close_programs(out.logits[b, 0], expected[b, n + t])
    cache = out.cache
  np.testing.assert_array_equal(cache.lengths, [8, 5])


def test_padding_inside_a_decode_chunk_is_skipped(model):
  """A row that idles in a step (mask 0) writes a slot that is never attended to and keeps its positions."""
  module, params, step, full = model
  tokens = np.random.default_rng(2).integers(0, 128, (2, 6))
  out = step(params, tokens[:, :4], np.ones((2, 4), np.int32), init_cache(module.config, 2, 12))
  idle = step(params, tokens[:, 4:5], np.array([[1], [0]], np.int32), out.cache)
  out = step(params, tokens[:, 5:6], np.ones((2, 1), np.int32), idle.cache)
  np.testing.assert_array_equal(out.cache.valid[:, :6], [[1] * 6, [1, 1, 1, 1, 0, 1]])
  skipped = np.concatenate([tokens[:, :4], tokens[:, 5:6]], axis=1)
  assert_close_programs(out.logits[1, 0], full(params, skipped, np.ones_like(skipped, np.int32))[1, -1])


@pytest.mark.parametrize('attn_impl', ['xla', 'pallas'])
def test_contiguous_cache_decodes_by_lengths_like_the_mask_path(model, attn_impl):
  """A cache marked contiguous attends by lengths (the decode kernel with impl='pallas'); same logits."""
  module, params, step, _ = model
  lengths = np.array([5, 2])
  tokens = np.random.default_rng(3).integers(0, 128, (2, 9))
  prompt_mask = (np.arange(5)[None, :] < lengths[:, None]).astype(np.int32)  # right padding
  out = step(params, tokens[:, :5], prompt_mask, init_cache(module.config, 2, 12))
  # Forget the right padding, as mmjax.generate's prefill does: rows are then contiguous from slot 0.
  slots = np.arange(12)[None, :]
  masked = out.cache.replace(lengths=jnp.asarray(lengths, jnp.int32), valid=jnp.asarray(slots < lengths[:, None]))
  fast = masked.replace(contiguous=True)
  by_lengths = jax.jit(lambda p, ids, cache: module.clone(attn_impl=attn_impl).apply({'params': p}, ids, cache=cache))
  for t in range(5, 9):
    ids = tokens[:, t:t + 1]
    ref = step(params, ids, None, masked)
    got = by_lengths(params, ids, fast)
    assert got.cache.contiguous
    assert_close_programs(got.logits, ref.logits)
    np.testing.assert_array_equal(got.cache.valid, ref.cache.valid)
    masked, fast = ref.cache, got.cache
  jaxpr = str(jax.make_jaxpr(lambda p, ids, c: module.clone(attn_impl=attn_impl).apply({'params': p}, ids, cache=c))(
      params, tokens[:, :1], fast))
  assert ('pallas_call' in jaxpr) == (attn_impl == 'pallas')


def test_a_padded_chunk_clears_the_contiguous_promise(model):
  module, params, step, _ = model
  cache = init_cache(module.config, 2, 12).replace(contiguous=True)
  out = step(params, np.ones((2, 3), np.int32), np.array([[1, 1, 1], [1, 1, 0]], np.int32), cache)
  assert not out.cache.contiguous


def test_a_write_past_the_end_is_dropped_not_clamped():
  buffer = jnp.arange(12, dtype=jnp.float32).reshape(2, 6, 1, 1)
  chunk = -jnp.arange(1, 9, dtype=jnp.float32).reshape(2, 4, 1, 1)
  out = np.asarray(write_chunk(buffer, chunk, jnp.array([1, 4])))[..., 0, 0]
  np.testing.assert_array_equal(out, [[0, -1, -2, -3, -4, 5], [6, 7, 8, 9, -5, -6]])


@pytest.mark.parametrize('scan_layers', [False, True])
def test_row_gathers_and_shardings_follow_the_layout(model, scan_layers):
  """take_rows and partition_specs find the rows on axis 0 (one buffer per layer) or 1 (stacked [L, B, ...])."""
  module, *_ = model
  config = dataclasses.replace(module.config, scan_layers=scan_layers)
  cache = init_cache(config, 3, 4)
  rng = np.random.default_rng(4)
  cache = jax.tree.map(lambda x: jnp.asarray(rng.integers(0, 9, x.shape)).astype(x.dtype), cache)
  assert cache.stacked == scan_layers
  rows = jnp.array([2, 0, 2, 2])
  picked = cache.take_rows(rows)
  layers = [(cache.keys[i], cache.values[i]) for i in range(config.num_hidden_layers)]
  for i, (keys, values) in enumerate(layers):
    np.testing.assert_array_equal(picked.keys[i], keys[rows])
    np.testing.assert_array_equal(picked.values[i], values[rows])
  np.testing.assert_array_equal(picked.valid, cache.valid[rows])
  specs = cache.partition_specs('data', 'tensor')
  key_spec = jax.tree.leaves(specs.keys, is_leaf=lambda x: isinstance(x, P))[0]
  assert key_spec == (P(None, 'data', None, 'tensor', None) if scan_layers else P('data', None, 'tensor', None))
  assert specs.lengths == P('data') and specs.valid == P('data', None)
