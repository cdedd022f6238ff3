"""Stage 2, geo2mat, through the shared trainer: materials given an object's geometry and class.

Examples are 12-channel omages {'omage': float32 [64, 64, 12] in [-1, 1], 'label'} from config.data (the sources
null2geo reads, at 12 channels). The U-Net (config.unet, `geo2mat_unet.Geo2MatUNet`) denoises the 5 material
channels (albedo, metalness, roughness) conditioned on the 4 geometry channels and the class token, with imagen's
v-objective and min-SNR weight (`geo2mat.geo2mat_loss`, class token dropped with geo2mat.cond_drop_prob). The
trainer keeps the EMA (config.ema_decay), which checkpoint readers (`read_workdir_params`) return in its place.
Sampling is `geo2mat.sample_materials` with config.geo2mat's steps, cond_scale and dynamic thresholding.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.object_images.geo2mat import Geo2MatConfig, Geo2MatUNet, geo2mat_loss, sample_materials
from experiments.object_images.null2geo import GEOMETRY_CHANNELS, NUM_CLASSES, make_source
from experiments.object_images.omage import NUM_CHANNELS
from mmjax.data import make_pipeline
from mmjax.train import Experiment

MATERIAL_CHANNELS = 5  # albedo 3, metalness, roughness (normals are dropped: the official 'nonormal' mode)


def unet_config(config: ml_collections.ConfigDict) -> Geo2MatConfig:
  """Geo2MatConfig of config.unet, with ABO's 63 classes (a label >= 63, the null label, means 'dropped')."""
  u = config.unet
  return Geo2MatConfig(
      channels=MATERIAL_CHANNELS, cond_images_channels=GEOMETRY_CHANNELS, dim=u.dim, dim_mults=tuple(u.dim_mults),
      num_resnet_blocks=u.num_resnet_blocks, layer_attns=tuple(u.layer_attns),
      layer_cross_attns=tuple(u.layer_cross_attns), attn_heads=u.attn_heads, attn_dim_head=u.attn_dim_head,
      text_embed_dim=u.text_embed_dim, num_classes=NUM_CLASSES, num_time_tokens=u.num_time_tokens,
      learned_sinu_pos_emb_dim=u.learned_sinu_pos_emb_dim, max_text_len=u.max_text_len,
      resnet_groups=u.resnet_groups, attn_pool_num_latents=u.attn_pool_num_latents,
      attn_pool_max_seq_len=u.attn_pool_max_seq_len, train_label_embed=u.train_label_embed)


def make_model(config: ml_collections.ConfigDict) -> Geo2MatUNet:
  return Geo2MatUNet(unet_config(config))


def init_inputs(config: ml_collections.ConfigDict) -> tuple[jax.Array, ...]:
  """(x, log_snr, cond_images, labels) of batch 1 for model.init / jax.eval_shape."""
  s = config.data.size
  return (jnp.zeros((1, s, s, MATERIAL_CHANNELS), jnp.float32), jnp.zeros((1,), jnp.float32),
          jnp.zeros((1, s, s, GEOMETRY_CHANNELS), jnp.float32), jnp.zeros((1,), jnp.int32))


def abstract_params(config: ml_collections.ConfigDict) -> Any:
  return nn.unbox(jax.eval_shape(make_model(config).init, jax.random.key(0), *init_inputs(config))['params'])


def abstract_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  b, s = config.batch_size, config.data.size
  return {'omage': jax.ShapeDtypeStruct((b, s, s, NUM_CHANNELS), jnp.float32),
          'label': jax.ShapeDtypeStruct((b,), jnp.int32)}


def experiment(config: ml_collections.ConfigDict, train_data: Any) -> Experiment:
  """The trainer's Experiment over `train_data` (batches {'omage': [B, 64, 64, 12], 'label': [B]})."""
  model = make_model(config)
  g = config.geo2mat

  def init_params(rng):
    # The U-Net's few hundred parameter tensors compile ~3x faster to initialise with the rbg generator than with
    # threefry (one unrolled hash per tensor); its key comes from the trainer's, so the init stays seeded.
    key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl='unsafe_rbg')
    return model.init(key, *init_inputs(config))['params']

  def loss_fn(params, batch, rng, step):
    del step
    return geo2mat_loss(model, params, batch, rng, cond_drop_prob=g.cond_drop_prob,
                        min_snr_gamma=g.min_snr_gamma or None)

  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=train_data)


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  source = make_source(config, channels=NUM_CHANNELS)
  return experiment(config, make_pipeline(source, global_batch_size=config.batch_size, seed=config.seed))


def make_material_sampler(config: ml_collections.ConfigDict) -> Callable[[Any, jax.Array, jax.Array, jax.Array],
                                                                           jax.Array]:
  """`sampler(params, geometry [B, S, S, 4], labels int32 [B], key) -> materials float32 [B, S, S, 5]`, all in
  model space [-1, 1]: imagen's sampler over geo2mat.num_steps steps (compiled once per batch shape)."""
  model, g = make_model(config), config.geo2mat

  def sampler(params, geometry, labels, key):
    return sample_materials(model, params, geometry, labels, key, steps=g.num_steps, cond_scale=float(g.cond_scale),
                            dynamic_threshold=g.dynamic_threshold or None)
  return sampler


def draw_materials(sampler: Callable, params: Any, geometry: np.ndarray, labels: np.ndarray, seed: int,
                   batch: int) -> np.ndarray:
  """Materials float32 [N, S, S, 5] in [-1, 1] for geometry [N, S, S, 4] in [-1, 1] and labels int [N], `batch` at
  a time (the last chunk padded by repeating its last object). Chunk b draws from fold_in(fold_in(key(seed), 1), b),
  a stream apart from null2geo's fold_in(key(seed), b), so that one seed drives both stages of N2G2M."""
  out = []
  for b, start in enumerate(range(0, len(labels), batch)):
    n = min(batch, len(labels) - start)
    pad = np.r_[np.arange(start, start + n), np.full(batch - n, start + n - 1)]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), b)
    out.append(np.asarray(sampler(params, jnp.asarray(geometry[pad], jnp.float32),
                                  jnp.asarray(np.asarray(labels)[pad], jnp.int32), key))[:n])
  return np.concatenate(out)


def assemble(geometry: np.ndarray, materials: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
  """The 12-channel omage [N, S, S, 12] in [-1, 1] of geometry [.., 4], materials [.., 5] and normals [.., 3] (None:
  no normals, -1), every channel -1 where the pixel is unoccupied (the loader's convention)."""
  n = geometry.shape[:-1]
  normals = np.full((*n, 3), -1.0, np.float32) if normals is None else normals
  omage = np.concatenate([geometry, normals, materials], axis=-1).astype(np.float32)
  return np.where(geometry[..., 3:4] > 0, omage, -1.0)
