"""AVESFormer and the AVSegFormer-style baseline: shapes, the attention-dissipation property, the losses."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.avesformer.losses import segmentation_loss
from experiments.avesformer.model import AVSConfig, AVSModel, CrossAttention, host_random_variables, make_backbone

TINY = dict(dim=32, heads=2, num_prompts=4, gn_groups=8, mask_dims=(16, 8), num_queries=6, query_layers=1,
            query_ffn=32, ffn_ratio=2)
SIZE = 64
# Each program here runs once: compiling it without LLVM's optimisations saves a third of the compile time.
RUN_ONCE = {'xla_backend_optimization_level': 0}
# The two tiny models, each run once for all tests (one compile each): AVESFormer on a PVTv2 with the S4/MS3 head,
# the AVSegFormer-style baseline on a ResNet with the AVSS head.
CASES = {'avesformer': ('tiny_pvt', 1), 'avsegformer': ('tiny_r50', 71)}


def _run(decoder: str, backbone: str, num_classes: int):
  """(logits, aux, intermediates) of a tiny model with generic random weights (drawn on the host: no initialiser
  is compiled) on fixed frames and audio; one compiled program."""
  stages = ('elf', 'elf', 'attn', 'attn') if decoder == 'avesformer' else ('none', 'attn', 'attn', 'attn')
  model = AVSModel(AVSConfig(decoder=decoder, num_classes=num_classes, stages=stages, **TINY),
                   make_backbone(backbone))
  rng = np.random.default_rng(1)
  frames = rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
  audio = np.maximum(rng.standard_normal((2, 128)), 0).astype(np.float32)
  variables = host_random_variables(model.init, jax.random.key(0), frames, audio, seed=0)
  (logits, aux), state = jax.jit(lambda v, f, a: model.apply(v, f, a, mutable=['intermediates']),
                                 compiler_options=RUN_ONCE)(variables, frames, audio)
  return logits, aux, state['intermediates']


@pytest.fixture(scope='module')
def runs():
  return {decoder: _run(decoder, *case) for decoder, case in CASES.items()}


@pytest.mark.parametrize('decoder', list(CASES))
def test_shapes(runs, decoder):
  logits, aux, _ = runs[decoder]
  assert logits.shape == (2, SIZE, SIZE, CASES[decoder][1])
  assert aux['mask_feature'].shape == (2, SIZE // 4, SIZE // 4)
  assert np.all(np.isfinite(logits))


def test_one_audio_token_gives_every_query_the_same_cross_attention_output():
  rng = np.random.default_rng(0)
  queries, one_token, prompts = (rng.standard_normal(shape).astype(np.float32)
                                 for shape in ((2, 7, 32), (2, 1, 32), (2, 4, 32)))
  layer = CrossAttention(2)
  variables = host_random_variables(layer.init, jax.random.key(3), queries, one_token, seed=3)
  # The same layer over one audio token and over N = 4 PQG-style tokens.
  same, differ = jax.jit(lambda v: (layer.apply(v, queries, one_token), layer.apply(v, queries, prompts)),
                         compiler_options=RUN_ONCE)(variables)
  np.testing.assert_allclose(same, jnp.broadcast_to(same[:, :1], same.shape), rtol=1e-5, atol=1e-6)
  assert float(jnp.min(jnp.std(differ, axis=1))) > 1e-3


def test_dissipation_in_the_models(runs):
  # Baseline: AVSegFormer's query generator cross-attends to one audio token: identical rows for all queries.
  (out,) = runs['avsegformer'][2]['decoder']['query_generator']['cross_attn_0']['cross_attention']
  assert out.shape == (2, TINY['num_queries'], TINY['dim'])
  np.testing.assert_allclose(out, jnp.broadcast_to(out[:, :1], out.shape), rtol=1e-5, atol=1e-6)
  # AVESFormer: the visual queries cross-attend to the PQG's N tokens: the outputs differ across queries.
  # (At init the attention over N tokens is nearly uniform, so rows differ by little, but by 100x the tolerance
  # within which the baseline's rows are identical.)
  for stage in ('stage2_0', 'stage3_0'):
    (out,) = runs['avesformer'][2]['decoder'][stage]['cross_attn']['cross_attention']
    assert float(jnp.mean(jnp.std(out, axis=1))) > 1e-4, stage


def test_losses_weight_frames_and_reject_wrong_terms():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
  masks = (rng.random((3, 8, 8)) > 0.5).astype(np.float32)
  feature = np.zeros((3, 2, 2), np.float32)
  weights = {'bce': 1.0, 'dice': 1.0, 'iou': 0.5, 'mix': 0.1}

  @functools.partial(jax.jit, compiler_options=RUN_ONCE)
  def losses(logits, masks):
    loss, parts = segmentation_loss(logits, feature, masks, jnp.array([1.0, 0.0, 0.0]), weights)
    first, _ = segmentation_loss(logits[:1], feature[:1], masks[:1], jnp.ones(1), weights)
    perfect, _ = segmentation_loss(100 * (2 * masks[..., None] - 1), feature, masks, jnp.ones(3), {'dice': 1.0})
    ce, _ = segmentation_loss(jnp.zeros((3, 8, 8, 71)), feature, jnp.zeros((3, 8, 8), jnp.int32), jnp.ones(3),
                              {'ce': 1.0})
    return loss, parts, first, perfect, ce

  loss, parts, first, perfect, ce = losses(logits, masks)
  np.testing.assert_allclose(loss, first, rtol=1e-6)  # unsupervised frames do not count
  np.testing.assert_allclose(loss, sum(weights[k] * v for k, v in parts.items()), rtol=1e-6)
  assert float(perfect) < float(loss)
  np.testing.assert_allclose(ce, np.log(71), rtol=1e-5)
  with pytest.raises(ValueError, match='config.loss.ce applies to AVSS only'):
    jax.eval_shape(lambda: segmentation_loss(logits, feature, masks, jnp.ones(3), {'ce': 1.0}))
