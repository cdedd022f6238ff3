"""UNet2DConditionModel vs diffusers on tiny random configs (SD1.x 1x1-conv and SD2/SDXL linear projections), its
feature taps, the decoupled IP-Adapter cross-attention against diffusers' IPAdapterAttnProcessor2_0, the
attn_processors numbering, logical axes and the config reader."""
import copy
from pathlib import Path
from types import SimpleNamespace

import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.weights import from_pretrained
from mmjax.weights.unet import attn_processor_paths, ip_adapter_key_map
from tests.hf_models import perturb
from tests.numerics import assert_close_programs, assert_close_torch, assert_same_program

# Two levels (32 and 64 channels), a cross-attention down block, a plain one, and the mirrored up blocks.
UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
            sample_size=16, norm_num_groups=8, down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
            up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
# SD2 / SDXL style: Linear proj_in / proj_out, heads and transformer depth per block.
LINEAR_PROJECTION = dict(use_linear_projection=True, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2))
IP_TOKENS = 4


def save_unet(directory: Path, *, seed: int = 0, **overrides) -> diffusers.UNet2DConditionModel:
  """A random tiny diffusers UNet (`UNET` updated by `overrides`), every weight perturbed, saved to `directory`."""
  torch.manual_seed(seed)
  model = diffusers.UNet2DConditionModel(**{**UNET, **overrides}).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def unet_inputs(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """NCHW latents [B, 4, 16, 16], timesteps [B] (0 and 999 included), text states [B, 5, 32]."""
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal((batch, 4, 16, 16)).astype(np.float32)
  timestep = np.array([0, 999, *rng.integers(1, 999, batch - 2)], np.int64)
  context = rng.standard_normal((batch, 5, UNET['cross_attention_dim'])).astype(np.float32)
  return sample, timestep, context


def torch_forward(model: torch.nn.Module, sample: np.ndarray, timestep: np.ndarray, context,
                  taps: dict | None = None) -> np.ndarray:
  """model's output (NCHW); `taps`, when given, receives the mid block's and each up block's output."""
  hooks = []
  if taps is not None:
    for name, block in [('mid', model.mid_block)] + [(f'up_blocks_{i}', b) for i, b in enumerate(model.up_blocks)]:
      hooks.append(block.register_forward_hook(lambda _, __, out, name=name: taps.update({name: out.numpy()})))
  with torch.no_grad():
    out = model(torch.from_numpy(sample), torch.from_numpy(timestep), context).sample.numpy()
  for hook in hooks:
    hook.remove()
  return out


def jax_forward(module: nn.Module, params, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray, **kwargs):
  """module on NCHW numpy inputs, jitted; returns what it returns, NCHW."""
  out = jax.jit(lambda p, x, t, c: module.apply({'params': p}, x, t, c, **kwargs))(
      params, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timestep), jnp.asarray(context))
  return jax.tree.map(lambda a: np.asarray(a).transpose(0, 3, 1, 2), out)


@pytest.fixture(scope='module')
def sd15_unet(tmp_path_factory):
  """The tiny conv-projection UNet (plain attention processors), our module with one extra token set, our params
  with to_k_ip_0 / to_v_ip_0 from diffusers IP-Adapter processors (returned unset), and our plain output with its
  feature taps on `unet_inputs()` (one compiled program for the tests below)."""
  directory = tmp_path_factory.mktemp('unet')
  reference = save_unet(directory)
  _, params, config = from_pretrained(directory)
  torch.manual_seed(1)
  processors = {}
  for name in reference.attn_processors:
    if name.endswith('attn2.processor'):
      hidden = reference.get_submodule(name.removesuffix('.processor')).to_q.out_features
      processors[name] = IPAdapterAttnProcessor2_0(hidden, UNET['cross_attention_dim'], num_tokens=(IP_TOKENS,))
    else:
      processors[name] = AttnProcessor2_0()
  # The IP-Adapter checkpoint layout: "{i}.to_k_ip.weight" with i the processor's position in attn_processors.
  state = {f'{i}.to_{which}_ip.weight': getattr(p, f'to_{which}_ip')[0].weight.detach().numpy()
           for i, p in enumerate(processors.values()) if isinstance(p, IPAdapterAttnProcessor2_0)
           for which in ('k', 'v')}
  flat = flatten_dict(params)
  ip_map = ip_adapter_key_map(config)
  assert sorted(ip_map.targets) == sorted(state)
  for name, (path, transform) in ip_map.targets.items():
    shape = (UNET['cross_attention_dim'], *flat[(*path[:-2], 'q_proj', 'kernel')].shape[1:])
    flat[path] = jnp.asarray(transform.to_flax(state[name], shape))
  module, params = UNet2DConditionModel(config, extra_token_sets=1), unflatten_dict(flat)
  plain = jax_forward(module, params, *unet_inputs(), return_features=True)
  return SimpleNamespace(reference=reference, processors=processors, module=module, params=params, plain=plain)


