"""IP-Adapter+ and IPAdapter-Instruct checkpoints in tencent-ailab's layout <-> mmjax parameters.

A checkpoint holds two state dicts: 'image_proj' (the resampler, named as tencent's `Resampler` /
IPAdapter-Instruct's `ResamplerInstructBigger` name their modules) and 'ip_adapter' ("{i}.to_k_ip.weight" /
"{i}.to_v_ip.weight", i the odd positions of diffusers' ordered `unet.attn_processors`, i.e. the attn2 layers).
A .safetensors file flattens them to 'image_proj.<name>' / 'ip_adapter.<name>'; the released .bin files are
`torch.save({'image_proj': ..., 'ip_adapter': ...})` and are read with torch.load(weights_only=True).

The official loader uses load_state_dict(strict=False), so a checkpoint that does not fit loads silently there;
here the key sets must match exactly and every difference is named.

Resampler names (tencent <- mmjax): latents; proj_in / proj_new_input (instruction) / proj_prompt_input /
proj_out (Linear); norm_out (LayerNorm); per layer i and path P in layers (image), prompt_layers, new_input_layers
(instruction; mmjax: instruct_layers): P.i.0.{norm1, norm2, to_q, to_kv, to_out} <- P_i_attn/...,
P.i.1.{0, 1, 3} <- P_i_ff/{norm, fc1, fc2} (the nn.Sequential LayerNorm, Linear, GELU, Linear).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.typing import DTypeLike
from safetensors.numpy import save_file

from experiments.ipadapter_instruct.resampler import Resampler, ResamplerConfig
from mmjax.models.unet import UNet2DConditionConfig
from mmjax.weights.key_map import SAME, Target
from mmjax.weights.safetensors_io import WeightFiles, read_tensors, stored_tensors
from mmjax.weights.source import WeightsFileError, WeightsMismatchError, preview, unboxed
from mmjax.weights.unet import ip_adapter_key_map, linear_targets, norm_targets

IMAGE_PROJ, IP_ADAPTER = 'image_proj', 'ip_adapter'
# tencent's names of the three attention paths -> ours.
_PATHS = (('layers', 'layers'), ('prompt_layers', 'prompt_layers'), ('new_input_layers', 'instruct_layers'))
_TEXT_PROJECTIONS = ('proj_new_input', 'proj_prompt_input')
_IP_KERNEL = re.compile(r'to_[kv]_ip_\d+')
# The new paths' final projections start at N(0, 1e-4^2) so that a fresh instruct adapter reproduces IP-Adapter+.
_SMALL_INIT_STD = 1e-4
_SMALL_INIT = re.compile(r'(prompt|instruct)_layers_\d+_(ff/fc2|attn/to_out)/kernel')

Params = dict[str, Any]


class AdapterWeights(NamedTuple):
  """image_proj: the Resampler's params; unet_ip: a partial UNet params tree holding only the
  .../attn2/to_k_ip_0/kernel and to_v_ip_0/kernel leaves ([cross_attention_dim, heads, head_dim])."""
  image_proj: Params
  unet_ip: Params


def resampler_key_map(config: ResamplerConfig) -> dict[str, Target]:
  """The resampler's tencent tensor names (in the order of its torch state_dict) -> Targets in its params."""
  targets = {'latents': Target(('latents',), SAME)}
  for name in ('proj_in', *(_TEXT_PROJECTIONS if config.instruct else ()), 'proj_out'):
    targets.update(linear_targets(name, (name,)))
  targets.update(norm_targets('norm_out', ('norm_out',)))
  for tencent, ours in _PATHS[:3 if config.instruct else 1]:
    for i in range(config.depth):
      attn, ff = f'{ours}_{i}_attn', f'{ours}_{i}_ff'
      for norm in ('norm1', 'norm2'):
        targets.update(norm_targets(f'{tencent}.{i}.0.{norm}', (attn, norm)))
      for linear in ('to_q', 'to_kv', 'to_out'):
        targets.update(linear_targets(f'{tencent}.{i}.0.{linear}', (attn, linear), bias=False))
      targets.update(norm_targets(f'{tencent}.{i}.1.0', (ff, 'norm')))
      targets.update(linear_targets(f'{tencent}.{i}.1.1', (ff, 'fc1'), bias=False))
      targets.update(linear_targets(f'{tencent}.{i}.1.3', (ff, 'fc2'), bias=False))
  return targets


