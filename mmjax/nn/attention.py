"""Scaled dot-product attention: the one entry point every model calls, and its implementations.

Layout [batch, seq, heads, head_dim]. Grouped-query attention (GQA) never repeats K/V: query head h reads
key/value head h // (H / Hkv), as HF `repeat_kv` does, by viewing q as [B, Sq, Hkv, H / Hkv, D].

Implementations share one keyword signature (see `xla_attention`) and live in `ATTENTION_IMPLS`. Registering
one is a single line, e.g. `ATTENTION_IMPLS['pallas'] = AttentionImpl(pallas_attention, frozenset({'gpu', 'tpu'}))`;
impl='auto' then picks the first registered implementation that lists the current backend, else 'xla'.

Dispatch rule for impl='auto': padding and packing travel as `segment_ids` (0 = padding), which the Pallas
flash kernel serves, so on GPU and TPU a causal and/or segmented request runs the kernel (when it supports
the shape and dtype). An explicit `mask` array is the escape hatch for any other pattern and always runs XLA:
no fused kernel here takes an arbitrary mask. On CPU 'auto' is XLA (the kernel would run interpreted).
cuDNN (impl='cudnn') is opt-in and serves only unmasked requests: jax.nn's cuDNN path has no segment ids,
and its sequence-length form can't express packing or left padding.
"""
import functools
from collections.abc import Callable
from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp

from mmjax.nn.contractions import batched_matmul

SegmentIds = jax.Array | tuple[jax.Array, jax.Array]


class AttentionImpl(NamedTuple):
  """An attention implementation and the backends ('cpu', 'gpu', 'tpu') where impl='auto' prefers it.

  refusal(q, k, *, causal, mask, q_segment_ids, kv_segment_ids) -> str gives the reason the
  implementation can't serve a request ('' when it can); impl='auto' skips implementations that refuse.
  """
  fn: Callable[..., jax.Array]
  auto_backends: frozenset[str]
  refusal: Callable[..., str] | None = None
  # Decoding over a contiguous cache (`kv_lengths`): decode(q, k, v, *, kv_lengths, scale) and the reason it
  # declines a request (decode_refusal(q, k) -> str). Implementations without one get the lengths as a mask.
  decode: Callable[..., jax.Array] | None = None
  decode_refusal: Callable[..., str] | None = None


def _visible(q_len: int, kv_len: int, *, causal: bool, mask: jax.Array | None, q_segment_ids: jax.Array | None,
             kv_segment_ids: jax.Array | None, num_kv_heads: int) -> jax.Array | None:
  """Which keys each query may attend: bool broadcastable to [B, Hkv, G, Sq, Sk], or None for all of them."""
  masks = []
  if causal:
    masks.append(jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None] + (kv_len - q_len))
  if mask is not None:
    heads = mask.shape[1]
    split = (1, 1) if heads == 1 else (num_kv_heads, heads // num_kv_heads)
    masks.append(mask.reshape(mask.shape[0], *split, *mask.shape[2:]))
  if q_segment_ids is not None:
    same = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids != 0)[:, :, None]
    masks.append(same[:, None, None])
  return functools.reduce(jnp.logical_and, masks) if masks else None


