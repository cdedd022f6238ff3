"""diffusers AutoencoderKL tensor names <-> mmjax.models.vae parameters.

The names are diffusers' own with `.{i}.` as `_{i}` and weight -> kernel (convs transposed, linears to the
attention's [C, 1, C] heads layout); GroupNorm weight -> scale. Folders written before diffusers 0.14 name the
mid-block attention query / key / value / proj_attn instead of to_q / to_k / to_v / to_out.0: both are read,
the new names are written.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.vae import AutoencoderKL, AutoencoderKLConfig
from mmjax.weights.key_map import CONV, FLATTEN, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Target

# The deprecated attention names diffusers still renames on load (ModelMixin._convert_deprecated_attention_blocks).
_DEPRECATED_ATTENTION = re.compile(r'(.*\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)')
_RENAMED = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


@dataclasses.dataclass(frozen=True)
class VAEKeyMap(KeyMap):
  """A KeyMap that reads the deprecated mid-block attention names as their current ones."""

  def canonical(self, name: str) -> str:
    if m := _DEPRECATED_ATTENTION.fullmatch(name):
      name = f'{m[1]}.{_RENAMED[m[2]]}.{m[3]}'
    return super().canonical(name)


def _conv(hf: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'kernel'), CONV), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def _norm(hf: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {f'{hf}.weight': Target((*path, 'scale'), SAME), f'{hf}.bias': Target((*path, 'bias'), SAME)}


def _resnet(hf: str, path: tuple[str, ...], shortcut: bool) -> dict[str, Target]:
  targets = {**_norm(f'{hf}.norm1', (*path, 'norm1')), **_conv(f'{hf}.conv1', (*path, 'conv1')),
             **_norm(f'{hf}.norm2', (*path, 'norm2')), **_conv(f'{hf}.conv2', (*path, 'conv2'))}
  if shortcut:
    targets.update(_conv(f'{hf}.conv_shortcut', (*path, 'conv_shortcut')))
  return targets


def _mid_block(hf: str, path: tuple[str, ...], attention: bool) -> dict[str, Target]:
  targets = {**_resnet(f'{hf}.resnets.0', (*path, 'resnets_0'), False),
             **_resnet(f'{hf}.resnets.1', (*path, 'resnets_1'), False)}
  if attention:
    attn, attn_path = f'{hf}.attentions.0', (*path, 'attentions_0')
    targets.update(_norm(f'{attn}.group_norm', (*attn_path, 'group_norm')))
    for hf_name, name in (('to_q', 'q_proj'), ('to_k', 'k_proj'), ('to_v', 'v_proj')):
      targets[f'{attn}.{hf_name}.weight'] = Target((*attn_path, name, 'kernel'), LINEAR)
      targets[f'{attn}.{hf_name}.bias'] = Target((*attn_path, name, 'bias'), FLATTEN)
    targets[f'{attn}.to_out.0.weight'] = Target((*attn_path, 'o_proj', 'kernel'), LINEAR_OUT)
    targets[f'{attn}.to_out.0.bias'] = Target((*attn_path, 'o_proj', 'bias'), SAME)
  return targets


def key_map(config: AutoencoderKLConfig) -> KeyMap:
  """encoder.{conv_in, down_blocks.i.{resnets.j, downsamplers.0.conv}, mid_block, conv_norm_out, conv_out},
  quant_conv, post_quant_conv, decoder.{conv_in, mid_block, up_blocks.i.{resnets.j, upsamplers.0.conv},
  conv_norm_out, conv_out} -> the same paths with `_{i}`."""
  widths, attention = config.block_out_channels, config.mid_block_add_attention
  targets = {**_conv('encoder.conv_in', ('encoder', 'conv_in')),
             **_mid_block('encoder.mid_block', ('encoder', 'mid_block'), attention),
             **_norm('encoder.conv_norm_out', ('encoder', 'conv_norm_out')),
             **_conv('encoder.conv_out', ('encoder', 'conv_out')),
             **_conv('decoder.conv_in', ('decoder', 'conv_in')),
             **_mid_block('decoder.mid_block', ('decoder', 'mid_block'), attention),
             **_norm('decoder.conv_norm_out', ('decoder', 'conv_norm_out')),
             **_conv('decoder.conv_out', ('decoder', 'conv_out'))}
  if config.use_quant_conv:
    targets.update(_conv('quant_conv', ('quant_conv',)))
  if config.use_post_quant_conv:
    targets.update(_conv('post_quant_conv', ('post_quant_conv',)))
  width_in = widths[0]
  for i, width in enumerate(widths):
    hf, path = f'encoder.down_blocks.{i}', ('encoder', f'down_blocks_{i}')
    for j in range(config.layers_per_block):
      targets.update(_resnet(f'{hf}.resnets.{j}', (*path, f'resnets_{j}'), j == 0 and width_in != width))
    if i < len(widths) - 1:
      targets.update(_conv(f'{hf}.downsamplers.0.conv', (*path, 'downsamplers_0', 'conv')))
    width_in = width
  width_in = widths[-1]
  for i, width in enumerate(widths[::-1]):
    hf, path = f'decoder.up_blocks.{i}', ('decoder', f'up_blocks_{i}')
    for j in range(config.layers_per_block + 1):
      targets.update(_resnet(f'{hf}.resnets.{j}', (*path, f'resnets_{j}'), j == 0 and width_in != width))
    if i < len(widths) - 1:
      targets.update(_conv(f'{hf}.upsamplers.0.conv', (*path, 'upsamplers_0', 'conv')))
    width_in = width
  return VAEKeyMap(targets)


def build(config: AutoencoderKLConfig, dtype: DTypeLike) -> AutoencoderKL:
  return AutoencoderKL(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: AutoencoderKLConfig) -> tuple[jax.Array]:
  f = config.downsample_factor
  return (jnp.zeros((1, f, f, config.in_channels), jnp.float32),)


SPEC = ModelSpec(config_cls=AutoencoderKLConfig, build=build, example_inputs=_example_inputs, key_map=key_map)
