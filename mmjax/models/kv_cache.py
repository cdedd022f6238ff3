"""Explicit key/value cache for decoder-only transformers (Qwen2): a pytree that a jitted step takes and returns.

Each row of the batch owns `max_len` slots per layer. A call with a chunk of S new tokens writes their keys and
values at slots [lengths[b], lengths[b] + S) of row b and advances lengths[b] by S, so rows may hold different
numbers of slots. `valid` records which written slots hold real tokens: padding tokens of a chunk (attention_mask
0) are written but never attended to, which is how left-padded prompts share one prefill.

Typical use (static max_len, so one compiled step serves every decode position):

  cache = init_cache(config, batch, max_len, jnp.float32)
  out = model.apply({'params': p}, prompt_ids, attention_mask=prompt_mask, cache=cache)      # prefill
  out = model.apply({'params': p}, next_ids[:, None], cache=out.cache)                       # decode step

A query at chunk index i of row b sees slot j iff valid[b, j] and j <= lengths[b] + i (causal within the chunk).
The RoPE position of a token is the number of real tokens before it in its row, as in HF generation
(cumsum(attention_mask) - 1). The caller keeps lengths + S <= max_len: a jitted step cannot raise, and
`jax.lax.dynamic_update_slice` would clamp an overflowing write onto the last slots.
"""
from typing import Protocol

import chex
import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike


class CacheShape(Protocol):
  """What `init_cache` reads from a model config."""
  num_hidden_layers: int
  num_key_value_heads: int

  @property
  def head_dim(self) -> int: ...


@flax.struct.dataclass
class KVCache:
  """Per-layer keys/values and per-row bookkeeping.

  keys, values: one array per layer, [B, max_len, Hkv, D] each (keys after RoPE).
  lengths: int32 [B], slots written so far in each row; the next chunk starts at lengths[b].
  valid: bool [B, max_len], True where a written slot holds a real (non-padding) token.
  contiguous: static promise that valid[b] is exactly slots [0, lengths[b]) in every row (no padding inside),
    as after `mmjax.generate`'s prefill. A model may then attend by lengths alone (`kv_lengths` of
    `dot_product_attention`, the decode kernel on GPU/TPU) instead of building the [B, S, max_len] mask.
  """
  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  lengths: jax.Array
  valid: jax.Array
  contiguous: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]

  def _chunk_slots(self, chunk_len: int) -> tuple[jax.Array, jax.Array]:
    """(in_chunk bool [B, T]: slot j receives the chunk, index int [B, T]: chunk index of slot j, clipped)."""
    offset = jnp.arange(self.max_len)[None, :] - self.lengths[:, None]
    return (offset >= 0) & (offset < chunk_len), jnp.clip(offset, 0, chunk_len - 1)

  def valid_after(self, chunk_valid: jax.Array) -> jax.Array:
    """bool [B, max_len]: `valid` once a chunk with real-token mask chunk_valid [B, S] is written."""
    in_chunk, index = self._chunk_slots(chunk_valid.shape[1])
    return jnp.where(in_chunk, jnp.take_along_axis(chunk_valid, index, axis=1), self.valid)

  def attention_mask(self, chunk_valid: jax.Array) -> jax.Array:
    """bool [B, 1, S, max_len]: which slots each of the chunk's S queries attends to (see module docstring)."""
    chunk_len = chunk_valid.shape[1]
    last_visible = self.lengths[:, None] + jnp.arange(chunk_len)[None, :]
    causal = jnp.arange(self.max_len)[None, None, :] <= last_visible[:, :, None]
    return (causal & self.valid_after(chunk_valid)[:, None, :])[:, None]

  def positions(self, chunk_valid: jax.Array) -> jax.Array:
    """int32 [B, S]: RoPE positions of the chunk's tokens, counting the real tokens already cached."""
    before = jnp.sum(self.valid, axis=1, dtype=jnp.int32)
    within = jnp.cumsum(chunk_valid.astype(jnp.int32), axis=1) - 1
    return jnp.maximum(before[:, None] + within, 0)

  def update(self, keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...], chunk_valid: jax.Array
             ) -> 'KVCache':
    """The cache after a chunk: new per-layer buffers (from `write_chunk`), lengths += S, valid updated.

    The caller keeps `contiguous` only for a chunk without padding (see Qwen2ForCausalLM)."""
    return self.replace(keys=tuple(keys), values=tuple(values), lengths=self.lengths + chunk_valid.shape[1],
                        valid=self.valid_after(chunk_valid))


def write_chunk(buffer: jax.Array, chunk: jax.Array, lengths: jax.Array) -> jax.Array:
  """Writes chunk [B, S, Hkv, D] into buffer [B, max_len, Hkv, D] at slots [lengths[b], lengths[b] + S) per row."""
  # A cache built for another batch size or head layout would otherwise fail deep inside vmap, or not at all.
  chex.assert_rank([buffer, chunk, lengths], [4, 4, 1])
  chex.assert_equal_shape([buffer, chunk], dims=(0, 2, 3))
  chex.assert_axis_dimension(lengths, 0, buffer.shape[0])
  chunk = chunk.astype(buffer.dtype)
  return jax.vmap(lambda buf, new, start: jax.lax.dynamic_update_slice_in_dim(buf, new, start, axis=0))(
      buffer, chunk, lengths)


def init_cache(config: CacheShape, batch: int, max_len: int, dtype: DTypeLike = jnp.float32) -> KVCache:
  """An empty cache: zero keys/values [B, max_len, Hkv, D] per layer in `dtype`, lengths 0, nothing valid."""
  shape = (batch, max_len, config.num_key_value_heads, config.head_dim)

  def buffers() -> tuple[jax.Array, ...]:
    return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))

  return KVCache(keys=buffers(), values=buffers(), lengths=jnp.zeros((batch,), jnp.int32),
                 valid=jnp.zeros((batch, max_len), bool))
