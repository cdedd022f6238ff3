"""geo2mat: the imagen-style U-Net (shapes, logical axes, blocks against a torch re-derivation of imagen-pytorch
1.26), the continuous cosine schedule and v objective against NumPy, one sampler step by hand, the jitted sampler
against a manual loop, and the geometry condition reaching the output. Training (the loss falls, the class table stays
frozen) is tested through the trainer in test_n2g2m.py, which compiles a train step anyway."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.object_images import geo2mat
from experiments.object_images.geo2mat import (
  Geo2MatConfig,
  Geo2MatUNet,
  alpha_sigma,
  cosine_log_snr,
  geo2mat_loss,
  p_sample_step,
  sample_materials,
)
from experiments.object_images.geo2mat_unet import ResnetBlock, TransformerBlock

TINY = Geo2MatConfig(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                     layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=4, text_embed_dim=6, num_classes=3,
                     max_text_len=3, resnet_groups=2, attn_pool_num_latents=2, learned_sinu_pos_emb_dim=4,
                     attn_pool_max_seq_len=4)
B, S = 2, 8


def _inputs(seed: int = 0):
  k = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k[0], (B, S, S, 5))
  geometry = jax.random.uniform(k[1], (B, S, S, 4), minval=-1, maxval=1)
  return x, jnp.array([2.0, -3.0]), geometry, jnp.array([0, 2]), jnp.array([False, False])


def _key(seed: int) -> jax.Array:
  # The rbg generator compiles a many-parameter init ~3x faster on CPU than threefry.
  return jax.random.key(seed, impl='unsafe_rbg')


# One compiled sampler step (at the [B, S, S, 5] shapes) for the step-by-hand and manual-loop tests.
_p_sample_step = jax.jit(p_sample_step, static_argnames=('percentile',))


def _perturbed(params, scale: float, seed: int):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32), params)


@pytest.fixture(scope='module')
def model_and_params():
  """(model, boxed init params, params with a random output conv, the jitted apply shared by the tests)."""
  model = Geo2MatUNet(TINY)
  boxed = jax.jit(model.init)(_key(0), *_inputs())['params']
  params = nn.unbox(boxed)
  # The output conv starts at zero (imagen's zero_init_); a random one makes the conditioning visible.
  params['final_conv'] = _perturbed(params['final_conv'], 0.1, 1)
  return model, boxed, params, jax.jit(model.apply)


def test_shapes_zero_init_and_logical_axes(model_and_params):
  model, boxed, params, apply = model_and_params
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
                        for leaf in leaves)
  out = apply({'params': nn.unbox(boxed)}, *_inputs())
  assert out.shape == (B, S, S, 5) and not np.any(np.asarray(out))
  # Widths: dims (8, 8, 16); the last level widens without downsampling; skips are concatenated on the way up.
  assert params['downs_1_out_3x3']['kernel'].shape == (3, 3, 8, 16)
  assert params['ups_1_init_block']['block1']['project']['kernel'].shape == (3, 3, 16 + 8, 16)
  assert params['final_res_block']['block1']['project']['kernel'].shape == (3, 3, 8 + 8, 8)
  assert params['init_conv_0']['kernel'].shape == (3, 3, 9, 4) and params['init_conv_2']['kernel'].shape[:2] == (15, 15)
  assert params['attn_pool']['latents'].shape == (2, 8) and params['null_text_embed'].shape == (1, 3, 8)
  with pytest.raises(ValueError, match='cond_images'):
    jax.eval_shape(model.apply, {'params': params}, _inputs()[0], _inputs()[1], jnp.zeros((B, S, S, 3)),
                   _inputs()[3])


def test_schedule_matches_numpy():
  t = np.array([0.0, 1e-3, 0.25, 0.5, 0.9, 0.999, 1.0], np.float64)
  angle = (t + 0.008) / 1.008 * np.pi / 2
  expected = -np.log(np.maximum(np.cos(angle) ** -2.0 - 1, 1e-5))
  log_snr = np.asarray(cosine_log_snr(jnp.asarray(t, jnp.float32)))
  np.testing.assert_allclose(log_snr[:-1], expected[:-1], rtol=1e-5, atol=1e-4)
  assert log_snr[-1] < -30  # cos(pi/2) ~ -4e-8 in float32: the log-SNR is finite at t = 1
  assert np.all(np.diff(log_snr) < 0)
  alpha, sigma = (np.asarray(a, np.float64) for a in alpha_sigma(jnp.asarray(log_snr)))
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, atol=1e-6)
  # imagen's continuous alpha^2 is the improved-DDPM cosine ᾱ without the 1/ᾱ(0) normalisation.
  np.testing.assert_allclose(alpha[:-1] ** 2, np.cos(angle[:-1]) ** 2, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(sigma, np.sqrt(1 / (1 + np.exp(log_snr.astype(np.float64)))), rtol=1e-5)


def test_loss_is_min_snr_weighted_v_mse():
  class Constant(nn.Module):  # predicts a learned constant: the loss is then a closed form of the draws
    @nn.compact
    def __call__(self, x, log_snr, cond_images, labels, drop):
      return jnp.zeros_like(x) + self.param('c', nn.initializers.zeros_init(), ())

  omage = jax.random.uniform(jax.random.key(3), (B, S, S, 12), minval=-1, maxval=1)
  rng = jax.random.key(4)
  params = {'c': jnp.float32(0.25)}
  for gamma in (5.0, None):
    loss, aux = geo2mat_loss(Constant(), params, {'omage': omage, 'label': jnp.array([0, 1])}, rng,
                             min_snr_gamma=gamma)
    t_rng, noise_rng, _ = jax.random.split(rng, 3)
    t = np.asarray(jax.random.uniform(t_rng, (B,)), np.float64)
    noise = np.asarray(jax.random.normal(noise_rng, (B, S, S, 5)), np.float64)
    x0 = np.asarray(omage, np.float64)[..., 7:12]
    ls = -np.log(np.maximum(np.cos((t + 0.008) / 1.008 * np.pi / 2) ** -2.0 - 1, 1e-5))
    alpha = np.sqrt(1 / (1 + np.exp(-ls)))[:, None, None, None]
    sigma = np.sqrt(1 / (1 + np.exp(ls)))[:, None, None, None]
    mse = ((0.25 - (alpha * noise - sigma * x0)) ** 2).reshape(B, -1).mean(-1)
    snr = np.exp(ls)
    weight = (snr if gamma is None else np.minimum(snr, gamma)) / (snr + 1)
    np.testing.assert_allclose(float(loss), np.mean(mse * weight), rtol=1e-5)
    np.testing.assert_allclose(float(aux['mse']), mse.mean(), rtol=1e-5)


def test_one_sampler_step_by_hand():
  k = jax.random.split(jax.random.key(5), 3)
  x = 3.0 * jax.random.normal(k[0], (B, S, S, 5))
  v = jax.random.normal(k[1], (B, S, S, 5))
  noise = jax.random.normal(k[2], (B, S, S, 5))
  t, t_next = jnp.array([0.7, 0.001]), jnp.array([0.699, 0.0])
  out, x0 = _p_sample_step(x, v, t, t_next, noise, percentile=0.95)
  xn, vn, zn = (np.asarray(a, np.float64) for a in (x, v, noise))
  for b in range(B):
    ls, ls_next = (float(cosine_log_snr(a[b])) for a in (t, t_next))
    a, s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
    a_next, s_next = np.sqrt(1 / (1 + np.exp(-ls_next))), np.sqrt(1 / (1 + np.exp(ls_next)))
    start = a * xn[b] - s * vn[b]
    thresh = max(1.0, np.quantile(np.abs(start), 0.95))
    start = np.clip(start, -thresh, thresh) / thresh
    c = -np.expm1(ls - ls_next)
    mean = a_next * (xn[b] * (1 - c) / a + c * start)
    expected = mean + (float(t_next[b]) != 0) * np.sqrt(s_next ** 2 * c) * zn[b]
    np.testing.assert_allclose(np.asarray(x0[b]), start, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[b]), expected, atol=1e-4, rtol=1e-4)
  assert np.abs(np.asarray(x0)).max() <= 1.0 + 1e-6


def test_sampler_matches_a_manual_loop_and_uses_geometry(model_and_params):
  model, _, params, apply = model_and_params
  _, _, geometry, labels, _ = _inputs()
  rng = jax.random.key(6)
  out = sample_materials(model, params, geometry, labels, rng, steps=2)
  noise_rng, step_rng = jax.random.split(rng)
  x = jax.random.normal(noise_rng, (B, S, S, 5))
  times = np.linspace(1.0, 0.0, 3, dtype=np.float32)
  for i in range(2):
    t, t_next = jnp.full((B,), times[i]), jnp.full((B,), times[i + 1])
    v = apply({'params': params}, x, cosine_log_snr(t), geometry, labels, jnp.zeros((B,), bool))
    x, _ = _p_sample_step(x, v, t, t_next, jax.random.normal(jax.random.fold_in(step_rng, i), x.shape),
                          percentile=0.95)
  np.testing.assert_allclose(np.asarray(out), np.clip(np.asarray(x), -1, 1), atol=1e-5)
  assert out.shape == (B, S, S, 5) and np.abs(np.asarray(out)).max() <= 1.0
  # The geometry and the class reach the prediction; a dropped class equals the null label.
  x_noisy, log_snr, _, _, keep = _inputs()
  base = apply({'params': params}, x_noisy, log_snr, geometry, labels, keep)
  moved = apply({'params': params}, x_noisy, log_snr, geometry.at[:, :4].set(0.5), labels, keep)
  assert float(jnp.abs(moved - base).max()) > 1e-4
  relabelled = apply({'params': params}, x_noisy, log_snr, geometry, jnp.array([1, 1]), keep)
  assert float(jnp.abs(relabelled[0] - base[0]).max()) > 1e-6
  dropped = apply({'params': params}, x_noisy, log_snr, geometry, labels, jnp.array([True, True]))
  null = apply({'params': params}, x_noisy, log_snr, geometry, jnp.array([3, 3]), keep)
  np.testing.assert_array_equal(np.asarray(dropped), np.asarray(null))


# A torch re-derivation of imagen-pytorch 1.26's ResnetBlock (with cross-attention and global context) and
# TransformerBlock (multi-query self-attention with context, then the feed-forward), NCHW, from the flax weights.

def _torch_blocks():
  torch = pytest.importorskip('torch')
  F = torch.nn.functional

  def t(a):
    return torch.tensor(np.asarray(a, np.float64))

  def linear(x, p, bias=True):
    kernel = t(p['kernel'])
    y = x @ kernel.reshape(x.shape[-1], -1)
    return y + t(p['bias']).reshape(-1) if bias and 'bias' in p else y

  def conv(x, p):
    weight = t(p['kernel']).permute(3, 2, 0, 1)
    return F.conv2d(x, weight, t(p['bias']), padding=weight.shape[-1] // 2)

  def imagen_norm(x, p):
    var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
    return (x - x.mean(-1, keepdim=True)) * (var + 1e-5).rsqrt() * t(p['scale'])

  def torch_norm(x, p):
    return F.layer_norm(x, x.shape[-1:], t(p['scale']), t(p['bias']), 1e-5)

  def cosine(q, k, v, p):  # q [b h i d], k/v [b (h) j d] with the null key/value prepended
    q = F.normalize(q, dim=-1) * t(p['q_scale'])
    k = F.normalize(k, dim=-1) * t(p['k_scale'])
    sim = torch.einsum('b h i d, b h j d -> b h i j' if k.ndim == 4 else 'b h i d, b j d -> b h i j', q, k) * 8
    attn = sim.softmax(dim=-1)
    out = torch.einsum('b h i j, b h j d -> b h i d' if v.ndim == 4 else 'b h i j, b j d -> b h i d', attn, v)
    return out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)

  def cross_attention(x, context, p, heads):
    b = x.shape[0]
    h = imagen_norm(x, p['norm'])
    q = linear(h, p['to_q'], bias=False)
    k, v = linear(context, p['to_kv'], bias=False).chunk(2, dim=-1)
    q, k, v = (a.reshape(b, a.shape[1], heads, -1).permute(0, 2, 1, 3) for a in (q, k, v))
    nk, nv = (t(p['null_kv'][i]).expand(b, heads, 1, -1) for i in range(2))
    out = cosine(q, torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2), p)
    return imagen_norm(linear(out, p['to_out'], bias=False), p['to_out_norm'])

  def block(x, p, groups, scale_shift=None):
    x = F.group_norm(x, groups, t(p['groupnorm']['scale']), t(p['groupnorm']['bias']), 1e-5)
    if scale_shift is not None:
      x = x * (scale_shift[0] + 1) + scale_shift[1]
    return conv(F.silu(x), p['project'])

  def resnet_block(x, temb, context, p, groups, heads):
    scale_shift = linear(F.silu(temb), p['time_mlp'])[:, :, None, None].chunk(2, dim=1)
    h = block(x, p['block1'], groups)
    b, c, hh, ww = h.shape
    flat = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
    h = (cross_attention(flat, context, p['cross_attn'], heads) + flat).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
    h = block(h, p['block2'], groups, scale_shift)
    g = p['gca']
    flat = h.reshape(b, c, -1)
    ctx = (flat.transpose(1, 2) @ t(g['to_k']['kernel']) + t(g['to_k']['bias'])).transpose(1, 2).softmax(dim=-1)
    pooled = torch.einsum('b i n, b c n -> b c i', ctx, flat)[..., 0]
    gate = torch.sigmoid(linear(F.silu(linear(pooled, g['net_0'])), g['net_2']))
    h = h * gate[:, :, None, None]
    return h + conv(x, p['res_conv'])

  def transformer_block(x, context, p, heads):
    b, c, hh, ww = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
    a = p['attn']
    h = imagen_norm(x, a['norm'])
    q = linear(h, a['to_q'], bias=False).reshape(b, hh * ww, heads, -1).permute(0, 2, 1, 3)
    k, v = linear(h, a['to_kv'], bias=False).chunk(2, dim=-1)
    ck, cv = linear(torch_norm(context, a['to_context_norm']), a['to_context']).chunk(2, dim=-1)
    nk, nv = (t(a['null_kv'][i]).expand(b, 1, -1) for i in range(2))
    out = cosine(q, torch.cat((ck, nk, k), dim=-2), torch.cat((cv, nv, v), dim=-2), a)
    x = imagen_norm(linear(out, a['to_out'], bias=False), a['to_out_norm']) + x
    f = p['ff']
    h = F.gelu(linear(imagen_norm(x, f['norm']), f['fc1'], bias=False))
    x = linear(imagen_norm(h, f['norm_hidden']), f['fc2'], bias=False) + x
    return x.reshape(b, hh, ww, c).permute(0, 3, 1, 2)

  return t, resnet_block, transformer_block


def _random_params(module: nn.Module, seed: int, *inputs):
  """Random parameters of module's shapes (no init to compile): gains 1 + 0.3 N(0, 1), everything else 0.3 N(0, 1),
  so that a wrong gain/bias/scale placement shows."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(jax.eval_shape(module.init, _key(0), *inputs))['params']

  def draw(path, leaf):
    gain = path[-1].key in ('scale', 'q_scale', 'k_scale')
    return (float(gain) + 0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_blocks_match_a_torch_rederivation():
  t, torch_resnet, torch_transformer = _torch_blocks()
  rng = np.random.default_rng(9)
  x, temb, context = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 4, 4, 6), (2, 12), (2, 5, 10)))
  resnet = ResnetBlock(8, groups=2, cross_attn=True, use_gca=True, heads=2, dim_head=4)
  params = _random_params(resnet, 10, x, temb, context)
  ours = jax.jit(resnet.apply)({'params': params}, x, temb, context)
  theirs = torch_resnet(t(x).permute(0, 3, 1, 2), t(temb), t(context), params, 2, 2).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=1e-4)

  block = TransformerBlock(2, 4, 2.0)
  params = _random_params(block, 11, ours, context)
  out = jax.jit(block.apply)({'params': params}, ours, context)
  theirs = torch_transformer(t(ours).permute(0, 3, 1, 2), t(context), params, 2).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(out), theirs.numpy(), atol=1e-4, rtol=1e-4)


def test_defaults_are_the_official_settings():
  cfg = Geo2MatConfig()
  assert (cfg.dim, cfg.dim_mults, cfg.num_resnet_blocks, cfg.attn_heads, cfg.channels, cfg.cond_images_channels,
          cfg.text_embed_dim, cfg.num_classes, cfg.token_dim) == (256, (1, 2, 3, 4), 3, 8, 5, 4, 768, 63, 256)
  assert cfg.layer_attns == cfg.layer_cross_attns == (False, True, True, True)
  assert cfg.init_conv_to_final_conv_residual and not cfg.train_label_embed
  geometry, materials = geo2mat.split_omage(jnp.arange(12.0).reshape(1, 12))
  np.testing.assert_array_equal(geometry, [[0, 1, 2, 3]])
  np.testing.assert_array_equal(materials, [[7, 8, 9, 10, 11]])