def test_matches_diffusers_with_feature_taps(sd15_unet):
  out, features = sd15_unet.plain
  sample, timestep, context = unet_inputs()
  taps = {}
  assert_close_torch(out, torch_forward(sd15_unet.reference, sample, timestep, torch.from_numpy(context), taps))
  assert sorted(features) == sorted(taps) == ['mid', 'up_blocks_0', 'up_blocks_1']
  assert features['up_blocks_0'].shape == (2, 64, 16, 16) and features['mid'].shape == (2, 64, 8, 8)
  assert_close_torch(features, taps)


def test_linear_projection_matches_diffusers(tmp_path):
  reference = save_unet(tmp_path, **LINEAR_PROJECTION)
  module, params, config = from_pretrained(tmp_path)
  assert config.use_linear_projection and config.heads(0) == 2 and config.transformer_layers(1) == 2
  sample, timestep, context = unet_inputs(seed=1)
  assert_close_torch(jax_forward(module, params, sample, timestep, context),
                     torch_forward(reference, sample, timestep, torch.from_numpy(context)))


def test_decoupled_cross_attention_matches_ip_adapter_processor(sd15_unet):
  reference = copy.deepcopy(sd15_unet.reference)
  reference.set_attn_processor(dict(sd15_unet.processors))  # it empties the dict it is given
  ip_processors = [p for p in reference.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
  sample, timestep, context = unet_inputs()
  ip_tokens = np.random.default_rng(4).standard_normal((2, IP_TOKENS, 32)).astype(np.float32)

  def reference_forward(scale: float) -> np.ndarray:
    for processor in ip_processors:
      processor.scale = [scale]
    return torch_forward(reference, sample, timestep, (torch.from_numpy(context), [torch.from_numpy(ip_tokens)]))

  # The scale is traced here, as a training step or a guidance schedule passes it.
  run = jax.jit(lambda p, x, t, c, ip, scale: sd15_unet.module.apply({'params': p}, x, t, c,
                                                                     extra_tokens=[(ip, scale)]))
  inputs = (jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timestep), jnp.asarray(context),
            jnp.asarray(ip_tokens))
  expected = reference_forward(0.6)
  assert_close_torch(np.asarray(run(sd15_unet.params, *inputs, jnp.float32(0.6))).transpose(0, 3, 1, 2), expected)
  assert np.abs(expected - reference_forward(0.0)).max() > 1e-2  # the image tokens change the output
  plain, _ = sd15_unet.plain
  assert_close_programs(np.asarray(run(sd15_unet.params, *inputs, jnp.float32(0.0))).transpose(0, 3, 1, 2), plain)


def test_scale_zero_skips_the_token_set(sd15_unet):
  """A Python 0 skips the set (as diffusers does): the program is the plain one."""
  module, params = sd15_unet.module, sd15_unet.params
  ip_tokens = jnp.ones((2, IP_TOKENS, 32))
  zero = jax_forward(module, params, *unet_inputs(), extra_tokens=[(ip_tokens, 0.0)], return_features=True)
  assert_same_program(zero, sd15_unet.plain)
  with pytest.raises(ValueError, match=r'extra_tokens has 2 token sets but the model has extra_token_sets=1'):
    jax.eval_shape(module.apply, {'params': params}, jnp.zeros((2, 16, 16, 4)), jnp.zeros((2,)),
                   jnp.zeros((2, 5, 32)), extra_tokens=[(ip_tokens, 1.0)] * 2)


