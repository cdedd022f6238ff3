"""IPAdapter-Instruct training through the shared trainer: the adapter learns on a frozen Stable Diffusion 1.5.

The model the loss sees is {'unet' (with the IP kernels to_[kv]_ip_0 in every attn2), 'image_proj' (the
resampler), 'vae', 'text_encoder', 'image_encoder'}. Only the adapter is trained: `params` holds 'image_proj' and
the UNet's IP kernels (the optimiser's regex selects them, config.optim.regex), and the rest of SD is a frozen
subtree (`Experiment.load_frozen`: read from config.pipeline at every start onto the mesh, by the parameters'
logical axis names, so FSDP shards it; in compute_dtype; never optimised, averaged or checkpointed, so a checkpoint
holds the ~90M adapter parameters, not SD's 1.7B).

The loss (the IP-Adapter recipe): the target image -> VAE latent sample x scaling factor; uniform timestep and
Gaussian noise; text states = the text encoder's last hidden state of the prompt; image tokens = the image
encoder's hidden_states[-2] of the (dropped-out) condition; IP tokens = resampler(image tokens, instruction
states, prompt states); ε-MSE of the UNet given [text ‖ IP tokens (scale 1)]. The frozen encoders run under
stop_gradient; everything computes in config.compute_dtype.

Start: variant=smoke -> the tiny random stack of tiny.py (seed config.seed: the generate and evaluate programs
rebuild the same one) with IP kernels copied from each attn2's to_k / to_v (IP-Adapter's init) and a random
resampler. Otherwise config.pipeline (a diffusers SD1.5 folder with image_encoder/) and config.adapter: an
IPAdapter-Instruct file as it is, or an IP-Adapter+ file through checkpoint.instruct_from_plus (the paper's init).
The adapter is read in init_params, not through config.init_from: its tencent layout and the plus -> instruct
init are no registered weight source (a workdir or params checkpoint in config.init_from still overrides it).

At the end of training the adapter is exported as <workdir>/adapter.safetensors in the tencent layout, which
`--mode generate --config.adapter=...`, the evaluate program and the official code load.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict

from experiments.ipadapter_instruct import tiny
from experiments.ipadapter_instruct.checkpoint import (
  AdapterWeights,
  instruct_from_plus,
  load_adapter,
  save_adapter,
  split_unet,
)
from experiments.ipadapter_instruct.data import (
  InstructSource,
  TextAndDropout,
  load_instructions,
  read_records,
  smoke_dataset,
)
from experiments.ipadapter_instruct.evaluate import evaluate_program
from experiments.ipadapter_instruct.generate import generate_program
from experiments.ipadapter_instruct.resampler import Resampler, ResamplerConfig
from mmjax.data import make_pipeline
from mmjax.data.clip_tokenizer import CLIPTokenizer
from mmjax.diffusion import make_betas
from mmjax.diffusion.losses import DiffusionTables, mse_loss
from mmjax.diffusion.parameterization import add_noise
from mmjax.models.clip import CLIPTextModel, CLIPVisionModelWithProjection
from mmjax.models.unet import UNet2DConditionModel
from mmjax.models.vae import AutoencoderKL
from mmjax.train import Context, Experiment
from mmjax.train.sharding import logical_shardings
from mmjax.weights import WeightsMismatchError, from_pretrained
from mmjax.weights.safetensors_source import folder_source
from mmjax.weights.source import unboxed

PROGRAMS = {'generate': generate_program, 'evaluate': evaluate_program}
ADAPTER_FILE = 'adapter.safetensors'  # the export, in the workdir
FROZEN = ('unet', 'vae', 'text_encoder', 'image_encoder')  # SD's parts (the UNet without its IP kernels)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: `boxed` caches per stack
class Stack:
  """The modules (parameters aside) of one IPAdapter-Instruct setup, in the run's compute dtype; unet has one
  extra token set (the IP tokens)."""
  unet: UNet2DConditionModel
  vae: AutoencoderKL
  text_encoder: CLIPTextModel
  image_encoder: CLIPVisionModelWithProjection
  resampler: Resampler
  tokenizer: CLIPTokenizer
  scheduler_config: dict[str, Any]

  @property
  def condition_size(self) -> int:
    return self.image_encoder.config.image_size

  def example_inputs(self) -> dict[str, tuple[jax.Array, ...]]:
    """Inputs of each module's init (shapes only matter)."""
    latent = self.unet.config.downsampling_factor
    text, vision = self.text_encoder.config, self.image_encoder.config
    pixels = jnp.zeros((1, self.condition_size, self.condition_size, 3))
    states = jnp.zeros((1, 1, text.hidden_size))
    return {'unet': (jnp.zeros((1, latent, latent, self.unet.config.in_channels)), jnp.zeros((1,), jnp.int32),
                     jnp.zeros((1, 1, self.unet.config.cross_attention_dim))),
            'vae': (jnp.zeros((1, self.vae.config.downsample_factor, self.vae.config.downsample_factor, 3)),),
            'text_encoder': (jnp.zeros((1, text.max_position_embeddings), jnp.int32),),
            'image_encoder': (pixels,),
            'image_proj': (jnp.zeros((1, 1, vision.hidden_size)), states, states)}

  @functools.cache  # noqa: B019 (a handful of stacks per process)
  def boxed(self, name: str) -> Any:
    """The boxed abstract params (ShapeDtypeStructs with logical axis names) of module `name`."""
    module = self.resampler if name == 'image_proj' else getattr(self, name)
    return jax.eval_shape(module.init, jax.random.key(0), *self.example_inputs()[name])['params']


