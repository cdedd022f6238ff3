"""impl= dispatch: Pallas (interpret mode here) and cuDNN behind dot_product_attention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from mmjax.nn import attention
from mmjax.nn.attention import dot_product_attention, resolve_impl
from mmjax.nn.vit import EncoderBlock
from tests.numerics import assert_close_programs

RULES = (('batch', ('data', 'fsdp')), ('length', None), ('embed', 'fsdp'), ('mlp', 'tensor'),
         ('heads', 'tensor'), ('kv_heads', 'tensor'), ('head_dim', None))


def _qkv(b=2, sq=24, sk=24, h=4, hkv=2, d=64, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for shape in ((b, sq, h, d), (b, sk, hkv, d), (b, sk, hkv, d)))


def _block_loss(impl):
  block = EncoderBlock(num_heads=4, mlp_dim=128, attn_impl=impl)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 20, 256)), jnp.float32)
  params = jax.jit(EncoderBlock(num_heads=4, mlp_dim=128, attn_impl='xla').init)(jax.random.PRNGKey(0), x)['params']
  # Summed over features, averaged over the 40 tokens: gradients of order one, the scale the policy's 1e-5 is for.
  loss = lambda p, x: jnp.sum(block.apply({'params': p}, x) ** 2) / 40  # noqa: E731
  # LLVM optimisations off: the interpret-mode kernel compiles ~2.5x faster (as in tests/pallas_kernels).
  fast = {'xla_backend_optimization_level': 0}
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=fast), params, x


def test_grad_through_a_transformer_block_pallas_matches_xla():
  fx, params, x = _block_loss('xla')
  fp, _, _ = _block_loss('pallas')
  assert_close_programs(fp(params, x), fx(params, x))


@pytest.mark.parametrize('batch,causal,segments', [(4, True, False), (4, False, True), (2, True, True)])
def test_pallas_under_a_sharded_mesh_matches_xla(batch, causal, segments):
  q, k, v = _qkv(b=batch)
  seg = jnp.asarray(np.repeat([[0] * 10 + [1] * 14], batch, axis=0)) if segments else None
  want = dot_product_attention(q, k, v, causal=causal, segment_ids=seg, impl='xla')
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    fn = jax.jit(lambda q, k, v, s: dot_product_attention(q, k, v, causal=causal, segment_ids=s, impl='pallas'))
    got = fn(q, k, v, seg)
    jaxpr = str(jax.make_jaxpr(fn)(q, k, v, seg))
  assert 'shard_map' in jaxpr
  assert_close_programs(got, want)


def test_forced_implementations_refuse_with_the_reason(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')  # the same answers on a GPU machine
  q, k, v = _qkv()
  mask = jnp.ones((1, 1, 24, 24), bool)
  with pytest.raises(ValueError, match="impl='pallas' cannot serve.*explicit mask"):
    dot_product_attention(q, k, v, mask=mask, impl='pallas')
  with pytest.raises(ValueError, match="impl='cudnn' cannot serve.*needs a GPU"):
    dot_product_attention(q, k, v, impl='cudnn')
  with pytest.raises(ValueError, match='choose one of'):
    dot_product_attention(q, k, v, impl='flash')


def test_auto_picks_pallas_on_accelerators_only_when_it_supports_the_request(monkeypatch):
  q, k, _ = _qkv()
  request = dict(q=q, k=k, causal=True, mask=None, q_segment_ids=None, kv_segment_ids=None)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert resolve_impl('auto', request) == 'xla'  # CPU: interpret mode is for tests, not for speed
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert resolve_impl('auto', request) == 'pallas'
  assert resolve_impl('auto', {**request, 'mask': jnp.ones((1, 1, 24, 24), bool)}) == 'xla'
  big = jnp.zeros((1, 4, 2, 512))
  assert resolve_impl('auto', {**request, 'q': big, 'k': big}) == 'xla'  # head_dim above the kernel's limit
  assert attention.ATTENTION_IMPLS['cudnn'].auto_backends == frozenset()


def _decode_qkv(lengths, sq=3, s_max=40):
  q, k, v = _qkv(b=len(lengths), sq=sq, sk=s_max)
  return q, k, v, jnp.asarray(lengths, jnp.int32)


def _by_hand(q, k, v, lengths):
  """Row by row: the last Sq of the first lengths[b] keys, causal among the queries."""
  attend = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True, impl='xla'))
  rows = []
  for b, n in enumerate(np.asarray(lengths)):
    rows.append(attend(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n]))
  return jnp.concatenate(rows)


def test_kv_lengths_attends_to_the_cached_prefix_only():
  q, k, v, lengths = _decode_qkv([3, 17, 40])
  expected = _by_hand(q, k, v, lengths)
  got = dot_product_attention(q, k, v, causal=True, kv_lengths=lengths, impl='xla')
  assert_close_programs(got, expected)


def test_kv_lengths_with_pallas_runs_the_decode_kernel(monkeypatch):
  q, k, v, lengths = _decode_qkv([1, 9, 40])
  calls = []
  kernel = attention.ATTENTION_IMPLS['pallas'].decode
  monkeypatch.setitem(attention.ATTENTION_IMPLS, 'pallas', attention.ATTENTION_IMPLS['pallas']._replace(
      decode=lambda *a, **kw: calls.append(1) or kernel(*a, **kw)))
  got = dot_product_attention(q, k, v, causal=True, kv_lengths=lengths, impl='pallas')
  assert calls, 'the Pallas decode kernel was not used'
  expected = dot_product_attention(q, k, v, causal=True, kv_lengths=lengths, impl='xla')
  # Row 0 has one key for three queries: its first two queries see nothing and must be zeros in both.
  assert_close_programs(got, expected)
  assert np.all(np.asarray(got[0, :2]) == 0)


def test_kv_lengths_dispatch_and_refusals(monkeypatch):
  q, k, v, lengths = _decode_qkv([4, 5])
  with pytest.raises(ValueError, match='pass causal=True'):
    dot_product_attention(q, k, v, kv_lengths=lengths)
  with pytest.raises(ValueError, match='kv_lengths must be int'):
    dot_product_attention(q, k, v, causal=True, kv_lengths=lengths[:1])
  many = _qkv(b=2, sq=9, sk=40)[0]
  with pytest.raises(ValueError, match="impl='pallas' cannot serve this decode request.*1..8"):
    dot_product_attention(many, k, v, causal=True, kv_lengths=lengths + 9, impl='pallas')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert attention._decode_impl('auto', q, k) is None  # CPU: the lengths become a mask for XLA
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert attention._decode_impl('auto', q, k) == 'pallas'
  assert attention._decode_impl('auto', many, k) is None


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_auto_runs_the_flash_kernel_for_segment_ids_and_xla_for_a_mask(backend, monkeypatch):
  """Padding and packing as segment ids reach the Pallas kernel on GPU and TPU; an arbitrary mask runs XLA."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  calls = []
  for name in ('pallas', 'xla'):  # record the choice, compute with XLA (no accelerator here)
    monkeypatch.setitem(attention.ATTENTION_IMPLS, name, attention.ATTENTION_IMPLS[name]._replace(
        fn=lambda *a, name=name, **kw: calls.append(name) or attention.xla_attention(*a, **kw)))
  q, k, v = _qkv()
  seg = jnp.asarray(np.repeat([[0] * 3 + [1] * 12 + [2] * 9], 2, axis=0), jnp.int32)
  dot_product_attention(q, k, v, causal=True, segment_ids=seg)
  dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), causal=True, segment_ids=seg)
  dot_product_attention(q[:, :8], k, v, segment_ids=(seg[:, :8], seg))
  dot_product_attention(q, k, v, causal=True, mask=jnp.asarray(np.random.default_rng(0).random((2, 1, 24, 24)) < .5))
  assert calls == ['pallas', 'pallas', 'pallas', 'xla']
