"""AVESFormer training through the shared trainer (launch.py --mode train|eval), and --mode evaluate (evaluate.py).

The trained parameters are {'backbone', 'decoder'} (AVSModel's); VGGish ('audio') and a ResNet's frozen BatchNorm
statistics ('batch_stats') are frozen subtrees (`Experiment.load_frozen`), read from config.model.audio_weights /
backbone_weights at every start (random with config.seed when empty). With config.model.audio_trainable the audio
net is trained instead (its gradient flows, VGGish(trainable=True)).

Each training example is one video (T frames, data.py's schema); the model runs per frame on [B*T] frames and the
loss (losses.py) averages over the supervised frames (mask_flags) and, under the recipe's scale jitter (augment.py,
training only), over the image pixels (pixel_flags). variant=smoke trains on synthetic sounding-shape
clips (synthetic.py) with tiny widths; the other variants read AVSBench from config.data.root.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from experiments.avesformer import data as avs_data
from experiments.avesformer.augment import train_transform
from experiments.avesformer.evaluate import evaluate_program, evaluate_source, shuffled_audio
from experiments.avesformer.losses import segmentation_loss
from experiments.avesformer.model import AVSConfig, AVSModel, host_random_like, make_backbone
from experiments.avesformer.synthetic import KINDS, SyntheticSource
from mmjax.data import make_pipeline
from mmjax.models.pvt_v2 import PvtV2Config, PvtV2Model
from mmjax.models.vggish import VGGish
from mmjax.train import Context, Experiment

PROGRAMS = {'evaluate': evaluate_program}
FROZEN = ('audio', 'batch_stats')


@dataclasses.dataclass(frozen=True, eq=False)
class Parts:
  """The modules of one config: model (frames + audio embeddings -> logits), audio (log-mel -> embeddings)."""
  config: ml_collections.ConfigDict
  model: AVSModel
  audio: VGGish
  image_size: int
  num_frames: int

  def example(self, batch: int = 1) -> tuple[jax.Array, jax.Array]:
    s = self.image_size
    return jnp.zeros((batch, s, s, 3), jnp.float32), jnp.zeros((batch, 96, 64, 1), jnp.float32)

  @functools.cached_property
  def jit_forward(self):
    """`forward`, jitted once per Parts."""
    return jax.jit(self.forward)

  @functools.cached_property
  def jit_init(self):
    """(rng, names) -> {name: boxed variables} for names among 'backbone', 'decoder', 'batch_stats', 'audio', jitted
    once per Parts and names. The model's random initialisers are traced only when 'backbone' or 'decoder' is asked
    for: the trainer's init and the frozen subtrees (audio, BatchNorm statistics) are separate programs, so no
    program compiles an initialiser it throws away (XLA compiles each initialiser on its own, about 0.5 s of CPU
    apiece)."""
    @functools.partial(jax.jit, static_argnums=1)
    def init(rng, names):
      frames, logmel = self.example()  # made inside: the first call may come from within a trace
      out = {}
      if set(names) & {'backbone', 'decoder', 'batch_stats'}:
        model_vars = self.model.init(rng, frames, jnp.zeros((1, self.model.config.audio_dim)))
        out.update({k: v for k, v in model_vars['params'].items() if k in names})
        if 'batch_stats' in names and 'batch_stats' in model_vars:
          out['batch_stats'] = model_vars['batch_stats']
      if 'audio' in names:
        out['audio'] = self.audio.init(jax.random.fold_in(rng, 1), logmel)['params']
      return out

    return init

  def forward(self, params: Any, frames: jax.Array, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """frames [B, T, H, W, 3], audio [B, T, 96, 64, 1] -> (logits [B, T, H, W, C], mask feature [B, T, h, w])."""
    b, t = frames.shape[:2]
    embeddings = self.audio.apply({'params': params['audio']}, audio.reshape((b * t,) + audio.shape[2:]))
    variables = {'params': {k: params[k] for k in ('backbone', 'decoder')}}
    if 'batch_stats' in params:
      variables['batch_stats'] = params['batch_stats']
    logits, aux = self.model.apply(variables, frames.reshape((b * t,) + frames.shape[2:]), embeddings)
    feature = aux['mask_feature']
    return logits.reshape((b, t) + logits.shape[1:]), feature.reshape((b, t) + feature.shape[1:])


def _timm_weights(config: ml_collections.ConfigDict) -> bool:
  path = config.model.backbone_weights
  return bool(path) and config.model.backbone.startswith('pvt_b') and not Path(path).is_dir()


def make_parts(config: ml_collections.ConfigDict) -> Parts:
  m = config.model
  fields = {f.name for f in dataclasses.fields(AVSConfig)}
  avs = AVSConfig(**{k: m[k] for k in fields if k in m})
  backbone = make_backbone(m.backbone)
  if _timm_weights(config):  # timm / original PVT weights use LayerNorm eps 1e-5 in the embeddings
    backbone = PvtV2Model(PvtV2Config.variant(m.backbone[4:], timm=True))
  audio = VGGish(trainable=m.audio_trainable, conv_widths=tuple(m.audio_conv_widths),
                 fc_widths=tuple(m.audio_fc_widths))
  frames = avs_data.AVSS_FRAMES if config.task == 'avss' else avs_data.V1_FRAMES
  return Parts(config, AVSModel(avs, backbone), audio, config.data.image_size, frames)


def _rebox(boxed: Any, values: Any, where: str) -> Any:
  flat_values, flat_boxed = flatten_dict(values), flatten_dict(boxed)
  if set(flat_values) != set(flat_boxed):
    missing = sorted('/'.join(p) for p in set(flat_boxed) - set(flat_values))[:5]
    extra = sorted('/'.join(p) for p in set(flat_values) - set(flat_boxed))[:5]
    raise ValueError(f'{where}: the weights do not fit the model (missing {missing}, unexpected {extra})')
  def fill(box, value):
    if isinstance(box, nn.meta.AxisMetadata):
      return box.replace_boxed(jnp.asarray(value, box.value.dtype))
    return jnp.asarray(value, box.dtype)

  return unflatten_dict({p: fill(box, flat_values[p]) for p, box in flat_boxed.items()})


def _backbone_weights(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'params': ..., maybe 'batch_stats': ...} of the backbone from config.model.backbone_weights."""
  m, path = config.model, config.model.backbone_weights
  if m.backbone == 'r50':
    from mmjax.weights.resnet import load_torchvision
    return load_torchvision(path)[1]
  if not m.backbone.startswith('pvt_b'):
    raise ValueError(f'config.model.backbone_weights: backbone {m.backbone!r} takes no pretrained weights')
  if Path(path).is_dir():
    from mmjax.weights import from_pretrained
    params = from_pretrained(path)[1]
    while 'layers_0' not in params and len(params) == 1:  # an HF head model nests the PvtV2Model
      params = next(iter(params.values()))
    return {'params': params}
  from mmjax.weights.pvt_v2 import load_timm
  return {'params': load_timm(path, PvtV2Config.variant(m.backbone[4:], timm=True))[1]}