def _tiny(config: ml_collections.ConfigDict) -> bool:
  """Whether the run uses the tiny random stack (variant=smoke without a pipeline folder)."""
  return config.variant == 'smoke' and not config.pipeline


def _component_config(directory: Path, name: str) -> Any:
  if not (directory / name).is_dir():
    raise FileNotFoundError(f'config.pipeline={directory}: the pipeline has no {name}/ folder (its {name} '
                            'component is missing).')
  return folder_source(directory / name)[2]


def make_stack(config: ml_collections.ConfigDict) -> Stack:
  """The modules of config.pipeline (variant=smoke: the tiny stack), computing in config.compute_dtype."""
  dtype, param_dtype = jnp.dtype(config.compute_dtype), jnp.dtype(config.param_dtype)
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  if _tiny(config):
    unet, vae, text, vision, resampler = tiny.UNET, tiny.VAE, tiny.TEXT, tiny.VISION, tiny.TINY_RESAMPLER
    tokenizer, scheduler = tiny.tiny_tokenizer(), dict(tiny.SCHEDULER)
  else:
    if not config.pipeline:
      raise ValueError('config.pipeline is empty: training needs a diffusers SD1.5 folder with image_encoder/ '
                       '(--config.pipeline=DIR), or variant=smoke.')
    root = Path(config.pipeline)
    unet, vae, text, vision = (_component_config(root, n) for n in FROZEN)
    tokenizer = CLIPTokenizer.from_folder(root / 'tokenizer')
    scheduler_file = root / 'scheduler' / 'scheduler_config.json'
    if not scheduler_file.is_file():
      raise FileNotFoundError(f'config.pipeline={root}: no {scheduler_file.relative_to(root)} (the noise schedule).')
    scheduler = json.loads(scheduler_file.read_text())
    # The official SD1.5 ResamplerInstructBigger sizes (pipeline.sd15_resampler_config, from configs alone).
    width = unet.cross_attention_dim
    resampler = ResamplerConfig(dim=width, output_dim=width, embedding_dim=vision.hidden_size,
                                text_dim=text.hidden_size)
  return Stack(UNet2DConditionModel(unet, extra_token_sets=1, **kw), AutoencoderKL(vae, **kw),
               CLIPTextModel(text, **kw), CLIPVisionModelWithProjection(vision, **kw), Resampler(resampler, **kw),
               tokenizer, scheduler)


def _rebox(boxed: Any, values: Any, dtype: jnp.dtype | None = None) -> Any:
  """`values` (a tree with boxed's paths) in boxed's logical-axis boxes, as `dtype` (default: the box's)."""
  flat = flatten_dict(values)
  return unflatten_dict({path: box.replace_boxed(flat[path].astype(dtype or box.value.dtype))
                         for path, box in flatten_dict(boxed).items()})


def _is_ip(path: tuple[str, ...]) -> bool:
  return any(part.startswith(('to_k_ip_', 'to_v_ip_')) for part in path)


def _unet_parts(boxed_unet: Any) -> tuple[Any, Any]:
  """(base, IP kernels) of a boxed UNet params tree."""
  flat = flatten_dict(boxed_unet)
  return (unflatten_dict({p: v for p, v in flat.items() if not _is_ip(p)}),
          unflatten_dict({p: v for p, v in flat.items() if _is_ip(p)}))


@functools.cache
def _tiny_params(seed: int) -> dict[str, Any]:
  return tiny.tiny_pipeline(seed).params


def _smoke_adapter(stack: Stack, seed: int) -> AdapterWeights:
  """A random resampler (tiny.random_params, drawn from `seed`) and IP kernels copied from every attn2's to_k /
  to_v (IP-Adapter's init)."""
  unet = flatten_dict(_tiny_params(seed)['unet'])
  ip = {}
  for path in flatten_dict(_unet_parts(stack.boxed('unet'))[1]):
    source = path[:-2] + ({'to_k_ip_0': 'k_proj', 'to_v_ip_0': 'v_proj'}[path[-2]], path[-1])
    ip[path] = unet[source]
  image_proj = tiny.random_params(stack.resampler, *stack.example_inputs()['image_proj'], seed=seed + 4)
  return AdapterWeights(image_proj, unflatten_dict(ip))


