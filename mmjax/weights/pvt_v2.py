"""PVTv2 weights: HF `pvt_v2` tensor names <-> mmjax.models.pvt_v2 parameters, and timm / original whai362/PVT
state dicts.

HF: PvtV2Model and PvtV2Backbone save `encoder.layers.{i}...`, PvtV2ForImageClassification (the released
OpenGVLab/pvt_v2_b* folders) `pvt_v2.encoder.layers.{i}...` beside a `classifier` that is read past. Canonical names
carry the `pvt_v2.` prefix (transformers strips it when a PvtV2Model loads them).

timm (`pvt_v2_b*`): patch_embed / stages.{i}.downsample, stages.{i}.blocks.{j}.{norm1, attn.{q, kv, proj, sr, norm},
norm2, mlp.{fc1, dwconv, fc2}}, stages.{i}.norm, head. The original repository's names (patch_embed{n},
block{n}.{j}, norm{n}, mlp.dwconv.dwconv) are renamed to timm's first, as timm's `_checkpoint_filter_fn` does.
timm's fused kv Linear [2E, E] is split into HF's key and value. Those weights were trained with LayerNorm eps 1e-5
in the patch embeddings and reduction norms: load them into `PvtV2Config.variant(name, timm=True)`.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models.pvt_v2 import PvtV2Config, PvtV2Model
from mmjax.weights.key_map import CONV, FLATTEN, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Shapes, Target
from mmjax.weights.state_dict import StateDict, load_state_dict, read_state_dict

PREFIX = 'pvt_v2.'


def _pair(hf: str, path: tuple[str, ...], weight: str, transform) -> dict[str, Target]:
  bias = FLATTEN if transform is LINEAR and path[-1] in ('query', 'key', 'value') else SAME
  return {f'{hf}.weight': Target((*path, weight), transform), f'{hf}.bias': Target((*path, 'bias'), bias)}


def key_map(config: PvtV2Config) -> KeyMap:
  """encoder.layers.{i}.{patch_embedding, blocks.{j}, layer_norm} -> layers_{i}/{patch_embedding, blocks_{j},
  layer_norm}; the q/k/v Linear weights [H * D, E] become kernels [E, H, D], proj [E, H * D] a kernel [H, D, E]."""
  return _key_map(config.depths, tuple(r > 1 for r in config.sr_ratios))


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a PvtV2Model parameter tree of these shapes (the 'pvt_v2' layout: HF names in a bare
  .safetensors file, read through `load_into` / init_from)."""
  stages = sorted({int(m[1]) for path in shapes if (m := re.fullmatch(r'layers_(\d+)', path[0]))})
  depths = tuple(len({path[1] for path in shapes if path[0] == f'layers_{i}' and path[1].startswith('blocks_')})
                 for i in stages)
  reduced = tuple(any(path[:4] == (f'layers_{i}', 'blocks_0', 'attention', 'spatial_reduction') for path in shapes)
                  for i in stages)
  return _key_map(depths, reduced)


def _key_map(depths: tuple[int, ...], reduced: tuple[bool, ...]) -> KeyMap:
  targets: dict[str, Target] = {}
  for i, depth in enumerate(depths):
    hf, stage = f'{PREFIX}encoder.layers.{i}.', f'layers_{i}'
    targets.update(_pair(f'{hf}patch_embedding.proj', (stage, 'patch_embedding', 'proj'), 'kernel', CONV))
    targets.update(_pair(f'{hf}patch_embedding.layer_norm', (stage, 'patch_embedding', 'layer_norm'), 'scale', SAME))
    targets.update(_pair(f'{hf}layer_norm', (stage, 'layer_norm'), 'scale', SAME))
    for j in range(depth):
      hb, block = f'{hf}blocks.{j}.', (stage, f'blocks_{j}')
      for norm in ('layer_norm_1', 'layer_norm_2'):
        targets.update(_pair(f'{hb}{norm}', (*block, norm), 'scale', SAME))
      for name in ('query', 'key', 'value'):
        targets.update(_pair(f'{hb}attention.{name}', (*block, 'attention', name), 'kernel', LINEAR))
      targets.update(_pair(f'{hb}attention.proj', (*block, 'attention', 'proj'), 'kernel', LINEAR_OUT))
      if reduced[i]:
        targets.update(_pair(f'{hb}attention.spatial_reduction', (*block, 'attention', 'spatial_reduction'),
                             'kernel', CONV))
        targets.update(_pair(f'{hb}attention.layer_norm', (*block, 'attention', 'layer_norm'), 'scale', SAME))
      targets.update(_pair(f'{hb}mlp.dense1', (*block, 'mlp', 'dense1'), 'kernel', LINEAR))
      targets.update(_pair(f'{hb}mlp.dwconv.dwconv', (*block, 'mlp', 'dwconv'), 'kernel', CONV))
      targets.update(_pair(f'{hb}mlp.dense2', (*block, 'mlp', 'dense2'), 'kernel', LINEAR))
  return KeyMap(targets, ignore=(rf'{re.escape(PREFIX)}classifier\.(weight|bias)',), optional_prefix=PREFIX)


