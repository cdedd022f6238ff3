"""The Pallas and cuDNN implementations behind `dot_product_attention(impl=...)`.

Each checks that it can honour the request exactly and otherwise raises ValueError naming the reason,
so no request falls back silently to a different (possibly wrong) result. impl='auto' asks
`refusal` first and takes XLA when the fast path declines.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mmjax import pallas_kernels

_CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)


def pallas_refusal(q, k, *, causal, mask, q_segment_ids, kv_segment_ids) -> str:
  """Why the Pallas flash kernel can't serve this request ('' when it can)."""
  del causal, q_segment_ids, kv_segment_ids
  ok, why = pallas_kernels.supports(q.shape, k.shape, q.dtype, has_mask=mask is not None)
  if ok and q.dtype != k.dtype:
    return f'q and k/v dtypes differ ({q.dtype} vs {k.dtype})'
  return '' if ok else why


def _mesh_specs(batch: int, num_heads: int, num_kv_heads: int):
  """shard_map specs for [B, S, H, D] operands under the current mesh and logical rules.

  Batch and heads follow the logical rules, keeping the leading mesh axes of each rule whose sizes
  divide the dimension (the rest replicate); sequence and head_dim stay whole inside the kernel.
  Returns None when no multi-device mesh is active.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))

  def fit(axes, *dims):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept, n = [], 1
    for a in axes:
      if any(d % (n * sizes[a]) for d in dims):
        break
      kept.append(a)
      n *= sizes[a]
    return tuple(kept) or None

  batch_axes, _, head_axes, _ = nn.logical_to_mesh_axes(('batch', 'length', 'heads', 'head_dim'))
  kv_axes = nn.logical_to_mesh_axes(('kv_heads',))[0]
  b = fit(batch_axes, batch)
  h = fit(head_axes, num_heads, num_kv_heads)
  if fit(kv_axes, num_kv_heads) != h:
    # GQA groups must stay together: kv heads shard exactly like the query heads.
    raise ValueError(f"impl='pallas': query heads shard over {head_axes} but kv heads over {kv_axes}; "
                     'map heads and kv_heads to the same mesh axes')
  return P(b, None, h, None), P(b, None, h, None), P(b, None)


def pallas_attention(q, k, v, *, causal, mask, q_segment_ids, kv_segment_ids, scale):
  """Pallas flash attention; inside a multi-device mesh it runs per shard under `jax.shard_map`."""
  why = pallas_refusal(q, k, causal=causal, mask=mask, q_segment_ids=q_segment_ids,
                       kv_segment_ids=kv_segment_ids)
  if why:
    raise ValueError(f"impl='pallas' cannot serve this request: {why}")
  kernel = functools.partial(pallas_kernels.flash_attention, causal=causal, scale=scale)
  specs = _mesh_specs(q.shape[0], q.shape[2], k.shape[2])
  if specs is None:
    return kernel(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  q_spec, kv_spec, seg_spec = specs
  if q_segment_ids is None:
    return jax.shard_map(lambda q, k, v: kernel(q, k, v), in_specs=(q_spec, kv_spec, kv_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v)
  return jax.shard_map(lambda q, k, v, qs, ks: kernel(q, k, v, q_segment_ids=qs, kv_segment_ids=ks),
                       in_specs=(q_spec, kv_spec, kv_spec, seg_spec, seg_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)


def pallas_decode_refusal(q, k) -> str:
  """Why the Pallas decode kernel can't serve a kv_lengths request ('' when it can)."""
  ok, why = pallas_kernels.supports(q.shape, k.shape, q.dtype, kind='decode')
  if ok and q.dtype != k.dtype:
    return f'q and k/v dtypes differ ({q.dtype} vs {k.dtype})'
  return '' if ok else why


def pallas_decode(q, k, v, *, kv_lengths, scale):
  """Split-K Pallas decode attention over a contiguous cache; per shard under a multi-device mesh."""
  kernel = functools.partial(pallas_kernels.decode_attention, scale=scale)
  specs = _mesh_specs(q.shape[0], q.shape[2], k.shape[2])
  if specs is None:
    return kernel(q, k, v, kv_lengths)
  q_spec, kv_spec, _ = specs
  return jax.shard_map(kernel, in_specs=(q_spec, kv_spec, kv_spec, P(q_spec[0])), out_specs=q_spec,
                       check_vma=False)(q, k, v, kv_lengths)


def cudnn_refusal(q, k, *, causal, mask, q_segment_ids, kv_segment_ids) -> str:
  """Why cuDNN fused attention can't serve this request exactly ('' when it can)."""
  if jax.default_backend() != 'gpu':
    return f'cuDNN attention needs a GPU, the backend is {jax.default_backend()!r}'
  if q.dtype not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
    return f'cuDNN attention needs float16 or bfloat16 inputs, got {q.dtype}'
  if q.shape[-1] % 8 or q.shape[-1] > 256:
    return f'cuDNN attention needs head_dim % 8 == 0 and <= 256, got {q.shape[-1]}'
  if mask is not None or q_segment_ids is not None:
    # jax.nn's cuDNN path gives fully masked rows no defined value; our contract is zeros.
    return 'masks and segment ids are served by the Pallas or XLA paths, not cuDNN'
  if causal and q.shape[1] != k.shape[1]:
    return 'cuDNN causal masking is top-left aligned; with Sq != Sk it differs from our bottom-right convention'
  return ''


def cudnn_attention(q, k, v, *, causal, mask, q_segment_ids, kv_segment_ids, scale):
  """`jax.nn.dot_product_attention(implementation='cudnn')` for the requests it serves exactly."""
  why = cudnn_refusal(q, k, causal=causal, mask=mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  if why:
    raise ValueError(f"impl='cudnn' cannot serve this request: {why}")
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation='cudnn')
