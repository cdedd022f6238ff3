"""Segmentation losses for AVESFormer training (the paper's are unverified, spec section 3; weights are config values).

Binary (S4 / MS3), per frame over logits [N, H, W] and masks [N, H, W] in {0, 1}:
  bce   mean sigmoid cross-entropy over the pixels
  dice  1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p = sigmoid [V AVSegFormer dice_loss]
  iou   1 - (sum(p t) + 1) / (sum(p) + sum(t) - sum(p t) + 1), the soft IoU [A]
  mix   dice of the channel-mean mask feature (resized to the mask) [V AVSegFormer mix loss, weight 0.1]
Semantic (AVSS): ce, softmax cross-entropy over logits [N, H, W, C] and class ids [N, H, W].
Every term is averaged over the supervised frames (weights [N] = mask_flags; AVSS's gt_temporal_mask_flag) and
multiplied by its config weight; the loss is their sum. Optional pixel weights [N, H, W] (augment.py's pixel_flags,
0 on the padding of a scale-jittered frame) leave pixels out of every term, as an ignore label does.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

TERMS = ('bce', 'dice', 'iou', 'mix', 'ce')


def _frame_mean(per_frame: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(per_frame * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _pixel_mean(values: jax.Array, pixels: jax.Array | None) -> jax.Array:
  """[N] mean of values [N, H, W] over the pixels with weight 1 (all when pixels is None)."""
  if pixels is None:
    return jnp.mean(values, axis=(1, 2))
  return jnp.sum(values * pixels, axis=(1, 2)) / jnp.maximum(jnp.sum(pixels, axis=(1, 2)), 1.0)


def dice(logits: jax.Array, target: jax.Array, pixels: jax.Array | None = None) -> jax.Array:
  """[N] per-frame Dice loss of logits [N, H, W] against target [N, H, W] (over pixels of weight 1)."""
  p = jax.nn.sigmoid(logits)
  if pixels is not None:
    p, target = p * pixels, target * pixels
  inter = jnp.sum(p * target, axis=(1, 2))
  return 1 - (2 * inter + 1) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(target, axis=(1, 2)) + 1)


def soft_iou(logits: jax.Array, target: jax.Array, pixels: jax.Array | None = None) -> jax.Array:
  """[N] per-frame soft-IoU loss of logits [N, H, W] against target [N, H, W] (over pixels of weight 1)."""
  p = jax.nn.sigmoid(logits)
  if pixels is not None:
    p, target = p * pixels, target * pixels
  inter = jnp.sum(p * target, axis=(1, 2))
  union = jnp.sum(p, axis=(1, 2)) + jnp.sum(target, axis=(1, 2)) - inter
  return 1 - (inter + 1) / (union + 1)


def bce(logits: jax.Array, target: jax.Array, pixels: jax.Array | None = None) -> jax.Array:
  """[N] per-frame mean sigmoid cross-entropy (over pixels of weight 1)."""
  return _pixel_mean(optax.sigmoid_binary_cross_entropy(logits, target), pixels)


def cross_entropy(logits: jax.Array, labels: jax.Array, pixels: jax.Array | None = None) -> jax.Array:
  """[N] per-frame mean softmax cross-entropy of logits [N, H, W, C] and int labels [N, H, W] (pixels of weight 1)."""
  return _pixel_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), pixels)


def segmentation_loss(logits: jax.Array, mask_feature: jax.Array, masks: jax.Array, weights: jax.Array,
                      loss_weights: Mapping[str, float], pixels: jax.Array | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(scalar loss, {term: its frame mean}) for logits [N, H, W, C] (C = 1 binary, else semantic), the mask feature
  [N, h, w], masks [N, H, W], frame weights [N] and optional pixel weights [N, H, W]; terms with weight 0 are
  skipped."""
  unknown = set(loss_weights) - set(TERMS)
  if unknown:
    raise ValueError(f'config.loss has unknown term(s) {sorted(unknown)}; terms: {TERMS}')
  logits = logits.astype(jnp.float32)
  pixels = None if pixels is None else pixels.astype(jnp.float32)
  parts = {}
  if logits.shape[-1] == 1:
    binary, target = logits[..., 0], masks.astype(jnp.float32)
    n, h, w = target.shape
    feature = jax.image.resize(mask_feature.astype(jnp.float32), (n, h, w), 'bilinear', antialias=False)
    terms = {'bce': lambda: bce(binary, target, pixels), 'dice': lambda: dice(binary, target, pixels),
             'iou': lambda: soft_iou(binary, target, pixels), 'mix': lambda: dice(feature, target, pixels)}
  else:
    terms = {'ce': lambda: cross_entropy(logits, masks.astype(jnp.int32), pixels)}
  for name, weight in loss_weights.items():
    if weight and name not in terms:
      raise ValueError(f'config.loss.{name} applies to {"AVSS" if name == "ce" else "S4 / MS3"} only; set it to 0')
    if weight:
      parts[name] = _frame_mean(terms[name](), weights)
  if not parts:
    raise ValueError('config.loss: every term has weight 0')
  return sum(loss_weights[k] * v for k, v in parts.items()), parts
