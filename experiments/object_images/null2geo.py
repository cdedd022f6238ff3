"""Stage 1, null2geo: a class-conditional DiT on the 4 geometry channels of 64² omages, and the config's data.

The DiT predicts ε for a noised geometry omage x_t [B, 64, 64, 4] in [-1, 1] at a training timestep t [B] and an
ABO label [B] (63 = the null label, to which labels are dropped with model.class_dropout while training); with
learned sigma it also outputs the variance interpolation v [B, 64, 64, 4]. Trained with MSE(ε) + VB
(`mmjax.diffusion.class_conditional`). `make_source(config)` builds the training data of config.data.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments.object_images.data import ABO_CLASSES, GlbFolderSource, OmageH5Source, OmageNpzSource
from experiments.object_images.smoke import smoke_set
from mmjax.data import make_pipeline
from mmjax.diffusion import class_conditional
from mmjax.models.dit import DiT, DiTConfig, dit_for_training, train_flops_per_example
from mmjax.train import Experiment

GEOMETRY_CHANNELS = 4  # position xyz, occupancy
NUM_CLASSES = len(ABO_CLASSES)  # the class table has one more row: the null label
SOURCES = ('h5', 'npz', 'glb', 'smoke')


def dit_config(config: ml_collections.ConfigDict) -> DiTConfig:
  m = config.model
  if m.width % m.num_heads:
    raise ValueError(f'config.model.width={m.width} must be a multiple of config.model.num_heads={m.num_heads}')
  return DiTConfig(num_attention_heads=m.num_heads, attention_head_dim=m.width // m.num_heads,
                   in_channels=GEOMETRY_CHANNELS,
                   out_channels=2 * GEOMETRY_CHANNELS if m.learn_sigma else GEOMETRY_CHANNELS,
                   num_layers=m.depth, sample_size=config.data.size, patch_size=m.patch,
                   num_embeds_ada_norm=NUM_CLASSES, norm_eps=1e-6, downscale_freq_shift=m.downscale_freq_shift)


def make_model(config: ml_collections.ConfigDict) -> DiT:
  return dit_for_training(dit_config(config), class_dropout=config.model.class_dropout,
                          remat_policy=config.remat_policy, compute_dtype=config.compute_dtype,
                          param_dtype=config.param_dtype)


def init_inputs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sample, timestep, labels) of batch 1 for model.init / jax.eval_shape."""
  size = config.data.size
  return (jnp.zeros((1, size, size, GEOMETRY_CHANNELS), jnp.float32), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1,), jnp.int32))


def make_source(config: ml_collections.ConfigDict, channels: int = GEOMETRY_CHANNELS) -> Any:
  """The training source of config.data (examples {'omage': float32 [64, 64, channels] in [-1, 1], 'label'}):
  a data.py source, or for data.source='smoke' the list of the smoke set's examples.

  Raises:
    ValueError: an unknown data.source, or data.path unset for a source that reads one (naming the key).
  """
  d = config.data
  categories = tuple(d.categories) or None
  if d.source not in SOURCES:
    raise ValueError(f'config.data.source={d.source!r} is not one of {SOURCES}')
  if d.source == 'smoke':
    root, index = smoke_set(d.smoke_dir, num_shapes=d.smoke_shapes, resolution=d.smoke_resolution, size=d.size,
                            margin=d.smoke_margin, seed=config.seed)
    files = OmageNpzSource(root, index, split='all', size=d.size, channels=channels)
    # Held in memory (a few MB): reading npz files from Grain's threads trips CPython 3.11.7's non-thread-safe
    # ast.literal_eval in np.load's header parse ("AST constructor recursion depth mismatch").
    return [files[i] for i in range(len(files))]
  if not d.path:
    what = {'h5': 'the released df_p64_m02_res64.h5', 'npz': 'the root of the npz files',
            'glb': 'a folder of .glb files'}[d.source]
    raise ValueError(f'config.data.path is empty: data.source={d.source!r} reads {what} '
                     f"(--config.data.path=...), or use variant=smoke's generated primitives")
  if d.source == 'h5':
    return OmageH5Source(d.path, d.meta_path or None, split=d.split, channels=channels, categories=categories)
  if d.source == 'npz':
    if not d.meta_path:
      raise ValueError("config.data.meta_path is empty: data.source='npz' needs the meta json (or encode's "
                       'index.json) listing the shapes')
    return OmageNpzSource(d.path, d.meta_path, layout=d.layout, split=d.split, size=d.size, channels=channels,
                          categories=categories)
  if categories is not None:
    raise ValueError("config.data.categories: data.source='glb' cannot select categories; encode the folder "
                     '(--mode encode) and train on its npz files')
  return GlbFolderSource(d.path, meta_path=d.meta_path or None, split=d.split, size=d.size,
                         resolution=config.encode.resolution, max_patches=config.encode.max_patches,
                         margin=config.encode.margin, channels=channels, label_column=d.label_column)


def source_labels(source: Any) -> list[int]:
  """The label of every example of a data.py source (without reading its omages) or of a list of examples."""
  if isinstance(source, list):
    return [int(example['label']) for example in source]
  if isinstance(source, GlbFolderSource):
    return [label for _, label in source.samples]
  return [row['cate_id'] for _, _, row in source.rows]


def flops_per_example(config: ml_collections.ConfigDict) -> float:
  """Matmul FLOPs of one training example, forward + backward."""
  return train_flops_per_example(dit_config(config))


def experiment(config: ml_collections.ConfigDict, train_data: Any) -> Experiment:
  """The trainer's Experiment over `train_data` (batches {'omage': [B, 64, 64, 4], 'label': [B]})."""
  model = make_model(config)
  tables = class_conditional.make_tables(config.diffusion)

  def init_params(rng):
    return model.init(rng, *init_inputs(config))['params']

  def loss_fn(params, batch, rng, step):
    del step
    loss, parts = class_conditional.class_conditional_loss(
        model, tables, params, batch['omage'], batch['label'], rng, learn_sigma=config.model.learn_sigma,
        prediction_type=config.diffusion.prediction_type)
    return loss.mean(), {k: v.mean() for k, v in parts.items()}

  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=train_data,
                    flops_per_example=flops_per_example(config))


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  source = make_source(config)
  return experiment(config, make_pipeline(source, global_batch_size=config.batch_size, seed=config.seed))
