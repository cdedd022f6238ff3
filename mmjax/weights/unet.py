"""diffusers UNet2DConditionModel tensor names <-> mmjax.models.unet parameters, and key maps of the shared blocks
(GroupNorm, Conv2d, ResnetBlock2D of mmjax.models.diffusers_blocks) for the VAE's key map to reuse.

A name maps to a path by turning '.' into '_' after a list index (down_blocks.0 -> down_blocks_0) and renaming the
attention projections (to_q -> q_proj, to_out.0 -> o_proj) and the GEGLU layers (ff.net.0.proj -> ff/proj,
ff.net.2 -> ff/out). proj_in / proj_out are 1x1 convs [C_out, C_in, 1, 1] (SD1.x) or Linear layers
(use_linear_projection: SD2.x, SDXL); both are Dense kernels here.

`attn_processor_paths` lists the attention modules in the order of diffusers' `unet.attn_processors`, whose
indices number IP-Adapter checkpoints ("{i}.to_k_ip.weight", odd i = attn2); `ip_adapter_key_map` maps those
tensors to the attn2/to_{k,v}_ip_{j} kernels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.weights.key_map import CONV, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Target, Transform

Path = tuple[str, ...]


class Conv1x1(Transform):
  """torch 1x1 Conv2d weight [out, in, 1, 1] <-> Dense kernel [in, out]."""

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[0], 1, 1)

  def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return x[:, :, 0, 0].T

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T[:, :, None, None]


CONV_1X1 = Conv1x1()


def linear_targets(hf: str, path: Path, transform: Transform = LINEAR, bias: bool = True) -> dict[str, Target]:
  """{hf}.weight (+ {hf}.bias) -> path/kernel (+ path/bias)."""
  targets = {f'{hf}.weight': Target((*path, 'kernel'), transform)}
  if bias:
    targets[f'{hf}.bias'] = Target((*path, 'bias'), SAME)
  return targets


def norm_targets(hf: str, path: Path) -> dict[str, Target]:
  """A GroupNorm / LayerNorm: {hf}.weight, {hf}.bias -> path/scale, path/bias."""
  return {f'{hf}.weight': Target((*path, 'scale'), SAME), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def conv_targets(hf: str, path: Path) -> dict[str, Target]:
  """A Conv2d: {hf}.weight [out, in, kh, kw], {hf}.bias -> path/kernel [kh, kw, in, out], path/bias."""
  return linear_targets(hf, path, CONV)


def resnet_targets(hf: str, path: Path, in_channels: int, out_channels: int, time_embedding: bool) -> dict[str, Target]:
  """A ResnetBlock2D (mmjax.models.diffusers_blocks): norm1, conv1, [time_emb_proj], norm2, conv2, and
  conv_shortcut when in_channels != out_channels."""
  targets = {**norm_targets(f'{hf}.norm1', (*path, 'norm1')), **conv_targets(f'{hf}.conv1', (*path, 'conv1')),
             **norm_targets(f'{hf}.norm2', (*path, 'norm2')), **conv_targets(f'{hf}.conv2', (*path, 'conv2'))}
  if time_embedding:
    targets.update(linear_targets(f'{hf}.time_emb_proj', (*path, 'time_emb_proj')))
  if in_channels != out_channels:
    targets.update(conv_targets(f'{hf}.conv_shortcut', (*path, 'conv_shortcut')))
  return targets


def _attention_targets(hf: str, path: Path) -> dict[str, Target]:
  targets = {f'{hf}.{name}.weight': Target((*path, proj, 'kernel'), LINEAR)
             for name, proj in (('to_q', 'q_proj'), ('to_k', 'k_proj'), ('to_v', 'v_proj'))}
  targets[f'{hf}.to_out.0.weight'] = Target((*path, 'o_proj', 'kernel'), LINEAR_OUT)
  targets[f'{hf}.to_out.0.bias'] = Target((*path, 'o_proj', 'bias'), SAME)
  return targets


def _transformer_targets(hf: str, path: Path, layers: int, config: UNet2DConditionConfig) -> dict[str, Target]:
  proj = LINEAR if config.use_linear_projection else CONV_1X1
  targets = {**norm_targets(f'{hf}.norm', (*path, 'norm')), **linear_targets(f'{hf}.proj_in', (*path, 'proj_in'), proj),
             **linear_targets(f'{hf}.proj_out', (*path, 'proj_out'), proj)}
  for k in range(layers):
    block_hf, block = f'{hf}.transformer_blocks.{k}', (*path, f'transformer_blocks_{k}')
    for name in ('norm1', 'norm2', 'norm3'):
      targets.update(norm_targets(f'{block_hf}.{name}', (*block, name)))
    targets.update(_attention_targets(f'{block_hf}.attn1', (*block, 'attn1')))
    targets.update(_attention_targets(f'{block_hf}.attn2', (*block, 'attn2')))
    targets.update(linear_targets(f'{block_hf}.ff.net.0.proj', (*block, 'ff', 'proj')))
    targets.update(linear_targets(f'{block_hf}.ff.net.2', (*block, 'ff', 'out')))
  return targets


class _Block(NamedTuple):
  """A down, up or mid block as diffusers builds it."""
  hf: str  # 'down_blocks.0', 'up_blocks.1', 'mid_block'
  out: int  # output channels
  resnet_inputs: list[int]  # input channels of each resnet
  heads: int | None  # None: no spatial transformers
  transformer_layers: int
  attentions: int  # spatial transformers
  sampler: str | None  # 'downsamplers', 'upsamplers' or None

  @property
  def path(self) -> Path:
    return (self.hf.replace('.', '_'),)


def _blocks(config: UNet2DConditionConfig) -> list[_Block]:
  """The blocks in diffusers' module order: down blocks, up blocks, then the mid block."""
  channels, n, layers = config.block_out_channels, len(config.block_out_channels), config.layers_per_block
  blocks, skips = [], [channels[0]]
  for i, kind in enumerate(config.down_block_types):
    heads = config.heads(i) if kind.startswith('CrossAttn') else None
    blocks.append(_Block(f'down_blocks.{i}', channels[i], [channels[max(i - 1, 0)]] + [channels[i]] * (layers - 1),
                         heads, config.transformer_layers(i), layers if heads else 0,
                         'downsamplers' if i < n - 1 else None))
    skips += [channels[i]] * (layers + (i < n - 1))
  previous = channels[-1]
  for i, kind in enumerate(config.up_block_types):
    out, inputs = channels[n - 1 - i], []
    for _ in range(layers + 1):
      inputs.append(previous + skips.pop())
      previous = out
    heads = config.heads(n - 1 - i) if kind.startswith('CrossAttn') else None
    blocks.append(_Block(f'up_blocks.{i}', out, inputs, heads, config.transformer_layers(n - 1 - i),
                         layers + 1 if heads else 0, 'upsamplers' if i < n - 1 else None))
  blocks.append(_Block('mid_block', channels[-1], [channels[-1]] * 2, config.heads(n - 1),
                       config.transformer_layers(n - 1), 1, None))
  return blocks


