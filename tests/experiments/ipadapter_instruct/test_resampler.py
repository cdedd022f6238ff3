"""The resamplers against torch, loaded through the tencent checkpoint layout: the IP-Adapter+ image path against
diffusers' IPAdapterPlusImageProjection (moved across with the spec's tencent <-> diffusers map, which also checks
our tencent names), and ResamplerInstructBigger's prompt and instruction paths against a torch re-derivation of
the official module (whose state_dict names are the checkpoint's), from .safetensors and from .bin."""
from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from safetensors.torch import load_file, save_file

from experiments.ipadapter_instruct.checkpoint import adapter_key_map, load_adapter, resampler_key_map, save_adapter
from experiments.ipadapter_instruct.resampler import Resampler, ResamplerConfig
from experiments.ipadapter_instruct.tiny import UNET
from tests.hf_models import perturb
from tests.numerics import assert_close_torch, assert_same_program

# The task's tiny IP-Adapter+ resampler (diffusers' names: embed_dims 32, output_dims 32, hidden_dims 32, depth 2,
# dim_head 8, heads 4, num_queries 4, ffn_ratio 4).
PLUS = ResamplerConfig(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=32, output_dim=32,
                       ff_mult=4, instruct=False)
# Every input width differs (image 24, text 16, output 40) so that a swapped projection cannot load.
INSTRUCT = ResamplerConfig(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=24, output_dim=40,
                           ff_mult=4, instruct=True, text_dim=16)


def tencent_from_diffusers(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
  """IPAdapterPlusImageProjection's state dict -> tencent Resampler names (the spec's map: ln0/ln1 <-> norm1/norm2,
  to_k ‖ to_v <-> to_kv, ff.{0, 1.net.0.proj, 1.net.2} <-> 1.{0, 1, 3}); every diffusers tensor is used once."""
  names = {name: name for name in ('latents', 'proj_in.weight', 'proj_in.bias', 'proj_out.weight', 'proj_out.bias',
                                   'norm_out.weight', 'norm_out.bias')}
  for i in range(depth):
    d, t = f'layers.{i}', f'layers.{i}'
    for param in ('weight', 'bias'):
      names |= {f'{t}.0.norm1.{param}': f'{d}.ln0.{param}', f'{t}.0.norm2.{param}': f'{d}.ln1.{param}',
                f'{t}.1.0.{param}': f'{d}.ff.0.{param}'}
    names |= {f'{t}.0.to_q.weight': f'{d}.attn.to_q.weight', f'{t}.0.to_out.weight': f'{d}.attn.to_out.0.weight',
              f'{t}.1.1.weight': f'{d}.ff.1.net.0.proj.weight', f'{t}.1.3.weight': f'{d}.ff.1.net.2.weight'}
  out = {tencent: state[name] for tencent, name in names.items()}
  for i in range(depth):
    out[f'layers.{i}.0.to_kv.weight'] = torch.cat([state[f'layers.{i}.attn.to_k.weight'],
                                                   state[f'layers.{i}.attn.to_v.weight']])
  used = set(names.values()) | {f'layers.{i}.attn.to_{w}.weight' for i in range(depth) for w in 'kv'}
  assert used == set(state), sorted(set(state) ^ used)
  return out


def random_ip_adapter(seed: int) -> dict[str, torch.Tensor]:
  """Random 'ip_adapter' tensors ("{i}.to_k_ip.weight", ...) for the tiny pipeline's UNet."""
  gen = torch.Generator().manual_seed(seed)
  return {name.removeprefix('ip_adapter.'): torch.randn(entry.target.transform.hf_shape(entry.shape), generator=gen)
          for name, entry in adapter_key_map(UNET, PLUS).items() if entry.tree == 'unet_ip'}


def save_tencent(path: Path, image_proj: dict[str, torch.Tensor], ip_adapter: dict[str, torch.Tensor]) -> Path:
  """Writes the two state dicts as the official code reads them: flat .safetensors, or torch.save for .bin."""
  if path.suffix == '.safetensors':
    save_file({**{f'image_proj.{k}': v.contiguous() for k, v in image_proj.items()},
               **{f'ip_adapter.{k}': v.contiguous() for k, v in ip_adapter.items()}}, path)
  else:
    torch.save({'image_proj': image_proj, 'ip_adapter': ip_adapter}, path)
  return path


def run_resampler(config: ResamplerConfig, params, *inputs: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(Resampler(config).apply)({'params': params}, *map(jnp.asarray, inputs)))


def test_image_path_matches_diffusers_ip_adapter_plus(tmp_path):
  torch.manual_seed(0)
  reference = IPAdapterPlusImageProjection(embed_dims=32, output_dims=32, hidden_dims=32, depth=2, dim_head=8,
                                           heads=4, num_queries=4, ffn_ratio=4).eval()
  perturb(reference, 0)
  ip_adapter = random_ip_adapter(1)
  file = save_tencent(tmp_path / 'plus.safetensors', tencent_from_diffusers(reference.state_dict(), PLUS.depth),
                      ip_adapter)
  weights = load_adapter(file, UNET, PLUS)
  image_tokens = np.random.default_rng(0).standard_normal((2, 17, 32)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(image_tokens)).numpy()
  assert_close_torch(run_resampler(PLUS, weights.image_proj, image_tokens), expected)
  kernel = weights.unet_ip['down_blocks_0']['attentions_0']['transformer_blocks_0']['attn2']['to_k_ip_0']['kernel']
  np.testing.assert_array_equal(kernel.reshape(32, -1), ip_adapter['1.to_k_ip.weight'].numpy().T)


class PerceiverAttention(torch.nn.Module):
  """The official PerceiverAttention: latents attend to [LN(x) ‖ LN(latents)], q and k scaled by dim_head^-1/4."""

  def __init__(self, dim: int, dim_head: int, heads: int):
    super().__init__()
    self.heads, self.dim_head = heads, dim_head
    self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
    self.to_q = torch.nn.Linear(dim, heads * dim_head, bias=False)
    self.to_kv = torch.nn.Linear(dim, 2 * heads * dim_head, bias=False)
    self.to_out = torch.nn.Linear(heads * dim_head, dim, bias=False)

  def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    x, latents = self.norm1(x), self.norm2(latents)
    split = lambda t: t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # [B, H, L, Dh]
    k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
    scale = self.dim_head ** -0.25
    weights = torch.softmax((split(self.to_q(latents)) * scale) @ (split(k) * scale).transpose(-1, -2), dim=-1)
    return self.to_out((weights @ split(v)).transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int) -> torch.nn.Sequential:
  return torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim * mult, bias=False),
                             torch.nn.GELU(), torch.nn.Linear(dim * mult, dim, bias=False))