def build(config: PvtV2Config, dtype: DTypeLike) -> PvtV2Model:
  return PvtV2Model(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: PvtV2Config) -> tuple[jax.Array]:
  return (jnp.zeros((1, 64, 64, config.num_channels), jnp.float32),)


# model_type 'pvt_v2' (PvtV2Model, PvtV2Backbone, PvtV2ForImageClassification folders).
SPEC = ModelSpec(config_cls=PvtV2Config, build=build, example_inputs=_example_inputs, key_map=key_map)

# Original whai362/PVT names -> timm names (timm's _checkpoint_filter_fn).
_ORIGINAL_TO_TIMM = ((r'^patch_embed1\.', 'patch_embed.'),
                     (r'^patch_embed(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.downsample.'),
                     (r'^block(\d)\.(\d+)\.', lambda m: f'stages.{int(m[1]) - 1}.blocks.{m[2]}.'),
                     (r'^norm(\d)\.', lambda m: f'stages.{int(m[1]) - 1}.norm.'), (r'dwconv\.dwconv\.', 'dwconv.'))
# timm name fragments -> HF ones (after the stage prefix).
_TIMM_TO_HF = ((r'^patch_embed\.', 'encoder.layers.0.patch_embedding.'),
               (r'^stages\.(\d+)\.downsample\.', r'encoder.layers.\1.patch_embedding.'),
               (r'^stages\.(\d+)\.', r'encoder.layers.\1.'),
               (r'patch_embedding\.norm\.', 'patch_embedding.layer_norm.'), (r'\.norm1\.', '.layer_norm_1.'),
               (r'\.norm2\.', '.layer_norm_2.'), (r'\.attn\.q\.', '.attention.query.'),
               (r'\.attn\.proj\.', '.attention.proj.'), (r'\.attn\.sr\.', '.attention.spatial_reduction.'),
               (r'\.attn\.norm\.', '.attention.layer_norm.'), (r'\.mlp\.fc1\.', '.mlp.dense1.'),
               (r'\.mlp\.fc2\.', '.mlp.dense2.'), (r'\.mlp\.dwconv\.', '.mlp.dwconv.dwconv.'),
               (r'^(encoder\.layers\.\d+)\.norm\.', r'\1.layer_norm.'))


def timm_to_hf(state: StateDict) -> dict[str, np.ndarray]:
  """A timm (or original whai362/PVT) PVTv2 state dict renamed to canonical HF names; the fused kv Linear is split
  into key and value and the classification head dropped."""
  if 'patch_embed1.proj.weight' in state:
    state = {_rename(name, _ORIGINAL_TO_TIMM): value for name, value in state.items()}
  out = {}
  for name, value in state.items():
    if re.fullmatch(r'head\.(weight|bias)', name):
      continue
    if '.attn.kv.' in name:
      key, val = np.split(np.asarray(value), 2, axis=0)
      base = _rename(name, _TIMM_TO_HF)
      out[PREFIX + base.replace('.attn.kv.', '.attention.key.')] = key
      out[PREFIX + base.replace('.attn.kv.', '.attention.value.')] = val
      continue
    out[PREFIX + _rename(name, _TIMM_TO_HF)] = value
  return out


def _rename(name: str, rules) -> str:
  for pattern, replacement in rules:
    name = re.sub(pattern, replacement, name)
  return name


def load_timm(source: str | os.PathLike | StateDict, config: PvtV2Config, dtype: DTypeLike = jnp.float32
              ) -> tuple[PvtV2Model, dict]:
  """(module, params) from a timm or original PVTv2 state dict: a .pth (torch.load weights_only) or .safetensors
  path, or the dict itself. WeightsMismatchError names every missing, unexpected or misshapen tensor."""
  where = str(source) if isinstance(source, (str, os.PathLike)) else 'timm state dict'
  state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
  module = build(config, dtype)
  abstract = jax.eval_shape(module.init, jax.random.key(0), *_example_inputs(config))['params']
  return module, load_state_dict(abstract, timm_to_hf(state), key_map(config), where)