# A long causal request runs as this many query blocks, each over only the keys it can see (10/16 of the full
# score matrix). A fixed count keeps the program's size independent of the sequence length; a lax.scan over
# blocks (equal-size tiles) and one full score matrix were both slower on CPU (RESULTS.md, 2026-12-03).
CAUSAL_BLOCKS = 4
_MIN_BLOCK = 128  # below CAUSAL_BLOCKS * _MIN_BLOCK queries one score matrix is as fast
# Non-causal, unmasked attention on CPU runs as query blocks whose scores [B, H, block, Sk] hold at most this many
# elements (4 MiB in float32) once the whole score matrix would not; 2^22 gained less and 2^24 nothing (2026-12-03).
_SCORE_BLOCK = 1 << 20
_MIN_QUERY_BLOCK = 8


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, mask: jax.Array | None,
                  q_segment_ids: jax.Array | None, kv_segment_ids: jax.Array | None, scale: float) -> jax.Array:
  """Plain XLA attention, the reference for every other implementation.

  Called by `dot_product_attention` with validated inputs: a mask (if any) of rank 4, segment ids as a
  ([B, Sq], [B, Sk]) pair or both None, and a float scale. See its docstring for the semantics.
  A long causal request runs as CAUSAL_BLOCKS query blocks over the keys each can see (the same result: the
  skipped keys are all masked); on GPU/TPU causal training runs the flash kernel instead.
  """
  q_len, kv_len = q.shape[1], k.shape[1]
  if not causal and mask is None and q_segment_ids is None:
    block = _query_block(q, kv_len)
    if block:
      return _blocked_attention(q, k, v, scale=scale, block=block)
  if not (causal and q_len >= CAUSAL_BLOCKS * _MIN_BLOCK and kv_len >= q_len):
    return _xla_attention_block(q, k, v, causal=causal, mask=mask, q_segment_ids=q_segment_ids,
                                kv_segment_ids=kv_segment_ids, scale=scale)
  size = -(-q_len // CAUSAL_BLOCKS)
  outs = []
  for start in range(0, q_len, size):
    stop = min(start + size, q_len)
    keys = stop + kv_len - q_len  # the last key the block's last query sees, plus one
    block_mask = None
    if mask is not None:  # broadcast (size-1) query or key axes stay whole
      block_mask = mask[:, :, start:stop] if mask.shape[2] > 1 else mask
      block_mask = block_mask[..., :keys] if mask.shape[3] > 1 else block_mask
    segments = (None, None) if q_segment_ids is None else (q_segment_ids[:, start:stop], kv_segment_ids[:, :keys])
    outs.append(_xla_attention_block(q[:, start:stop], k[:, :keys], v[:, :keys], causal=True, mask=block_mask,
                                     q_segment_ids=segments[0], kv_segment_ids=segments[1], scale=scale))
  return jnp.concatenate(outs, axis=1)


def _query_block(q: jax.Array, kv_len: int) -> int:
  """Queries per block for `_blocked_attention` on CPU, or 0 for one score matrix: the largest power of two
  (>= _MIN_QUERY_BLOCK) dividing Sq whose scores [B, H, block, Sk] fit in _SCORE_BLOCK elements, when the whole
  matrix does not."""
  batch, q_len, heads = q.shape[:3]
  per_query = batch * heads * kv_len
  if jax.default_backend() != 'cpu' or q_len * per_query <= _SCORE_BLOCK:
    return 0
  block = 1 << max(_SCORE_BLOCK // per_query, 1).bit_length() - 1
  while block >= _MIN_QUERY_BLOCK and q_len % block:
    block //= 2
  return block if _MIN_QUERY_BLOCK <= block < q_len else 0


def _blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, block: int) -> jax.Array:
  """Unmasked, non-causal attention as a loop over query blocks of `block` rows (same result as one score
  matrix): each block's scores stay in cache instead of a [B, H, Sq, Sk] matrix making several trips through
  memory (a 64x64-latent SD UNet's self-attention ran 3.3x faster on CPU, RESULTS.md 2026-12-03)."""
  num_kv_heads = k.shape[2]
  groups = q.shape[2] // num_kv_heads
  k, v = (einops.rearrange(x, 'b t k d -> b k t d') for x in (k, v))
  q_blocks = einops.rearrange(q, 'b (n s) (k g) d -> n b k (g s) d', s=block, k=num_kv_heads)

  def attend(q_rows: jax.Array) -> jax.Array:
    logits = batched_matmul(q_rows, k, b_transposed=True, preferred_element_type=jnp.float32) * scale
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    out = batched_matmul(weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out / jnp.sum(weights, axis=-1, keepdims=True)

  out = jax.lax.map(attend, q_blocks)
  return einops.rearrange(out, 'n b k (g s) d -> b (n s) (k g) d', g=groups).astype(q.dtype)


def _xla_attention_block(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, mask: jax.Array | None,
                         q_segment_ids: jax.Array | None, kv_segment_ids: jax.Array | None, scale: float
                         ) -> jax.Array:
  q_len, kv_len, num_kv_heads = q.shape[1], k.shape[1], k.shape[2]
  groups = q.shape[2] // num_kv_heads
  # Heads-major operands make both matmuls plain batched GEMMs for XLA (2x faster on CPU than contracting the
  # [B, S, H, D] layout in place); q [B, Hkv, G * Sq, D]: a group's queries are rows of one matmul on its K/V head.
  q_rows = einops.rearrange(q, 'b s (k g) d -> b k (g s) d', k=num_kv_heads)
  k, v = (einops.rearrange(x, 'b t k d -> b k t d') for x in (k, v))
  logits = batched_matmul(q_rows, k, b_transposed=True, preferred_element_type=jnp.float32)
  logits = einops.rearrange(logits, 'b k (g s) t -> b k g s t', g=groups) * scale
  visible = _visible(q_len, kv_len, causal=causal, mask=mask, q_segment_ids=q_segment_ids,
                     kv_segment_ids=kv_segment_ids, num_kv_heads=num_kv_heads)
  if visible is not None:
    logits = jnp.where(visible, logits, -jnp.inf)
  # A row with no visible key has max -inf; shifting by 0 instead keeps exp(-inf) = 0 and the row all zeros.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  # Normalising the [.., D] output instead of the [.., Sk] weights does Sk/D times less division.
  out = batched_matmul(einops.rearrange(weights.astype(v.dtype), 'b k g s t -> b k (g s) t'), v,
                       preferred_element_type=jnp.float32)
  out = einops.rearrange(out, 'b k (g s) d -> b k g s d', g=groups) / jnp.where(denom == 0.0, 1.0, denom)
  return einops.rearrange(out, 'b k g s d -> b s (k g) d').astype(q.dtype)


ATTENTION_IMPLS: dict[str, AttentionImpl] = {'xla': AttentionImpl(xla_attention, frozenset())}


def resolve_impl(impl: str, request: dict | None = None) -> str:
  """The registered implementation name that `impl` stands for.

  'auto' depends on jax.default_backend() and, given `request` (q, k and the mask keywords), skips
  implementations whose `refusal` declines it.
  """
  if impl == 'auto':
    backend = jax.default_backend()
    for name, entry in ATTENTION_IMPLS.items():
      if backend in entry.auto_backends and not (request and entry.refusal and entry.refusal(**request)):
        return name
    return 'xla'
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'Unknown attention impl {impl!r}; choose one of {["auto", *ATTENTION_IMPLS]}.')
  return impl


def _check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                  segment_ids: SegmentIds | None) -> tuple[jax.Array | None, jax.Array | None]:
  """Raises ValueError on inconsistent shapes; returns (q_segment_ids, kv_segment_ids)."""
  for name, x in (('q', q), ('k', k), ('v', v)):
    if x.ndim != 4:
      raise ValueError(f'{name} must be [batch, seq, heads, head_dim], got shape {x.shape}.')
  if k.shape != v.shape:
    raise ValueError(f'k and v must have the same shape, got {k.shape} and {v.shape}.')
  b, q_len, h, d = q.shape
  kv_len, num_kv_heads = k.shape[1], k.shape[2]
  if k.shape[0] != b:
    raise ValueError(f'q and k/v batch sizes differ: q {q.shape}, k {k.shape}.')
  if k.shape[3] != d:
    raise ValueError(f'q and k/v head_dim differ: q {q.shape}, k {k.shape}.')
  if h % num_kv_heads:
    raise ValueError(f'query heads ({h}) must be a multiple of key/value heads ({num_kv_heads}).')
  if mask is not None:
    target = (b, h, q_len, kv_len)
    if (mask.dtype != jnp.bool_ or mask.ndim > 4
        or any(m not in (1, t) for m, t in zip(mask.shape[::-1], target[::-1]))):
      raise ValueError(f'mask must be boolean and broadcastable to [B, H, Sq, Sk] = {list(target)}, '
                       f'got {mask.dtype} {mask.shape}.')
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    q_seg, kv_seg = segment_ids
  elif q_len != kv_len:
    raise ValueError(f'a single segment_ids array needs Sq == Sk (got {q_len} and {kv_len}); '
                     'pass (q_segment_ids, kv_segment_ids).')
  else:
    q_seg = kv_seg = segment_ids
  if q_seg.shape != (b, q_len) or kv_seg.shape != (b, kv_len):
    raise ValueError(f'segment ids must be [B, Sq] = {[b, q_len]} and [B, Sk] = {[b, kv_len]}, '
                     f'got {q_seg.shape} and {kv_seg.shape}.')
  return q_seg, kv_seg


