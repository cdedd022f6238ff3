"""VGGish: the jnp log-mel front-end against a float64 NumPy reference written from the spec (<= 1e-5), window
cutting and last-window repeat; the network against a torch re-derivation of torchvggish's VGG at narrow widths
(NHWC flatten, ReLU after every FC); the released layout's parameter count; weight import and freezing."""
import functools
import math

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from mmjax.models.vggish import VGGish, int16_to_float, log_mel_examples, log_mel_spectrogram
from mmjax.weights import load_into
from mmjax.weights.source import WeightsMismatchError
from mmjax.weights.vggish import load_vggish
from tests.numerics import assert_close_programs, assert_close_torch

NARROW = dict(conv_widths=(4, 'M', 8, 'M', 8, 8, 'M', 16, 16, 'M'), fc_widths=(32, 32, 8))


def numpy_log_mel(signal: np.ndarray) -> np.ndarray:
  """The spec's front-end in float64: 400-sample periodic Hann frames every 160 samples, |rfft_512|, 64 HTK-mel
  triangles over 125-7500 Hz (DC weighted 0), log(mel + 0.01)."""
  window, hop, fft = 400, 160, 512
  count = 1 + (len(signal) - window) // hop
  frames = np.stack([signal[i * hop:i * hop + window] for i in range(count)])
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
  spectrum = np.abs(np.fft.rfft(frames * hann, fft))
  to_mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
  bins = to_mel(np.linspace(0, 8000, fft // 2 + 1))
  edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
  weights = np.zeros((fft // 2 + 1, 64))
  for band in range(64):
    lo, mid, hi = edges[band:band + 3]
    weights[:, band] = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
  weights[0] = 0
  return np.log(spectrum @ weights + 0.01)


def clip(seconds: float, seed: int = 0) -> np.ndarray:
  """A 440 Hz + 2 kHz tone with noise at 16 kHz, as int16 samples."""
  t = np.arange(int(seconds * 16000)) / 16000
  wave = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2000 * t)
  wave += 0.05 * np.random.default_rng(seed).standard_normal(t.shape)
  return np.round(wave * 32767).astype(np.int16)


def test_front_end_matches_numpy_reference():
  samples = clip(2.5)
  waveform = int16_to_float(samples)
  expected = numpy_log_mel(samples / 32768.0)
  assert expected.shape == (1 + (40000 - 400) // 160, 64)
  assert_close_programs(jax.jit(log_mel_spectrogram)(waveform), expected)
  examples = log_mel_examples(waveform)  # 248 frames -> 2 complete windows
  assert examples.shape == (2, 96, 64, 1)
  assert_close_programs(examples[..., 0], expected[:192].reshape(2, 96, 64))
  # A short clip (2 windows) padded to 5 repeats its last window; a long one is cut.
  padded = log_mel_examples(waveform, num_windows=5)
  assert padded.shape == (5, 96, 64, 1)
  np.testing.assert_array_equal(padded[2:], jnp.broadcast_to(examples[1], (3, 96, 64, 1)))
  np.testing.assert_array_equal(log_mel_examples(waveform, num_windows=1), examples[:1])
  # Stereo is averaged to mono.
  stereo = np.stack([samples, clip(2.5, seed=1)], axis=1)
  mono = (samples / 32768.0 + clip(2.5, seed=1) / 32768.0) / 2
  assert_close_programs(log_mel_examples(int16_to_float(stereo))[..., 0], numpy_log_mel(mono)[:192].reshape(2, 96, 64))


def test_front_end_errors():
  with pytest.raises(ValueError, match='needs 16000 Hz audio, got 44100 Hz'):
    log_mel_examples(jnp.zeros(44100), sample_rate=44100)
  with pytest.raises(ValueError, match='at least one window of 96 frames'):
    log_mel_examples(jnp.zeros(15000))


class TorchVGG(nn.Module):
  """torchvggish.vggish.VGG(make_layers()) with the given widths: NCHW features, transposed to NHWC, flattened."""

  def __init__(self, conv_widths, fc_widths):
    super().__init__()
    layers, channels = [], 1
    for width in conv_widths:
      if width == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        channels = width
    self.features = nn.Sequential(*layers)
    fcs, size = [], channels * 6 * 4
    for width in fc_widths:
      fcs += [nn.Linear(size, width), nn.ReLU(True)]
      size = width
    self.embeddings = nn.Sequential(*fcs)

  def forward(self, x):
    x = self.features(x)
    x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous()
    return self.embeddings(x.view(x.size(0), -1))


def test_network_matches_torch_and_stays_frozen(tmp_path):
  torch.manual_seed(0)
  reference = TorchVGG(**NARROW).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.add_(0.05 * torch.randn(p.shape))  # biases away from 0 so the final ReLU leaves most outputs positive
  examples = np.asarray(log_mel_examples(int16_to_float(clip(3.0)), num_windows=3))
  with torch.no_grad():
    expected = reference(torch.from_numpy(examples.transpose(0, 3, 1, 2).copy())).numpy()
  torch.save(reference.state_dict(), tmp_path / 'vggish.pth')
  module, params = load_vggish(tmp_path / 'vggish.pth', **NARROW)
  out = jax.jit(module.apply)({'params': params}, jnp.asarray(examples))
  assert out.shape == (3, 8) and (expected > 0).any()
  assert_close_torch(out, expected)
  # Frozen by default: no gradient reaches the parameters; trainable=True lets it through.
  def loss(m, p):
    return jnp.sum(m.apply({'params': p}, jnp.asarray(examples)))

  def grads(p):
    return tuple(jax.grad(functools.partial(loss, m))(p) for m in (module, module.clone(trainable=True)))

  frozen, trainable = jax.jit(grads)(params)
  assert all(not np.any(g) for g in jax.tree.leaves(frozen))
  assert np.any(trainable['embeddings_4']['kernel'])
  # A .safetensors copy reads the same; a missing tensor is named.
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  save_file(state, tmp_path / 'vggish.safetensors')
  _, again = load_vggish(tmp_path / 'vggish.safetensors', **NARROW)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  via_layout = load_into(jax.eval_shape(lambda: params), tmp_path / 'vggish.safetensors', layout='torchvggish')
  jax.tree.map(np.testing.assert_array_equal, via_layout, params)
  del state['features.8.bias']
  with pytest.raises(WeightsMismatchError, match='missing 1 parameters: features_8/bias'):
    load_vggish(state, **NARROW)


def test_released_layout_parameter_count():
  """The released network: 72,141,184 parameters, the 6 x 4 x 512 map flattened to 12,288 features."""
  variables = jax.eval_shape(VGGish().init, jax.random.key(0), jnp.zeros((2, 96, 64, 1)))
  shapes = jax.tree.map(lambda x: x.shape, flax.linen.unbox(variables['params']))
  assert shapes['embeddings_0']['kernel'] == (6 * 4 * 512, 4096)
  assert sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))) == 72_141_184
  assert jax.eval_shape(VGGish().apply, variables, jnp.zeros((2, 96, 64, 1))).shape == (2, 128)
