"""diffusers DiTTransformer2DModel tensor names <-> mmjax.models.dit parameters.

The same names serve a Transformer2DModel whose config is a DiT (the released facebook/DiT-* checkpoints). The
2-D sin-cos position table is a non-persistent buffer in diffusers, computed rather than stored on both sides.
"""
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.dit import DiT, DiTConfig
from mmjax.weights.key_map import CONV, FLATTEN, LINEAR, LINEAR_OUT, SAME, KeyMap, ModelSpec, Target


def _linear(hf: str, path: tuple[str, ...], bias: bool = True) -> dict[str, Target]:
  targets = {f'{hf}.weight': Target((*path, 'kernel'), LINEAR)}
  if bias:
    targets[f'{hf}.bias'] = Target((*path, 'bias'), SAME)
  return targets


def key_map(config: DiTConfig) -> KeyMap:
  """pos_embed.proj / transformer_blocks.{i}.{norm1, attn1, norm3, ff} / proj_out_{1,2} -> patch_embed /
  layers_{i}.{norm1, attn1 (q,k,v,o_proj), norm3, ff (fc1, fc2)} / proj_out_{1,2}."""
  targets = {'pos_embed.proj.weight': Target(('patch_embed', 'kernel'), CONV),
             'pos_embed.proj.bias': Target(('patch_embed', 'bias'), SAME),
             **_linear('proj_out_1', ('proj_out_1',)), **_linear('proj_out_2', ('proj_out_2',))}
  for i in range(config.num_layers):
    hf, layer = f'transformer_blocks.{i}.', f'layers_{i}'
    emb = (layer, 'norm1', 'emb')
    targets.update(_linear(f'{hf}norm1.emb.timestep_embedder.linear_1', (*emb, 'linear_1')))
    targets.update(_linear(f'{hf}norm1.emb.timestep_embedder.linear_2', (*emb, 'linear_2')))
    targets[f'{hf}norm1.emb.class_embedder.embedding_table.weight'] = Target((*emb, 'embedding_table'), SAME)
    targets.update(_linear(f'{hf}norm1.linear', (layer, 'norm1', 'linear')))
    for hf_name, name in (('to_q', 'q_proj'), ('to_k', 'k_proj'), ('to_v', 'v_proj')):
      targets[f'{hf}attn1.{hf_name}.weight'] = Target((layer, 'attn1', name, 'kernel'), LINEAR)
      if config.attention_bias:
        targets[f'{hf}attn1.{hf_name}.bias'] = Target((layer, 'attn1', name, 'bias'), FLATTEN)
    targets[f'{hf}attn1.to_out.0.weight'] = Target((layer, 'attn1', 'o_proj', 'kernel'), LINEAR_OUT)
    targets[f'{hf}attn1.to_out.0.bias'] = Target((layer, 'attn1', 'o_proj', 'bias'), SAME)
    if config.norm_elementwise_affine:
      targets[f'{hf}norm3.weight'] = Target((layer, 'norm3', 'scale'), SAME)
      targets[f'{hf}norm3.bias'] = Target((layer, 'norm3', 'bias'), SAME)
    targets.update(_linear(f'{hf}ff.net.0.proj', (layer, 'ff', 'fc1')))
    targets.update(_linear(f'{hf}ff.net.2', (layer, 'ff', 'fc2')))
  return KeyMap(targets)


def build(config: DiTConfig, dtype: DTypeLike) -> DiT:
  return DiT(config, dtype=dtype, param_dtype=dtype)


def _example_inputs(config: DiTConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  size = config.sample_size
  return (jnp.zeros((1, size, size, config.in_channels), jnp.float32), jnp.zeros((1,), jnp.int32),
          jnp.zeros((1,), jnp.int32))


SPEC = ModelSpec(config_cls=DiTConfig, build=build, example_inputs=_example_inputs, key_map=key_map)