def lengths_mask(kv_lengths: jax.Array, q_len: int, kv_len: int) -> jax.Array:
  """bool [B, 1, Sq, Sk]: query i of row b sits at kv_lengths[b] - Sq + i and sees keys j <= that position."""
  last = kv_lengths[:, None] - q_len + jnp.arange(q_len)[None, :]
  return (jnp.arange(kv_len)[None, None, :] <= last[:, :, None])[:, None]


def _decode_impl(impl: str, q: jax.Array, k: jax.Array) -> str | None:
  """The implementation whose `decode` serves a kv_lengths request, or None for the mask path."""
  if impl == 'auto':
    backend = jax.default_backend()
    for candidate, entry in ATTENTION_IMPLS.items():
      if backend in entry.auto_backends and entry.decode and not entry.decode_refusal(q, k):
        return candidate
    return None
  name = resolve_impl(impl)
  entry = ATTENTION_IMPLS[name]
  if entry.decode is None:
    return None
  why = entry.decode_refusal(q, k)
  if why:
    raise ValueError(f'impl={impl!r} cannot serve this decode request: {why}')
  return name


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                          mask: jax.Array | None = None, segment_ids: SegmentIds | None = None,
                          scale: float | None = None, impl: str = 'auto',
                          kv_lengths: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T * scale) v over the keys each query may see; returns [B, Sq, H, D] in q.dtype.

  Args:
    q: [B, Sq, H, D] queries.
    k, v: [B, Sk, Hkv, D] keys and values, H % Hkv == 0 (GQA; Hkv == 1 is multi-query attention).
    causal: query i sees key j iff j <= i + (Sk - Sq), i.e. the queries are the last Sq positions of the keys.
    mask: boolean, broadcastable to [B, H, Sq, Sk]; True = may attend.
    segment_ids: int [B, S] (self-attention, Sq == Sk) or a pair ([B, Sq], [B, Sk]) of non-negative ids; a
      query sees only keys with its own id, and id 0 is padding: a padded query sees no key (its output is
      zeros) and a padded key is seen by no query. Packing gives each document its own id 1, 2, ...;
      padding alone is `attention_mask.astype(jnp.int32)` of a [B, S] 0/1 attention mask.
    scale: logit multiplier, default 1 / sqrt(D).
    impl: 'auto' or a name in ATTENTION_IMPLS: 'xla', 'pallas' (flash kernel; interpret mode on CPU) or
      'cudnn' (GPU). 'auto' takes Pallas on GPU/TPU when it supports the request (causal and segment ids
      are supported, an explicit mask is not), else XLA (see the module docstring). A forced
      implementation that can't serve the request exactly raises ValueError with the reason.
    kv_lengths: int [B], decoding over a KV cache: row b's keys are slots [0, kv_lengths[b]) (later slots are
      ignored) and the Sq queries are the last Sq of them, causal among themselves; needs causal=True. With
      impl='pallas', or 'auto' on GPU/TPU, a few queries (Sq <= 8) and no other mask, this runs the split-K
      `decode_attention` kernel; otherwise the lengths become a mask for the chosen implementation.

  Every given mask is combined with AND. Logits and softmax are float32. A query that sees no key gets zeros.
  """
  resolve_impl(impl)  # an unknown name fails before the shape checks
  q_seg, kv_seg = _check_inputs(q, k, v, mask, segment_ids)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  if mask is not None:
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if kv_lengths is not None:
    if not causal:
      raise ValueError('kv_lengths means causal decoding over a cache: pass causal=True with it.')
    if kv_lengths.shape != (q.shape[0],) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer):
      raise ValueError(f'kv_lengths must be int [B] = [{q.shape[0]}], got {kv_lengths.dtype} {kv_lengths.shape}.')
    decoder = None if mask is not None or q_seg is not None else _decode_impl(impl, q, k)
    if decoder is not None:
      return ATTENTION_IMPLS[decoder].decode(q, k, v, kv_lengths=kv_lengths, scale=scale)
    by_length = lengths_mask(kv_lengths, q.shape[1], k.shape[1])
    mask, causal = (by_length if mask is None else mask & by_length), False
  name = resolve_impl(impl, dict(q=q, k=k, causal=causal, mask=mask, q_segment_ids=q_seg, kv_segment_ids=kv_seg))
  return ATTENTION_IMPLS[name].fn(q, k, v, causal=causal, mask=mask, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                                  scale=scale)


def _register_fast_paths() -> None:
  from mmjax.nn import attention_backends as backends  # imports the Pallas kernels
  ATTENTION_IMPLS['pallas'] = AttentionImpl(backends.pallas_attention, frozenset({'gpu', 'tpu'}),
                                            backends.pallas_refusal, backends.pallas_decode,
                                            backends.pallas_decode_refusal)
  ATTENTION_IMPLS['cudnn'] = AttentionImpl(backends.cudnn_attention, frozenset(), backends.cudnn_refusal)


_register_fast_paths()