def resampler_shapes(config: ResamplerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """The Resampler's parameter shapes by flax path (traced, nothing computed)."""
  image = jax.ShapeDtypeStruct((1, 1, config.embedding_dim), jnp.float32)
  text = (jax.ShapeDtypeStruct((1, 1, config.text_dim), jnp.float32),) * 2 if config.instruct else ()
  tree = jax.eval_shape(Resampler(config).init, jax.random.key(0), image, *text)['params']
  # unboxed, not nn.unbox: no sharding constraint, so this also runs under a mesh (the trainer's report).
  return {path: leaf.shape for path, leaf in flatten_dict(unboxed(tree)).items()}


def _ip_kernel_shape(config: UNet2DConditionConfig, path: tuple[str, ...]) -> tuple[int, int, int]:
  """to_[kv]_ip kernel shape [cross_attention_dim, heads, head_dim] of the attn2 at `path` ('down_blocks_i',
  'up_blocks_i' or 'mid_block' first): the heads of its block's level split that level's channels."""
  levels = len(config.block_out_channels)
  level = levels - 1  # the mid block
  if path[0] != 'mid_block':
    kind, index = path[0].rsplit('_', 1)
    level = int(index) if kind == 'down_blocks' else levels - 1 - int(index)
  heads = config.heads(level)
  return config.cross_attention_dim, heads, config.block_out_channels[level] // heads


class AdapterTensor(NamedTuple):
  """One tensor of an adapter file: the AdapterWeights field it goes to, where in it, and its flax shape."""
  tree: str  # 'image_proj' or 'unet_ip'
  target: Target
  shape: tuple[int, ...]  # the flax parameter's shape


def adapter_key_map(unet_config: UNet2DConditionConfig, resampler_config: ResamplerConfig) -> dict[str, AdapterTensor]:
  """Every tensor name of a flat (safetensors) adapter checkpoint -> where it goes and its flax shape."""
  shapes = resampler_shapes(resampler_config)
  entries = {f'{IMAGE_PROJ}.{name}': AdapterTensor('image_proj', target, shapes[target.path])
             for name, target in resampler_key_map(resampler_config).items()}
  for name, target in ip_adapter_key_map(unet_config).targets.items():
    entries[f'{IP_ADAPTER}.{name}'] = AdapterTensor('unet_ip', target, _ip_kernel_shape(unet_config, target.path))
  return entries


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
  """The flat tensors of a torch.save({'image_proj': ..., 'ip_adapter': ...}) file, as float32 numpy."""
  try:
    import torch
  except ImportError:
    raise WeightsFileError(f'{path} is a torch pickle; reading it needs torch (torch.load(weights_only=True)): '
                           'install torch, or convert the file to safetensors where torch is.') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for a damaged or unsafe pickle
    raise WeightsFileError(f'{path} cannot be read with torch.load(weights_only=True): {e}') from None
  if not isinstance(state, Mapping) or not all(isinstance(part, Mapping) for part in state.values()):
    raise WeightsFileError(f'{path} holds a {type(state).__name__}, not a dict of state dicts '
                           f'({{{IMAGE_PROJ!r}: ..., {IP_ADAPTER!r}: ...}}).')
  flat = {f'{group}.{name}': tensor for group, part in state.items() for name, tensor in part.items()}
  odd = [name for name, tensor in flat.items() if not torch.is_tensor(tensor)]
  if odd:
    raise WeightsFileError(f'{path} holds values that are not tensors at {preview(odd)}.')
  return {name: tensor.detach().to(torch.float32).numpy() for name, tensor in flat.items()}


def _mismatch(path: Path, config: ResamplerConfig, missing: list[str], unexpected: list[str],
              misshapen: list[str]) -> WeightsMismatchError:
  """The error naming every difference between a checkpoint and the adapter it should hold, with the likely cause
  when one kind of adapter was loaded as the other."""
  kind = 'IPAdapter-Instruct' if config.instruct else 'IP-Adapter+'
  problems = [f'{what} {len(names)} keys: {preview(names)}'
              for what, names in (('missing', missing), ('unexpected', unexpected), ('misshapen', misshapen)) if names]
  text_path = re.compile(rf'{IMAGE_PROJ}\.({"|".join(_TEXT_PROJECTIONS)}|prompt_layers|new_input_layers)\..*')
  hint = ''
  if config.instruct and missing and all(text_path.fullmatch(name) for name in missing) and not unexpected:
    hint = (' It is an IP-Adapter+ checkpoint: load it with ResamplerConfig(instruct=False), or start an instruct '
            'adapter from it with instruct_from_plus.')
  elif not config.instruct and unexpected and all(text_path.fullmatch(name) for name in unexpected):
    hint = ' It is an IPAdapter-Instruct checkpoint: load it with ResamplerConfig(instruct=True).'
  return WeightsMismatchError(f'{path} does not hold the {kind} adapter of this UNet and resampler config: '
                              + '; '.join(problems) + '.' + hint)


def load_adapter(path: str | os.PathLike, unet_config: UNet2DConditionConfig, resampler_config: ResamplerConfig,
                 *, dtype: DTypeLike = jnp.float32) -> AdapterWeights:
  """Reads a tencent-layout adapter (.safetensors, or a torch .bin/.pt/.pth through torch.load(weights_only=True))
  whose keys must be exactly those of `unet_config` and `resampler_config`; parameters in `dtype`.

  Raises FileNotFoundError, WeightsFileError (unreadable file) or WeightsMismatchError naming the file and every
  missing, unexpected and misshapen key.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such adapter file.')
  if path.suffix == '.safetensors':
    files = WeightFiles([path])
    stored = {name: entry.shape for name, entry in stored_tensors(files).items()}
    read = lambda names: dict(read_tensors({name: path for name in names}))  # noqa: E731
  elif path.suffix in ('.bin', '.pt', '.pth'):
    tensors = _read_pickle(path)
    stored = {name: tensor.shape for name, tensor in tensors.items()}
    read = lambda names: tensors  # noqa: E731
  else:
    raise WeightsFileError(f'{path}: an adapter file is .safetensors, or a torch .bin/.pt/.pth; not {path.suffix!r}.')
  entries = adapter_key_map(unet_config, resampler_config)
  missing = [name for name in entries if name not in stored]
  unexpected = sorted(name for name in stored if name not in entries)
  misshapen = [f'{name} {list(stored[name])} (expected {list(entry.target.transform.hf_shape(entry.shape))})'
               for name, entry in entries.items()
               if name in stored and tuple(stored[name]) != entry.target.transform.hf_shape(entry.shape)]
  if missing or unexpected or misshapen:
    raise _mismatch(path, resampler_config, missing, unexpected, misshapen)
  tensors = read(list(entries))
  flat: dict[str, dict[tuple[str, ...], jax.Array]] = {'image_proj': {}, 'unet_ip': {}}
  for name, entry in entries.items():
    value = entry.target.transform.to_flax(np.asarray(tensors[name]), entry.shape)
    flat[entry.tree][entry.target.path] = jnp.asarray(value, dtype)
  return AdapterWeights(unflatten_dict(flat['image_proj']), unflatten_dict(flat['unet_ip']))


def save_adapter(path: str | os.PathLike, weights: AdapterWeights, unet_config: UNet2DConditionConfig,
                 resampler_config: ResamplerConfig) -> None:
  """Writes `weights` as a tencent-layout .safetensors file ('image_proj.*', 'ip_adapter.*') that `load_adapter`
  and the official loader (after splitting the prefixes) read; ValueError naming any parameter that the configs'
  adapter does not have, or lacks."""
  path = Path(path)
  if path.suffix != '.safetensors':
    raise ValueError(f'{path}: save_adapter writes safetensors; name the file *.safetensors.')
  entries = adapter_key_map(unet_config, resampler_config)
  flat = {'image_proj': flatten_dict(weights.image_proj), 'unet_ip': flatten_dict(weights.unet_ip)}
  wanted = {(entry.tree, entry.target.path) for entry in entries.values()}
  given = {(tree, p) for tree, leaves in flat.items() for p in leaves}
  if wanted != given:
    name = lambda key: f'{key[0]}/{"/".join(key[1])}'  # noqa: E731
    raise ValueError(f'the adapter weights do not fit the configs: missing {preview(sorted(map(name, wanted - given)))}'
                     f'; unexpected {preview(sorted(map(name, given - wanted)))}.')
  tensors = {}
  for key, entry in entries.items():
    value = np.asarray(flat[entry.tree][entry.target.path])
    if value.shape != entry.shape:
      raise ValueError(f'{entry.tree}/{"/".join(entry.target.path)} has shape {value.shape}; the configs give '
                       f'{entry.shape}.')
    tensors[key] = np.ascontiguousarray(entry.target.transform.to_hf(value))
  path.parent.mkdir(parents=True, exist_ok=True)
  save_file(tensors, path, metadata={'format': 'pt'})


def split_unet(unet_params: Params) -> tuple[Params, Params]:
  """UNet params -> (the params without the IP kernels, the IP kernels: every .../to_[kv]_ip_{j}/kernel)."""
  base, ip = {}, {}
  for path, leaf in flatten_dict(unet_params).items():
    (ip if any(_IP_KERNEL.fullmatch(part) for part in path) else base)[path] = leaf
  return unflatten_dict(base), unflatten_dict(ip)


def merge_unet(unet_params: Params, unet_ip: Params) -> Params:
  """UNet params with the IP kernels of `unet_ip` added (replacing any already there); ValueError naming an IP
  kernel whose attention module the UNet does not have (a UNet of another config)."""
  flat = flatten_dict(unet_params)
  modules = {path[:-2] for path in flat}  # a kernel or bias sits two levels under its module
  for path, leaf in flatten_dict(unet_ip).items():
    if path[:-2] not in modules:
      raise ValueError(f'{"/".join(path)}: the UNet params have no attention module {"/".join(path[:-2])}; the '
                       'adapter belongs to a UNet of another config.')
    flat[path] = leaf
  return unflatten_dict(flat)


def instruct_from_plus(plus: AdapterWeights, instruct_config: ResamplerConfig, seed: int) -> AdapterWeights:
  """IPAdapter-Instruct's starting point: the image path (latents, proj_in, layers_*, proj_out, norm_out) and the
  UNet's IP kernels from an IP-Adapter+ adapter; the prompt and instruction paths drawn with NumPy from `seed`
  (kernels N(0, 1/fan_in), biases 0, LayerNorms identity; no XLA compilation, which a flax init costs).

  The last Linear of every new FF is N(0, 1e-4^2) as in ResamplerInstructBigger; so is every new attention's
  output projection (the official code leaves it at torch's default init), so that each new residual branch starts
  at ~1e-4 of its scale and the adapter reproduces IP-Adapter+ at step 0, as the paper states. ValueError naming
  every parameter of `plus` that is missing, extra or misshapen for the image path of `instruct_config`.
  """
  if not instruct_config.instruct:
    raise ValueError('instruct_from_plus builds an instruct resampler: pass a ResamplerConfig with instruct=True.')
  shapes = resampler_shapes(instruct_config)
  image_path = resampler_shapes(dataclasses.replace(instruct_config, instruct=False))
  given = flatten_dict(plus.image_proj)
  problems = [f'missing {"/".join(p)}' for p in image_path if p not in given]
  problems += [f'unexpected {"/".join(p)}' for p in given if p not in image_path]
  problems += [f'{"/".join(p)} {tuple(np.shape(v))} (expected {image_path[p]})'
               for p, v in given.items() if p in image_path and tuple(np.shape(v)) != image_path[p]]
  if problems:
    raise ValueError(f'the IP-Adapter+ weights do not fit the instruct config: {preview(problems)}.')
  rng = np.random.default_rng(seed)
  fresh = {}
  for path, shape in shapes.items():
    if path in given:
      fresh[path] = jnp.asarray(given[path])
    elif _SMALL_INIT.fullmatch('/'.join(path)):
      fresh[path] = jnp.asarray(rng.normal(0.0, _SMALL_INIT_STD, shape), jnp.float32)
    elif path[-1] == 'kernel':
      fresh[path] = jnp.asarray(rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape), jnp.float32)
    else:
      fresh[path] = jnp.full(shape, 1.0 if path[-1] == 'scale' else 0.0, jnp.float32)
  return AdapterWeights(unflatten_dict(fresh), plus.unet_ip)