def _pretrained_adapter(stack: Stack, path: str, seed: int) -> AdapterWeights:
  """config.adapter: an instruct adapter as it is, an IP-Adapter+ one through instruct_from_plus."""
  unet_config, instruct = stack.unet.config, stack.resampler.config
  try:
    return load_adapter(path, unet_config, instruct)
  except WeightsMismatchError as instruct_error:
    try:
      plus = load_adapter(path, unet_config, dataclasses.replace(instruct, instruct=False))
    except WeightsMismatchError:
      raise instruct_error from None
  logging.info('%s is an IP-Adapter+ checkpoint: the prompt and instruction paths start fresh (instruct_from_plus)',
               path)
  return instruct_from_plus(plus, instruct, seed)


def _adapter(config: ml_collections.ConfigDict, stack: Stack) -> AdapterWeights:
  if config.adapter:
    return _pretrained_adapter(stack, config.adapter, config.seed)
  if _tiny(config):
    return _smoke_adapter(stack, config.seed)
  raise ValueError('config.adapter is empty: IPAdapter-Instruct training starts from an IP-Adapter+ (or '
                   'IPAdapter-Instruct) checkpoint, --config.adapter=FILE.')


def _frozen_values(config: ml_collections.ConfigDict, ctx: Context, stack: Stack) -> dict[str, Any]:
  """SD's frozen parts on ctx's mesh, in compute_dtype."""
  dtype = jnp.dtype(config.compute_dtype)
  if _tiny(config):
    boxed = {name: stack.boxed(name) for name in FROZEN}
    boxed['unet'] = _unet_parts(boxed['unet'])[0]
    values = _rebox(boxed, {name: _tiny_params(config.seed)[name] for name in FROZEN}, dtype)
    # Placed leaf by leaf: ctx.place would unbox under the step's abstract mesh, which host arrays cannot meet.
    return jax.device_put(unboxed(values), logical_shardings(values, ctx.mesh, ctx.rules))
  root = Path(config.pipeline)
  frozen = {}
  for name in FROZEN:
    _, frozen[name], _ = from_pretrained(root / name, dtype, mesh=ctx.mesh, rules=ctx.rules)
  return frozen


def _tables(stack: Stack) -> DiffusionTables:
  """The forward process of the scheduler config (diffusers' defaults for the keys it lacks)."""
  s = stack.scheduler_config
  betas = make_betas(s.get('beta_schedule', 'linear'), int(s.get('num_train_timesteps', 1000)),
                     float(s.get('beta_start', 1e-4)), float(s.get('beta_end', 2e-2)))
  return DiffusionTables.from_betas(betas)


def make_loss_fn(stack: Stack):
  """loss_fn(params, batch, rng, step) -> (ε-MSE, {}) over the whole model tree (see the module docstring)."""
  tables = _tables(stack)
  prediction_type = stack.scheduler_config.get('prediction_type', 'epsilon')
  num_timesteps = int(tables.alpha_bar.shape[0])
  dtype = stack.unet.dtype or jnp.float32
  frozen = jax.lax.stop_gradient

  def loss_fn(params, batch, rng, step):
    del step
    k_latent, k_noise, k_time = jax.random.split(rng, 3)
    target = batch['target'].astype(dtype)
    posterior = stack.vae.apply({'params': params['vae']}, target, method='encode')
    latents = frozen(stack.vae.config.scale_latents(posterior.sample(k_latent))).astype(jnp.float32)
    t = jax.random.randint(k_time, (latents.shape[0],), 0, num_timesteps)
    noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
    x_t = add_noise(latents, noise, tables.alpha_bar[t].reshape(-1, 1, 1, 1))
    ids = jnp.concatenate([batch['prompt_ids'], batch['instruction_ids']])  # one text-encoder pass for both
    prompt, instruction = jnp.split(frozen(stack.text_encoder.apply({'params': params['text_encoder']}, ids)), 2)
    image_tokens = frozen(stack.image_encoder.apply({'params': params['image_encoder']},
                                                    batch['condition'].astype(dtype), feature_layer=-2))
    ip_tokens = stack.resampler.apply({'params': params['image_proj']}, image_tokens, instruction, prompt)
    eps = stack.unet.apply({'params': params['unet']}, x_t.astype(dtype), t, prompt, extra_tokens=[(ip_tokens, 1.0)])
    loss = mse_loss(tables, eps.astype(jnp.float32), latents, noise, t, prediction_type=prediction_type)
    return jnp.mean(loss), {}

  return loss_fn


