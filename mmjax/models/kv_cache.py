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
(cumsum(attention_mask) - 1). The caller keeps every row's real tokens within max_len (a jitted step cannot
raise); the slots of a chunk that fall past max_len (the padding of a row near the end) are dropped.

Two layouts of the keys and values: one [B, max_len, Hkv, D] buffer per layer (a model with unrolled layers), or
all layers stacked [L, B, max_len, Hkv, D] (a model with `scan_layers`, whose `nn.scan` carries the stacked
buffers from layer to layer and writes each layer's chunk in place, `write_chunk(..., layer=i)`). `init_cache`
picks the model's; the batch axis is then 0 or 1, so whoever picks rows (forks, beam reorders, sharding) goes
through `take_rows` and `partition_specs` instead of assuming an axis.
"""
from collections.abc import Sequence
from typing import Protocol

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

# One buffer per layer [B, T, Hkv, D], or every layer stacked [L, B, T, Hkv, D].
Buffers = tuple[jax.Array, ...] | jax.Array


class CacheShape(Protocol):
  """What `init_cache` reads from a model config."""
  num_hidden_layers: int
  num_key_value_heads: int
  scan_layers: bool

  @property
  def head_dim(self) -> int: ...


@flax.struct.dataclass
class KVCache:
  """Keys/values of every layer and per-row bookkeeping.

  keys, values: one array per layer, [B, max_len, Hkv, D] each, or one stacked array [L, B, max_len, Hkv, D]
    (keys after RoPE).
  lengths: int32 [B], slots written so far in each row; the next chunk starts at lengths[b].
  valid: bool [B, max_len], True where a written slot holds a real (non-padding) token.
  contiguous: static promise that valid[b] is exactly slots [0, lengths[b]) in every row (no padding inside),
    as after `mmjax.generate`'s prefill. A model may then attend by lengths alone (`kv_lengths` of
    `dot_product_attention`, the decode kernel on GPU/TPU) instead of building the [B, S, max_len] mask.
  """
  keys: Buffers
  values: Buffers
  lengths: jax.Array
  valid: jax.Array
  contiguous: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]

  @property
  def stacked(self) -> bool:
    """Whether keys and values are stacked [L, B, T, Hkv, D] (the scanned model's layout)."""
    return not isinstance(self.keys, tuple)

  def take_rows(self, rows: jax.Array) -> 'KVCache':
    """The cache of rows `rows` int [R] (a row gather: rows may repeat, to fork, or be dropped), in either layout."""
    def take(tree: Buffers, axis: int) -> Buffers:
      return jax.tree.map(lambda x: jnp.take(x, rows, axis=axis), tree)

    axis = 1 if self.stacked else 0
    return self.replace(keys=take(self.keys, axis), values=take(self.values, axis), lengths=take(self.lengths, 0),
                        valid=take(self.valid, 0))

  def partition_specs(self, rows: str | tuple[str, ...] | None, kv_heads: str | tuple[str, ...] | None
                      ) -> 'KVCache':
    """A KVCache of PartitionSpecs for `jax.tree.map` beside this one: rows over the mesh axes `rows`, KV heads over
    `kv_heads`, everything else replicated."""
    if self.stacked:
      keys = values = P(None, rows, None, kv_heads, None)
    else:
      keys = values = tuple(P(rows, None, kv_heads, None) for _ in self.keys)
    return self.replace(keys=keys, values=values, lengths=P(rows), valid=P(rows, None))

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

  def update(self, keys: Sequence[jax.Array] | jax.Array, values: Sequence[jax.Array] | jax.Array,
             chunk_valid: jax.Array) -> 'KVCache':
    """The cache after a chunk: the new buffers (from `write_chunk`) in this cache's layout (one per layer, or
    stacked), lengths += S, valid updated.

    The caller keeps `contiguous` only for a chunk without padding (see Qwen2ForCausalLM)."""
    if not self.stacked:
      keys, values = tuple(keys), tuple(values)
    return self.replace(keys=keys, values=values, lengths=self.lengths + chunk_valid.shape[1],
                        valid=self.valid_after(chunk_valid))


def write_chunk(buffer: jax.Array, chunk: jax.Array, lengths: jax.Array, layer: jax.Array | None = None
                ) -> jax.Array:
  """Writes chunk [B, S, Hkv, D] into buffer [B, max_len, Hkv, D] at slots [lengths[b], lengths[b] + S) per row;
  the chunk's slots past max_len are dropped (S <= max_len).

  With `layer` (an int index, may be traced), buffer is a stacked cache [L, B, max_len, Hkv, D] and only that
  layer's slots are written: inside a scan over layers that carries the stacked cache, the update is in place
  instead of a rewrite of the layer's whole buffer.
  """
  # A cache built for another batch size or head layout would otherwise fail deep inside the scatter, or not at all.
  row_shape = buffer.shape if layer is None else buffer.shape[1:]
  if (len(row_shape), chunk.ndim, lengths.ndim) != (4, 4, 1) or row_shape[0] != chunk.shape[0] \
      or row_shape[2:] != chunk.shape[2:] or lengths.shape[0] != chunk.shape[0]:
    raise ValueError(f'a chunk {chunk.shape} with lengths {lengths.shape} does not fit a cache buffer '
                     f'{buffer.shape}{"" if layer is None else " (stacked)"}.')
  rows = jnp.arange(chunk.shape[0])[:, None]
  slots = lengths[:, None] + jnp.arange(chunk.shape[1])[None, :]
  # One scatter that drops the slots past max_len (never moved back onto a row's earlier slots) and reads nothing
  # of the buffer, so XLA updates it in place (a read of the old window would force a copy of the whole buffer).
  index = (rows, slots) if layer is None else (layer, rows, slots)
  return buffer.at[index].set(chunk.astype(buffer.dtype), mode='drop')


def init_cache(config: CacheShape, batch: int, max_len: int, dtype: DTypeLike = jnp.float32) -> KVCache:
  """An empty cache in the layout of the config's model: zero keys/values in `dtype`, stacked
  [L, B, max_len, Hkv, D] when config.scan_layers, else [B, max_len, Hkv, D] per layer; lengths 0, nothing valid."""
  shape = (batch, max_len, config.num_key_value_heads, config.head_dim)

  def buffers() -> Buffers:
    if config.scan_layers:
      return jnp.zeros((config.num_hidden_layers, *shape), dtype)
    return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))

  return KVCache(keys=buffers(), values=buffers(), lengths=jnp.zeros((batch,), jnp.int32),
                 valid=jnp.zeros((batch, max_len), bool))