def test_attn_processor_paths_follow_diffusers_order():
  config = UNet2DConditionConfig.from_hf_dict({**UNET, **LINEAR_PROJECTION})
  model = diffusers.UNet2DConditionModel(**{**UNET, **LINEAR_PROJECTION})
  paths = attn_processor_paths(config)
  assert [name for name, _ in paths] == list(model.attn_processors)
  # Odd indices are the cross-attentions (IP-Adapter's "{i}.to_k_ip.weight"); the mid block comes last.
  assert all(path[-1] == ('attn2' if i % 2 else 'attn1') for i, (_, path) in enumerate(paths))
  assert paths[-1][1] == ('mid_block', 'attentions_0', 'transformer_blocks_1', 'attn2')
  abstract = flatten_dict(nn.unbox(jax.eval_shape(
      UNet2DConditionModel(config).init, jax.random.key(0), jnp.zeros((1, 2, 2, 4)), jnp.zeros((1,)),
      jnp.zeros((1, 1, 32)))['params']))
  assert all((*path, 'q_proj', 'kernel') in abstract for _, path in paths)


def test_init_has_logical_axes_and_ip_weights_in_every_cross_attention():
  config = UNet2DConditionConfig.from_hf_dict(UNET)
  boxed = jax.eval_shape(UNet2DConditionModel(config, extra_token_sets=2).init, jax.random.key(0),
                         jnp.zeros((1, 2, 2, 4)), jnp.zeros((1,)), jnp.zeros((1, 1, 32)))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  flat = flatten_dict(nn.unbox(boxed))
  attn2 = {path for _, path in attn_processor_paths(config) if path[-1] == 'attn2'}
  with_ip = {path[:-2] for path in flat if path[-2].startswith(('to_k_ip_', 'to_v_ip_'))}
  assert with_ip == attn2 and len(attn2) == 4  # down 1, up 2 (layers_per_block + 1), mid 1
  for path in attn2:
    assert flat[(*path, 'to_v_ip_1', 'kernel')].shape == (32, 8, flat[(*path, 'q_proj', 'kernel')].shape[-1])
  # An init fed token sets (a skipped one at scale 0 among them) makes the same parameters.
  tokens = jnp.zeros((1, 3, 32))
  fed = jax.eval_shape(UNet2DConditionModel(config, extra_token_sets=2).init, jax.random.key(0),
                       jnp.zeros((1, 2, 2, 4)), jnp.zeros((1,)), jnp.zeros((1, 1, 32)),
                       extra_tokens=[(tokens, 0.0), (tokens, 1.0)])['params']
  assert jax.tree.structure(nn.unbox(fed)) == jax.tree.structure(nn.unbox(boxed))


def test_config_reads_and_writes_diffusers_dicts():
  config = UNet2DConditionConfig.from_hf_dict({**UNET, **LINEAR_PROJECTION})
  assert UNet2DConditionConfig.from_hf_dict(config.to_hf_dict()) == config
  written = diffusers.UNet2DConditionModel.from_config(config.to_hf_dict()).config
  assert written.attention_head_dim == [2, 4] and written.use_linear_projection
  assert (UNet2DConditionConfig().heads(3), UNet2DConditionConfig().time_embed_dim) == (8, 1280)  # SD1.5
  with pytest.raises(ValueError, match=r"UNet2DConditionModel addition_embed_type='text_time' is not supported "
                                       r"\(only None\)"):
    UNet2DConditionConfig.from_hf_dict({**UNET, 'addition_embed_type': 'text_time'})
  with pytest.raises(ValueError, match=r"down_block_types entry 'AttnDownBlock2D' is not supported"):
    UNet2DConditionConfig.from_hf_dict({**UNET, 'down_block_types': ['AttnDownBlock2D', 'DownBlock2D']})
  with pytest.raises(ValueError, match=r'attention_head_dim=\(2, 4, 8\) must be an int or 2 ints'):
    UNet2DConditionConfig.from_hf_dict({**UNET, 'attention_head_dim': [2, 4, 8]})


def test_bad_input_shapes_are_named():
  module = UNet2DConditionModel(UNet2DConditionConfig.from_hf_dict(UNET))

  def init(x: jax.Array, t: jax.Array, c: jax.Array) -> None:
    jax.eval_shape(module.init, jax.random.key(0), x, t, c)

  with pytest.raises(ValueError, match=r'sample must be \[B, H, W, 4\] with H and W multiples of 2, got shape '
                                       r'\(1, 3, 4, 4\)'):
    init(jnp.zeros((1, 3, 4, 4)), jnp.zeros((1,)), jnp.zeros((1, 1, 32)))
  with pytest.raises(ValueError, match=r'encoder_hidden_states must be \[1, L, 32\], got shape \(1, 1, 16\)'):
    init(jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)), jnp.zeros((1, 1, 16)))