def export_adapter(path: str | os.PathLike, params: Any, stack: Stack, ctx: Context | None = None) -> Path:
  """Writes the adapter of `params` ({'image_proj', 'unet' [with or without SD's base]}) as a tencent-layout
  .safetensors file (checkpoint.save_adapter)."""
  gather = ctx.gather if ctx is not None else np.asarray
  weights = AdapterWeights(jax.tree.map(lambda x: np.asarray(gather(x), np.float32), params['image_proj']),
                           jax.tree.map(lambda x: np.asarray(gather(x), np.float32), split_unet(params['unet'])[1]))
  if jax.process_index() == 0:
    save_adapter(path, weights, stack.unet.config, stack.resampler.config)
  return Path(path)


def _experiment(config: ml_collections.ConfigDict, stack: Stack, train_data: Any, *,
                frozen_in_params: bool = False) -> Experiment:
  """The Experiment over `train_data`. frozen_in_params: SD's parts are (abstract) parameters instead of frozen
  subtrees, for lowering the step on an abstract mesh, where nothing can be loaded (the optimiser's regex still
  trains the adapter only, so the step computes the same)."""

  # Read (and for a plus file, extended) once, on the host: init_params is traced twice (shapes, then values).
  adapter = None if frozen_in_params else jax.tree.map(np.asarray, _adapter(config, stack))

  def init_params(rng):
    if frozen_in_params:  # traced for shapes only (nothing is read)
      inputs = stack.example_inputs()
      return {name: (stack.resampler if name == 'image_proj' else getattr(stack, name)).init(rng, *inputs[name])[
          'params'] for name in ('image_proj', *FROZEN)}
    return {'image_proj': _rebox(stack.boxed('image_proj'), adapter.image_proj),
            'unet': _rebox(_unet_parts(stack.boxed('unet'))[1], adapter.unet_ip)}

  def report(params, ctx: Context) -> dict[str, str]:
    path = export_adapter(os.path.join(ctx.workdir, ADAPTER_FILE), params, stack, ctx)
    logging.info('wrote the trained adapter to %s', path)
    return {'adapter': str(path)}

  return Experiment(init_params=init_params, loss_fn=make_loss_fn(stack), train_data=train_data,
                    report=report,
                    load_frozen=None if frozen_in_params else functools.partial(_frozen_values, config, stack=stack))


def train_records_path(config: ml_collections.ConfigDict) -> Path:
  """config.data.train, or (variant=smoke without one) the generated smoke set's train split."""
  d = config.data
  if d.train:
    return Path(d.train)
  if config.variant != 'smoke':
    raise ValueError('config.data.train is empty: set the JSONL of training records (the layout: '
                     'experiments/ipadapter_instruct/data.py), or use variant=smoke.')
  return smoke_dataset(d.smoke_dir, per_task=d.smoke_per_task, seed=config.seed)[0]


def make_train_data(config: ml_collections.ConfigDict, stack: Stack):
  """The training pipeline: records -> InstructSource -> instruction draw, dropout and tokens, per process."""
  d = config.data
  factor = stack.vae.config.downsample_factor * stack.unet.config.downsampling_factor
  if d.resolution % factor:
    raise ValueError(f'config.data.resolution={d.resolution} must be a multiple of {factor} (the VAE and UNet '
                     'downsampling).')
  source = InstructSource(read_records(train_records_path(config)), resolution=d.resolution,
                          condition_size=stack.condition_size)
  transform = TextAndDropout(stack.tokenizer, load_instructions(d.instructions), drop_text=d.drop_text,
                             drop_image=d.drop_image, drop_both=d.drop_both)
  return make_pipeline(source, global_batch_size=config.batch_size, seed=config.seed, transform=transform)


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  stack = make_stack(config)
  return _experiment(config, stack, make_train_data(config, stack))


def abstract_experiment(config: ml_collections.ConfigDict) -> tuple[Experiment, dict[str, jax.ShapeDtypeStruct]]:
  """The training experiment without data (SD's parts as abstract parameters: see `_experiment`) and the shapes
  of one global batch, for lowering the step ahead of time (mmjax.train.aot)."""
  stack = make_stack(config)
  b, r, s = config.batch_size, config.data.resolution, stack.condition_size
  length = stack.tokenizer.max_length
  batch = {'target': jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
           'condition': jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
           'instruction_ids': jax.ShapeDtypeStruct((b, length), jnp.int32),
           'prompt_ids': jax.ShapeDtypeStruct((b, length), jnp.int32)}
  return _experiment(config, stack, None, frozen_in_params=True), batch