def initial_variables(parts: Parts, seed: int, names: tuple[str, ...] = ('backbone', 'decoder', 'audio',
                                                                          'batch_stats')) -> dict[str, Any]:
  """Boxed subtrees `names` of {'backbone', 'decoder', 'audio', 'batch_stats' (a ResNet's)}: random, with the
  configured weights loaded."""
  config = parts.config
  # rbg keys: XLA compiles a threefry init of this many small parameters several times slower on CPU
  key, names = jax.random.key(seed, impl='rbg'), tuple(sorted(names))
  if config.model.init == 'host':  # generic weights drawn by numpy into the initialisers' boxes: nothing compiled
    shapes = jax.eval_shape(parts.jit_init, key, names)
    out = _rebox(shapes, host_random_like(shapes, seed), 'config.model.init=host')
  elif config.model.init == 'flax':
    out = dict(parts.jit_init(key, names))
  else:
    raise ValueError(f"config.model.init must be 'flax' or 'host', got {config.model.init!r}")
  loaded = _backbone_weights(config) if config.model.backbone_weights and {'backbone', 'batch_stats'} & set(out) else {}
  if 'backbone' in out and loaded:
    out['backbone'] = _rebox(out['backbone'], loaded['params'], config.model.backbone_weights)
  if 'batch_stats' in out and 'batch_stats' in loaded:
    out['batch_stats'] = {'backbone': _rebox(out['batch_stats']['backbone'], loaded['batch_stats'],
                                             config.model.backbone_weights)}
  if 'audio' in out and config.model.audio_weights:
    from mmjax.weights.vggish import load_vggish
    weights = load_vggish(config.model.audio_weights, conv_widths=parts.audio.conv_widths,
                          fc_widths=parts.audio.fc_widths)[1]
    out['audio'] = _rebox(out['audio'], weights, config.model.audio_weights)
  return out


