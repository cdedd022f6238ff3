"""The recipes' scale jitter (augment.py): masks keep their label values, frames and masks move together and every
frame of a clip gets the same geometry, padding is flagged and left out of the loss, the draw is seeded, the combo
recipe turns it on, and evaluation reads its split untouched."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import avesformer
from experiments.avesformer import augment, experiment
from experiments.avesformer.losses import segmentation_loss
from experiments.avesformer.synthetic import SyntheticSource
from mmjax.data import make_pipeline

T, H, W, SIZE = 3, 20, 30, 24


def _coordinate_clip() -> dict[str, np.ndarray]:
  """Frames whose channels are (row, column, frame number + 1) of each pixel; masks label each pixel 1 + y W + x."""
  y, x = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing='ij')
  frames = np.stack([np.stack([y, x, np.full_like(y, t + 1)], -1) for t in range(T)])
  masks = np.broadcast_to(1 + (y * W + x).astype(np.int32), (T, H, W)).copy()
  return {'frames': frames, 'masks': masks, 'mask_flags': np.ones(T, np.float32), 'index': np.int32(0)}


def test_frames_and_masks_share_one_geometry_per_clip():
  jitter = augment.ScaleJitter(augment.combo_scales(), SIZE, hflip=0.5)
  clip = _coordinate_clip()
  padded = cropped = flipped = 0
  for seed in range(24):
    out = jitter.random_map(clip, np.random.default_rng(seed))
    frames, masks, flags = out['frames'], out['masks'], out['pixel_flags']
    assert frames.shape == (T, SIZE, SIZE, 3) and masks.shape == flags.shape == (T, SIZE, SIZE)
    assert masks.dtype == np.int32 and frames.dtype == np.float32
    assert set(np.unique(masks)) <= set(np.unique(clip['masks'])) | {0}   # label-valued: nearest neighbour
    image = flags > 0
    np.testing.assert_array_equal(masks == 0, ~image)                      # padding: label 0, flagged
    np.testing.assert_array_equal(frames[~image], np.broadcast_to(jitter.pad, frames[~image].shape))
    for t in range(T):                                                     # one geometry for every frame
      np.testing.assert_array_equal(masks[t], masks[0])
      np.testing.assert_array_equal(frames[t, ..., :2], frames[0, ..., :2])
      np.testing.assert_array_equal(frames[t, ..., 2][image[t]], t + 1)   # frames are not mixed across time
    # Each frame pixel (bilinear) sits within half a source pixel of the mask's (nearest) source pixel.
    source_y, source_x = np.divmod(masks[image] - 1, W)
    assert np.abs(frames[..., 0][image] - source_y).max() <= 0.5 + 1e-4
    assert np.abs(frames[..., 1][image] - source_x).max() <= 0.5 + 1e-4
    padded += int(not image.all())
    cropped += int(image.all())
    row = masks[0, 0][image[0, 0]]
    flipped += int(len(row) > 1 and row[0] > row[-1])                      # columns run right to left
  assert padded and cropped and flipped                                    # all three happened over the seeds


def test_binary_masks_stay_binary():
  source = SyntheticSource(2, seed=0, size=32)
  jitter = augment.ScaleJitter((0.7, 1.6), 32, hflip=0.5)
  for i in range(2):
    out = jitter.random_map(source[i], np.random.default_rng(i))
    assert out['masks'].dtype == np.float32 and set(np.unique(out['masks'])) == {0.0, 1.0}


def test_padding_is_left_out_of_the_loss():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
  masks = jnp.asarray(rng.integers(0, 2, (2, 8, 8)), jnp.float32)
  feature = jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)
  pixels = jnp.zeros((2, 8, 8)).at[:, :4, :6].set(1.0)
  weights = {'bce': 1.0, 'dice': 1.0, 'iou': 1.0}
  loss_fn = jax.jit(lambda lg, m, px: segmentation_loss(lg, feature, m, jnp.ones(2), weights, px)[0])
  loss = loss_fn(logits, masks, pixels)
  garbage = logits.at[:, 4:].set(50.0).at[:, :, 6:].set(-50.0)              # whatever is predicted on padding
  np.testing.assert_allclose(loss_fn(garbage, masks.at[:, 4:].set(1.0), pixels), loss, rtol=1e-6)
  inside = loss_fn(logits[:, :4, :6], masks[:, :4, :6], None)               # the image pixels alone
  np.testing.assert_allclose(inside, loss, rtol=1e-6)
  labels = jnp.zeros((2, 8, 8), jnp.int32)
  ce = jax.jit(lambda lg, px: segmentation_loss(lg, feature, labels, jnp.ones(2), {'ce': 1.0}, px)[0])
  np.testing.assert_allclose(ce(jnp.zeros((2, 8, 8, 71)).at[:, 4:, :, 3].set(9.0), pixels), np.log(71), rtol=1e-5)


def _smoke_config(**data):
  config = avesformer.get_config('variant=smoke,recipe=combo')
  config.data.update({'synthetic_train': 8, 'synthetic_eval': 4, 'image_size': 32, **data})
  config.batch_size = 4
  return config


def test_recipes_and_seeded_training_pipeline():
  combo, plain = avesformer.get_config('recipe=combo'), avesformer.get_config('recipe=avsegformer')
  assert combo.data.train_scales == pytest.approx([0.5 + 0.1 * i for i in range(16)]) and combo.data.train_hflip == 0.5
  assert plain.data.train_scales == () and plain.data.train_hflip == 0.0
  assert augment.train_transform((), 0.0, 224) is None
  config = _smoke_config()
  first, second = (experiment.make_train_pipeline(config)[0] for _ in range(2))
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])                 # seeded: the same batch twice
  config.seed = 1
  other = experiment.make_train_pipeline(config)[0]
  assert not np.array_equal(other['frames'], first['frames'])
  config.seed = 0
  config.data.train_scales, config.data.train_hflip = (), 0.0
  unjittered = experiment.make_train_pipeline(config)[0]
  assert 'pixel_flags' in first and 'pixel_flags' not in unjittered
  np.testing.assert_array_equal(unjittered['index'], first['index'])       # the jitter leaves the order alone
  assert not np.array_equal(unjittered['frames'], first['frames'])
  plain_batch = make_pipeline(experiment.make_source(config, 'train'), global_batch_size=4, seed=0)[0]
  np.testing.assert_array_equal(unjittered['frames'], plain_batch['frames'])


def test_evaluation_reads_its_split_untouched(monkeypatch):
  config = _smoke_config()
  seen = []
  monkeypatch.setattr(experiment, 'evaluate_source', lambda parts, params, source, **kw: seen.append(source) or {})
  monkeypatch.setattr(experiment, 'shuffled_audio', lambda source, seed: source)
  monkeypatch.setattr(experiment.jax, 'device_get', lambda params: params)
  exp = experiment.make_experiment(config)
  exp.evaluators['val'](None, None)
  reference = SyntheticSource(4, seed=1, size=32)
  assert seen and all(len(s) == 4 for s in seen)
  for source in seen:
    for i in range(4):
      example = source[i]
      assert 'pixel_flags' not in example
      np.testing.assert_array_equal(example['frames'], reference[i]['frames'])
      np.testing.assert_array_equal(example['masks'], reference[i]['masks'])
