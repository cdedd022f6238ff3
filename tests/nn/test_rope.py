"""RoPE vs HF Qwen2 rotary embedding + apply_rotary_pos_emb (rotate-half) at non-trivial positions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb

from mmjax.nn import apply_rope, rope_frequencies
from tests.numerics import assert_close_programs, assert_close_torch


@pytest.mark.parametrize('theta', [10000.0, 1e6])
def test_apply_rope_matches_hf(theta):
  b, s, h, d = 2, 6, 3, 16
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, s, h, d)).astype(np.float32)
  k = rng.standard_normal((b, s, h, d)).astype(np.float32)
  # A decode-like batch: row 0 continues at position 37, row 1 has left padding (repeated 0s) then 0..3.
  positions = np.array([np.arange(37, 37 + s), [0, 0, 0, 1, 2, 3]], dtype=np.int32)
  config = Qwen2Config(hidden_size=h * d, num_attention_heads=h,
                       rope_parameters={'rope_type': 'default', 'rope_theta': theta})
  cos, sin = Qwen2RotaryEmbedding(config)(torch.from_numpy(q), torch.from_numpy(positions).long())
  q_ref, k_ref = apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos, sin, unsqueeze_dim=2)
  pos = jnp.asarray(positions)
  assert_close_torch(apply_rope(jnp.asarray(q), pos, theta=theta), q_ref.numpy())
  assert_close_torch(apply_rope(jnp.asarray(k), pos, theta=theta), k_ref.numpy())


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32) for _ in range(2))

  def score(m: int, n: int) -> jax.Array:
    return jnp.sum(apply_rope(q, jnp.array([[m]])) * apply_rope(k, jnp.array([[n]])))

  # Angles at position 103 carry ~100x the rounding of those at 5, so this is looser than the policy's 1e-5.
  assert_close_programs(score(5, 2), score(103, 100), tol=1e-4)
  assert abs(float(score(5, 2)) - float(score(5, 3))) > 1e-3


def test_rope_broadcasts_positions_and_keeps_dtype():
  x = jnp.ones((3, 4, 2, 8), jnp.bfloat16)
  out = apply_rope(x, jnp.arange(4)[None])
  assert out.dtype == jnp.bfloat16 and out.shape == x.shape
  np.testing.assert_array_equal(out[0], out[2])
  cos, sin = rope_frequencies(jnp.arange(4)[None], 8)
  assert cos.shape == sin.shape == (1, 4, 4) and cos.dtype == jnp.float32


def test_rope_rejects_bad_shapes():
  with pytest.raises(ValueError, match='even head_dim'):
    apply_rope(jnp.ones((1, 4, 2, 7)), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match='positions'):
    apply_rope(jnp.ones((1, 4, 2, 8)), jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match=r'\[B, S, H, D\]'):
    apply_rope(jnp.ones((4, 2, 8)), jnp.zeros((1, 4), jnp.int32))
