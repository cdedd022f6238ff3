"""Adapter checkpoints: a tencent-layout IP-Adapter+ file drives our UNet as diffusers' IPAdapterAttnProcessor2_0 +
IPAdapterPlusImageProjection do; save/load round trips bitwise with the ordered attn_processors numbering; files
that do not fit are named key by key; instruct_from_plus starts where IP-Adapter+ is."""
from __future__ import annotations

import copy
import dataclasses
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from experiments.ipadapter_instruct.checkpoint import (
  AdapterWeights,
  instruct_from_plus,
  load_adapter,
  merge_unet,
  save_adapter,
  split_unet,
)
from experiments.ipadapter_instruct.resampler import Resampler
from experiments.ipadapter_instruct.tiny import random_params
from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.weights import from_pretrained
from mmjax.weights.source import WeightsFileError, WeightsMismatchError
from tests.experiments.ipadapter_instruct.test_resampler import INSTRUCT, PLUS, save_tencent, tencent_from_diffusers
from tests.hf_models import perturb
from tests.models.test_unet import IP_TOKENS, LINEAR_PROJECTION, UNET, save_unet, torch_forward, unet_inputs
from tests.numerics import assert_close, assert_close_torch, assert_same_program

# The linear-projection UNet has 2 and 4 heads per level and 2 transformer layers in the mid block.
ROUND_TRIP_UNET = {**UNET, **LINEAR_PROJECTION}
# The instruct resampler whose image path is PLUS's.
INSTRUCT_OF_PLUS = dataclasses.replace(INSTRUCT, embedding_dim=PLUS.embedding_dim, output_dim=PLUS.output_dim)


def test_unet_with_ip_adapter_plus_file_matches_diffusers(tmp_path):
  reference = save_unet(tmp_path / 'unet')
  torch.manual_seed(1)
  processors = {name: IPAdapterAttnProcessor2_0(reference.get_submodule(name.removesuffix('.processor')).to_q
                                                .out_features, UNET['cross_attention_dim'], num_tokens=(IP_TOKENS,),
                                                scale=0.7)
                if name.endswith('attn2.processor') else AttnProcessor2_0() for name in reference.attn_processors}
  reference.set_attn_processor(copy.copy(processors))  # it empties the dict it is given
  projection = IPAdapterPlusImageProjection(embed_dims=32, output_dims=32, hidden_dims=32, depth=2, dim_head=8,
                                            heads=4, num_queries=IP_TOKENS, ffn_ratio=4).eval()
  perturb(projection, 2)
  ip_adapter = {f'{i}.to_{w}_ip.weight': getattr(p, f'to_{w}_ip')[0].weight.detach()
                for i, p in enumerate(processors.values()) if isinstance(p, IPAdapterAttnProcessor2_0) for w in 'kv'}
  file = save_tencent(tmp_path / 'ip-adapter-plus.safetensors',
                      tencent_from_diffusers(projection.state_dict(), PLUS.depth), ip_adapter)
  sample, timestep, context = unet_inputs()
  image_tokens = np.random.default_rng(3).standard_normal((2, 17, 32)).astype(np.float32)
  with torch.no_grad():
    ip_tokens = projection(torch.from_numpy(image_tokens))
  expected = torch_forward(reference, sample, timestep, (torch.from_numpy(context), [ip_tokens]))

  _, base, config = from_pretrained(tmp_path / 'unet')
  weights = load_adapter(file, config, PLUS)
  params = merge_unet(base, weights.unet_ip)
  assert_same_program(split_unet(params), (base, weights.unet_ip))
  module = UNet2DConditionModel(config, extra_token_sets=1)

  def forward(params, image_proj, x, t, c, image):
    ip = Resampler(PLUS).apply({'params': image_proj}, image)
    return module.apply({'params': params}, x, t, c, extra_tokens=[(ip, 0.7)])

  out = jax.jit(forward)(params, weights.image_proj, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timestep),
                         jnp.asarray(context), jnp.asarray(image_tokens))
  assert_close_torch(np.asarray(out).transpose(0, 3, 1, 2), expected)
  for processor in processors.values():  # the image tokens matter
    if isinstance(processor, IPAdapterAttnProcessor2_0):
      processor.scale = [0.0]
  assert np.abs(expected - torch_forward(reference, sample, timestep, (torch.from_numpy(context), [ip_tokens]))
                ).max() > 1e-2


