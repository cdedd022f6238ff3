"""AVESFormer and the AVSegFormer-style baseline: shapes, the attention-dissipation property, the losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.avesformer.losses import segmentation_loss
from experiments.avesformer.model import AVSConfig, AVSModel, CrossAttention, make_backbone

TINY = dict(dim=32, heads=2, num_prompts=4, gn_groups=8, mask_dims=(16, 8), num_queries=6, query_layers=1,
            query_ffn=32, ffn_ratio=2)
SIZE = 64


def _run(decoder: str, backbone: str, num_classes: int = 1, **kw):
  stages = ('elf', 'elf', 'attn', 'attn') if decoder == 'avesformer' else ('none', 'attn', 'attn', 'attn')
  model = AVSModel(AVSConfig(decoder=decoder, num_classes=num_classes, stages=stages, **{**TINY, **kw}),
                   make_backbone(backbone))
  frames = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
  audio = jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 128)))
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), frames, audio)  # rbg: faster to compile
  (logits, aux), state = jax.jit(lambda v, f, a: model.apply(v, f, a, mutable=['intermediates']))(
      variables, frames, audio)
  return logits, aux, state['intermediates']


@pytest.mark.parametrize('decoder,backbone,classes', [('avesformer', 'tiny_pvt', 1), ('avsegformer', 'tiny_r50', 71)])
def test_shapes(decoder, backbone, classes):
  logits, aux, _ = _run(decoder, backbone, classes)
  assert logits.shape == (2, SIZE, SIZE, classes)
  assert aux['mask_feature'].shape == (2, SIZE // 4, SIZE // 4)
  assert np.all(np.isfinite(logits))


def test_one_audio_token_gives_every_query_the_same_cross_attention_output():
  queries = jax.random.normal(jax.random.key(0), (2, 7, 32))
  layer = CrossAttention(2)
  one_token = jax.random.normal(jax.random.key(1), (2, 1, 32))
  prompts = jax.random.normal(jax.random.key(2), (2, 4, 32))
  variables = layer.init(jax.random.key(3), queries, one_token)
  same = layer.apply(variables, queries, one_token)
  np.testing.assert_allclose(same, jnp.broadcast_to(same[:, :1], same.shape), rtol=1e-5, atol=1e-6)
  differ = layer.apply(variables, queries, prompts)  # the same layer over N = 4 PQG-style tokens
  assert float(jnp.min(jnp.std(differ, axis=1))) > 1e-3


def test_dissipation_in_the_models():
  # Baseline: AVSegFormer's query generator cross-attends to one audio token: identical rows for all queries.
  _, _, baseline = _run('avsegformer', 'tiny_pvt')
  (out,) = baseline['decoder']['query_generator']['cross_attn_0']['cross_attention']
  assert out.shape == (2, TINY['num_queries'], TINY['dim'])
  np.testing.assert_allclose(out, jnp.broadcast_to(out[:, :1], out.shape), rtol=1e-5, atol=1e-6)
  # AVESFormer: the visual queries cross-attend to the PQG's N tokens: the outputs differ across queries.
  _, _, ours = _run('avesformer', 'tiny_pvt')
  # (At init the attention over N tokens is nearly uniform, so rows differ by little, but by 100x the tolerance
  # within which the baseline's rows are identical.)
  for stage in ('stage2_0', 'stage3_0'):
    (out,) = ours['decoder'][stage]['cross_attn']['cross_attention']
    assert float(jnp.mean(jnp.std(out, axis=1))) > 1e-4, stage


def test_losses_weight_frames_and_reject_wrong_terms():
  logits = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  masks = (jax.random.uniform(jax.random.key(1), (3, 8, 8)) > 0.5).astype(jnp.float32)
  feature = jnp.zeros((3, 2, 2))
  weights = {'bce': 1.0, 'dice': 1.0, 'iou': 0.5, 'mix': 0.1}
  loss, parts = segmentation_loss(logits, feature, masks, jnp.array([1.0, 0.0, 0.0]), weights)
  first, _ = segmentation_loss(logits[:1], feature[:1], masks[:1], jnp.ones(1), weights)
  np.testing.assert_allclose(loss, first, rtol=1e-6)  # unsupervised frames do not count
  np.testing.assert_allclose(loss, sum(weights[k] * v for k, v in parts.items()), rtol=1e-6)
  perfect, _ = segmentation_loss(100 * (2 * masks[..., None] - 1), feature, masks, jnp.ones(3), {'dice': 1.0})
  assert float(perfect) < float(loss)
  labels = jnp.zeros((3, 8, 8), jnp.int32)
  ce, _ = segmentation_loss(jnp.zeros((3, 8, 8, 71)), feature, labels, jnp.ones(3), {'ce': 1.0})
  np.testing.assert_allclose(ce, np.log(71), rtol=1e-5)
  with pytest.raises(ValueError, match='config.loss.ce applies to AVSS only'):
    segmentation_loss(logits, feature, masks, jnp.ones(3), {'ce': 1.0})