class InstructResampler(torch.nn.Module):
  """ResamplerInstructBigger re-derived: its modules registered in the official order (so state_dict() gives the
  checkpoint's names), each layer image -> prompt -> instruction, FF x ff_mult on the image path and x 2 on the
  text paths."""

  def __init__(self, c: ResamplerConfig):
    super().__init__()
    self.latents = torch.nn.Parameter(torch.randn(1, c.num_queries, c.dim) / math.sqrt(c.dim))
    self.proj_in = torch.nn.Linear(c.embedding_dim, c.dim)
    self.proj_new_input = torch.nn.Linear(c.text_dim, c.dim)
    self.proj_prompt_input = torch.nn.Linear(c.text_dim, c.dim)
    self.proj_out = torch.nn.Linear(c.dim, c.output_dim)
    self.norm_out = torch.nn.LayerNorm(c.output_dim)
    path = lambda mult: torch.nn.ModuleList([
        torch.nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), feed_forward(c.dim, mult)])
        for _ in range(c.depth)])
    self.layers, self.prompt_layers, self.new_input_layers = path(c.ff_mult), path(2), path(2)

  def forward(self, image: torch.Tensor, instruction: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    x, prompt = self.proj_in(image), self.proj_prompt_input(prompt)
    instruction = self.proj_new_input(instruction)
    latents = self.latents.repeat(image.shape[0], 1, 1)
    for (attn, ff), (p_attn, p_ff), (i_attn, i_ff) in zip(self.layers, self.prompt_layers, self.new_input_layers):
      latents = attn(x, latents) + latents
      latents = ff(latents) + latents
      latents = p_attn(prompt, latents) + latents
      latents = p_ff(latents) + latents
      latents = i_attn(instruction, latents) + latents
      latents = i_ff(latents) + latents
    return self.norm_out(self.proj_out(latents))


def test_instruct_and_prompt_paths_match_torch_from_safetensors_and_bin(tmp_path):
  torch.manual_seed(0)
  reference = InstructResampler(INSTRUCT).eval()
  perturb(reference, 0)
  state = reference.state_dict()
  assert list(state) == list(resampler_key_map(INSTRUCT))  # the names, in the official module's order
  rng = np.random.default_rng(1)
  image = rng.standard_normal((2, 9, 24)).astype(np.float32)
  instruction, prompt = (rng.standard_normal((2, n, 16)).astype(np.float32) for n in (5, 7))
  with torch.no_grad():
    expected = reference(*map(torch.from_numpy, (image, instruction, prompt))).numpy()
    swapped = reference(*map(torch.from_numpy, (image, prompt, instruction))).numpy()
  assert np.abs(expected - swapped).max() > 1e-2  # the two text paths are told apart
  ip_adapter = random_ip_adapter(2)
  loaded = [load_adapter(save_tencent(tmp_path / f'instruct.{suffix}', state, ip_adapter), UNET, INSTRUCT)
            for suffix in ('safetensors', 'bin')]
  assert_same_program(loaded[1], loaded[0])
  assert_close_torch(run_resampler(INSTRUCT, loaded[0].image_proj, image, instruction, prompt), expected)
  # Exported back, the file loads strictly into the torch module with every tensor as it was.
  save_adapter(tmp_path / 'export.safetensors', loaded[0], UNET, INSTRUCT)
  exported = load_file(tmp_path / 'export.safetensors')
  torch.testing.assert_close({k.removeprefix('ip_adapter.'): v for k, v in exported.items()
                              if k.startswith('ip_adapter.')}, ip_adapter, rtol=0, atol=0)
  reloaded = InstructResampler(INSTRUCT)
  reloaded.load_state_dict({k.removeprefix('image_proj.'): v for k, v in exported.items()
                            if k.startswith('image_proj.')}, strict=True)
  for name, tensor in reloaded.state_dict().items():
    torch.testing.assert_close(tensor, state[name], rtol=0, atol=0, msg=name)