@pytest.fixture(scope='module')
def round_trip_unet():
  """ROUND_TRIP_UNET's config, random IP kernels of our UNet built with one extra token set (so their shapes come
  from the model itself), and diffusers' ordered attn_processors names for it."""
  config = UNet2DConditionConfig.from_hf_dict(ROUND_TRIP_UNET)
  unet = random_params(UNet2DConditionModel(config, extra_token_sets=1), jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)),
                       jnp.zeros((1, 1, 32)), seed=0)
  return config, split_unet(unet)[1], list(diffusers.UNet2DConditionModel(**ROUND_TRIP_UNET).attn_processors)


def tiny_adapter(resampler_config, unet_ip, seed: int = 0) -> AdapterWeights:
  """Random resampler params for `resampler_config` with the UNet's IP kernels `unet_ip`."""
  text = (jnp.zeros((1, 1, resampler_config.text_dim)),) * 2 if resampler_config.instruct else ()
  return AdapterWeights(random_params(Resampler(resampler_config), jnp.zeros((1, 1, resampler_config.embedding_dim)),
                                      *text, seed=seed), unet_ip)


@pytest.mark.parametrize('resampler_config', [PLUS, INSTRUCT], ids=['plus', 'instruct'])
def test_save_load_round_trip_numbers_keys_by_ordered_attn_processors(tmp_path, round_trip_unet, resampler_config):
  config, unet_ip, processors = round_trip_unet
  weights = tiny_adapter(resampler_config, unet_ip)
  save_adapter(tmp_path / 'adapter.safetensors', weights, config, resampler_config)
  assert_same_program(load_adapter(tmp_path / 'adapter.safetensors', config, resampler_config), weights)
  with safe_open(tmp_path / 'adapter.safetensors', framework='numpy') as f:
    keys = set(f.keys())
  attn2 = [i for i, name in enumerate(processors) if name.endswith('attn2.processor')]
  assert attn2 == list(range(1, len(processors), 2)) and len(attn2) == 5  # down 1, up 2, mid 2
  assert {k for k in keys if k.startswith('ip_adapter.')} == {f'ip_adapter.{i}.to_{w}_ip.weight' for i in attn2
                                                              for w in 'kv'}
  assert all(k.startswith(('image_proj.', 'ip_adapter.')) for k in keys)


@pytest.fixture(scope='module')
def adapter_file(tmp_path_factory, round_trip_unet):
  """A valid tencent-layout IP-Adapter+ file for ROUND_TRIP_UNET, its tensors and its UNet config."""
  config, unet_ip, _ = round_trip_unet
  path = tmp_path_factory.mktemp('adapter') / 'plus.safetensors'
  save_adapter(path, tiny_adapter(PLUS, unet_ip, seed=5), config, PLUS)
  return path, load_file(path), config


def rewrite(path, tensors: dict[str, np.ndarray]):
  save_file(tensors, path)
  return path


def test_files_that_do_not_fit_are_named_key_by_key(tmp_path, adapter_file):
  path, tensors, config = adapter_file
  missing = {k: v for k, v in tensors.items() if k != 'ip_adapter.3.to_v_ip.weight'}
  with pytest.raises(WeightsMismatchError, match=r'missing\.safetensors .*missing 1 keys: ip_adapter\.3\.to_v_ip\.'
                                                 r'weight\.$'):
    load_adapter(rewrite(tmp_path / 'missing.safetensors', missing), config, PLUS)
  extra = {**tensors, 'image_proj.pos_emb.weight': np.zeros((257, 32), np.float32)}
  with pytest.raises(WeightsMismatchError, match=r'extra\.safetensors .*unexpected 1 keys: image_proj\.pos_emb\.'
                                                 r'weight\.$'):
    load_adapter(rewrite(tmp_path / 'extra.safetensors', extra), config, PLUS)
  bad_shape = {**tensors, 'image_proj.layers.1.0.to_kv.weight': np.zeros((32, 32), np.float32)}
  with pytest.raises(WeightsMismatchError, match=r'shape\.safetensors .*misshapen 1 keys: image_proj\.layers\.1\.0\.'
                                                 r'to_kv\.weight \[32, 32\] \(expected \[64, 32\]\)\.$'):
    load_adapter(rewrite(tmp_path / 'shape.safetensors', bad_shape), config, PLUS)
  with pytest.raises(WeightsMismatchError, match=r'plus\.safetensors does not hold the IPAdapter-Instruct adapter .*'
                                                 r'missing \d+ keys: image_proj\.proj_new_input\.weight, .*'
                                                 r'It is an IP-Adapter\+ checkpoint'):
    load_adapter(path, config, INSTRUCT_OF_PLUS)