def key_map(config: UNet2DConditionConfig) -> KeyMap:
  """The UNet's diffusers tensor names (see the module docstring)."""
  targets = {**conv_targets('conv_in', ('conv_in',)), **conv_targets('conv_out', ('conv_out',)),
             **norm_targets('conv_norm_out', ('conv_norm_out',))}
  for name in ('linear_1', 'linear_2'):
    targets.update(linear_targets(f'time_embedding.{name}', ('time_embedding', name)))
  for block in _blocks(config):
    for j, in_channels in enumerate(block.resnet_inputs):
      targets.update(resnet_targets(f'{block.hf}.resnets.{j}', (*block.path, f'resnets_{j}'), in_channels, block.out,
                                    True))
    for j in range(block.attentions):
      targets.update(_transformer_targets(f'{block.hf}.attentions.{j}', (*block.path, f'attentions_{j}'),
                                          block.transformer_layers, config))
    if block.sampler:
      targets.update(conv_targets(f'{block.hf}.{block.sampler}.0.conv', (*block.path, f'{block.sampler}_0', 'conv')))
  return KeyMap(targets)


def attn_processor_paths(config: UNet2DConditionConfig) -> list[tuple[str, Path]]:
  """(diffusers attn_processors key, flax path of that attention module) in diffusers' order: the IP-Adapter
  checkpoint index i of "{i}.to_k_ip.weight" is a position in this list (attn1 at even i, attn2 at odd i), and its
  weights go to path/to_k_ip_{j}/kernel (LINEAR) for token set j."""
  out = []
  for block in _blocks(config):
    for j in range(block.attentions):
      for k in range(block.transformer_layers):
        for attn in ('attn1', 'attn2'):
          name = f'{block.hf}.attentions.{j}.transformer_blocks.{k}.{attn}'
          out.append((f'{name}.processor', (*block.path, f'attentions_{j}', f'transformer_blocks_{k}', attn)))
  return out


def ip_adapter_key_map(config: UNet2DConditionConfig, token_set: int = 0) -> KeyMap:
  """The decoupled cross-attention weights of an IP-Adapter checkpoint's 'ip_adapter' state dict
  ("{i}.to_k_ip.weight" / "{i}.to_v_ip.weight", i odd: the attn2 processors) -> the UNet's
  attn2/to_{k,v}_ip_{token_set} kernels (a model built with extra_token_sets > token_set)."""
  targets = {}
  for i, (_, path) in enumerate(attn_processor_paths(config)):
    if path[-1] == 'attn2':
      for which in ('k', 'v'):
        targets[f'{i}.to_{which}_ip.weight'] = Target((*path, f'to_{which}_ip_{token_set}', 'kernel'), LINEAR)
  return KeyMap(targets)


def build(config: UNet2DConditionConfig, dtype: DTypeLike) -> UNet2DConditionModel:
  return UNet2DConditionModel(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: UNet2DConditionConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  size = config.downsampling_factor
  return (jnp.zeros((1, size, size, config.in_channels), jnp.float32), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1, 1, config.cross_attention_dim), jnp.float32))


SPEC = ModelSpec(config_cls=UNet2DConditionConfig, build=build, example_inputs=_example_inputs, key_map=key_map)