def frozen_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(k for k in FROZEN if not (k == 'audio' and config.model.audio_trainable))


class SemanticSynthetic:
  """The synthetic clips as an AVSS-style set: mask ids 1 + the sounding kind's index in KINDS, background 0."""

  def __init__(self, source: SyntheticSource):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = dict(self.source[index])
    clip = self.source.clips[index]
    example['masks'] = (example['masks'] * (1 + KINDS.index(clip.kinds[clip.source]))).astype(np.int32)
    return example


def make_source(config: ml_collections.ConfigDict, split: str) -> Any:
  """The random-access source of `split` (synthetic under variant=smoke; AVSBench from config.data.root)."""
  d = config.data
  if config.variant == 'smoke':
    count = {'train': d.synthetic_train, 'val': d.synthetic_eval, 'test': d.synthetic_eval}[split]
    source = SyntheticSource(count, seed=config.seed * 1000 + ('train', 'val', 'test').index(split),
                             size=d.image_size, num_shapes=d.synthetic_shapes, noise=d.synthetic_noise)
    return SemanticSynthetic(source) if config.task == 'avss' else source
  if not d.root:
    raise ValueError('config.data.root is empty: set it to the AVSBench folder of the task (Single-source/, '
                     'Multi-sources/ or the AVSBench-semantic folder), or use variant=smoke')
  if config.task == 's4':
    return avs_data.S4Source(d.root, split, audio=d.audio)
  if config.task == 'ms3':
    return avs_data.MS3Source(d.root, split, audio=d.audio)
  return avs_data.AVSSSource(d.root, split, audio=d.audio, image_size=d.image_size)


def make_loss_fn(parts: Parts):
  config = parts.config
  weights = dict(config.loss)

  def loss_fn(params, batch, rng, step):
    del rng, step
    logits, feature = parts.forward(params, batch['frames'], batch['audio'])
    n = logits.shape[0] * logits.shape[1]
    flat = lambda x: x.reshape((n,) + x.shape[2:])  # noqa: E731
    pixels = flat(batch['pixel_flags']) if 'pixel_flags' in batch else None  # scale jitter's padding (augment.py)
    return segmentation_loss(flat(logits), flat(feature), flat(batch['masks']), flat(batch['mask_flags']), weights,
                             pixels)

  return loss_fn


def _experiment(config: ml_collections.ConfigDict, train_data: Any, eval_src: Any) -> Experiment:
  parts = make_parts(config)
  frozen = frozen_names(config)

  trained = tuple(k for k in ('backbone', 'decoder', 'audio') if k not in frozen)

  def init_params(rng):
    del rng  # the seed is config.seed, shared with the frozen subtrees
    return initial_variables(parts, config.seed, trained)

  def load_frozen(ctx: Context):
    return ctx.place(initial_variables(parts, config.seed, frozen))

  def evaluate(params, ctx: Context):
    del ctx
    params = jax.device_get(params)  # evaluated on the default device, batch 4 (official protocol)
    out = evaluate_source(parts, params, eval_src)
    if config.variant == 'smoke':
      shuffled = evaluate_source(parts, params, shuffled_audio(eval_src, config.eval.shuffle_seed))
      out.update({f'shuffled_audio_{k}': v for k, v in shuffled.items()})
    return out

  return Experiment(init_params=init_params, loss_fn=make_loss_fn(parts), train_data=train_data,
                    evaluators={config.eval.split: evaluate} if eval_src is not None else {},
                    load_frozen=load_frozen)


def make_train_pipeline(config: ml_collections.ConfigDict) -> Any:
  """The training batches: the train split, shuffled and repeated, through the recipe's scale jitter (augment.py;
  config.data.train_scales / train_hflip). Evaluation reads its split without it."""
  d = config.data
  return make_pipeline(make_source(config, 'train'), global_batch_size=config.batch_size, seed=config.seed,
                       transform=train_transform(d.train_scales, d.train_hflip, d.image_size))


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  train = make_train_pipeline(config)
  return _experiment(config, train, make_source(config, config.eval.split))


def unboxed_frozen(config: ml_collections.ConfigDict, parts: Parts) -> dict[str, Any]:
  """The frozen subtrees as plain arrays on the default device (for programs outside the trainer)."""
  return nn.meta.unbox(initial_variables(parts, config.seed, frozen_names(config)))