def test_unreadable_files_are_named(tmp_path, adapter_file, monkeypatch):
  _, _, config = adapter_file
  with pytest.raises(FileNotFoundError, match=r'absent\.bin: no such adapter file'):
    load_adapter(tmp_path / 'absent.bin', config, PLUS)
  (tmp_path / 'adapter.ckpt').write_bytes(b'x')
  with pytest.raises(WeightsFileError, match=r"adapter\.ckpt: an adapter file is \.safetensors, .* not '\.ckpt'"):
    load_adapter(tmp_path / 'adapter.ckpt', config, PLUS)
  torch.save([torch.zeros(1)], tmp_path / 'list.bin')
  with pytest.raises(WeightsFileError, match=r'list\.bin holds a list, not a dict of state dicts'):
    load_adapter(tmp_path / 'list.bin', config, PLUS)
  monkeypatch.setitem(sys.modules, 'torch', None)  # as if torch were not installed
  with pytest.raises(WeightsFileError, match=r'list\.bin is a torch pickle; reading it needs torch'):
    load_adapter(tmp_path / 'list.bin', config, PLUS)


def test_merge_unet_names_a_foreign_attention():
  with pytest.raises(ValueError, match=r'mid_block/attentions_0/transformer_blocks_0/attn2/to_k_ip_0/kernel: the '
                                       r'UNet params have no attention module'):
    merge_unet({'conv_in': {'kernel': jnp.zeros(1)}},
               unflatten_dict({('mid_block', 'attentions_0', 'transformer_blocks_0', 'attn2', 'to_k_ip_0', 'kernel'):
                               jnp.zeros(1)}))


def test_instruct_from_plus_starts_at_ip_adapter_plus():
  config = INSTRUCT_OF_PLUS
  unet_ip = {'down_blocks_0': {'to_k_ip_0': {'kernel': jnp.arange(3.0)}}}  # passed through untouched
  plus = AdapterWeights(random_params(Resampler(PLUS), jnp.zeros((1, 1, 32)), seed=7), unet_ip)
  instruct = instruct_from_plus(plus, config, seed=0)
  fresh, given = flatten_dict(instruct.image_proj), flatten_dict(plus.image_proj)
  assert_same_program({p: fresh[p] for p in given}, given)  # the image path is IP-Adapter+'s
  assert_same_program(instruct.unet_ip, plus.unet_ip)
  small = [p for p in fresh if p[-2:] in (('fc2', 'kernel'), ('to_out', 'kernel')) and p not in given]
  assert len(small) == 2 * 2 * config.depth  # FF and attention out, prompt and instruction paths, every layer
  assert 0.5e-4 < float(np.std(np.concatenate([np.ravel(fresh[p]) for p in small]))) < 2e-4

  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal((2, 9, 32)), jnp.float32)
  instruction, prompt = (jnp.asarray(rng.standard_normal((2, n, 16)), jnp.float32) for n in (5, 7))
  expected = jax.jit(Resampler(PLUS).apply)({'params': plus.image_proj}, image)
  run = jax.jit(lambda p: Resampler(config).apply({'params': p}, image, instruction, prompt))
  # Each of the 4 * depth new branches adds sigma * (a unit-variance vector of <= 64 entries) per element, sigma =
  # 1e-4: about 1e-4 * sqrt(64) * sqrt(8) ~ 2e-3 in the latents, ~3 sigma at the extreme over 256 outputs after
  # proj_out and the output LayerNorm (gains ~1 at these widths): tol 1e-2.
  assert_close(run(instruct.image_proj), expected, tol=1e-2)
  assert not np.array_equal(run(instruct.image_proj), expected)
  # The test can fail: the same start with those projections at a default init (N(0, 1/fan_in)) is far from it.
  default = flatten_dict(random_params(Resampler(config), image, instruction, prompt, seed=1))
  loud = unflatten_dict({**fresh, **{p: default[p] for p in small}})
  assert np.abs(np.asarray(run(loud)) - np.asarray(expected)).max() > 0.1


def test_instruct_from_plus_names_a_plus_of_another_config():
  plus = AdapterWeights(random_params(Resampler(PLUS), jnp.zeros((1, 1, 32)), seed=7), {})
  with pytest.raises(ValueError, match=r'do not fit the instruct config: missing layers_2_attn/norm1/bias, .*'
                                       r'proj_in/kernel \(32, 32\) \(expected \(24, 32\)\)'):
    instruct_from_plus(plus, dataclasses.replace(INSTRUCT, depth=3), seed=0)
