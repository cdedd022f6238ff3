"""VGGish (Hershey et al. 2017) as AVSBench uses it: the log-mel front-end in jnp and the VGG network that turns each
0.96 s window into one 128-d embedding (PCA and quantisation off, as in all AVS code).

Usage:

  examples = log_mel_examples(waveform, num_windows=5)    # float [S] at 16 kHz in [-1, 1] -> [5, 96, 64, 1]
  model = VGGish()
  variables = model.init(jax.random.key(0), examples)     # 72,141,184 parameters
  audio = model.apply(variables, examples)                # [5, 128], one embedding per second (ReLU'd, >= 0)

Front-end (torchvggish `vggish_input` / `mel_features`): 16 kHz mono; STFT with a 400-sample periodic Hann window,
160-sample hop, FFT 512, magnitude; 64 HTK-mel bands 125-7500 Hz (mel = 1127 ln(1 + f / 700), the DC bin weighted
0); log(mel + 0.01); 96-frame windows with a 96-frame (0.96 s) hop. With num_windows (5 for S4/MS3, 10 for AVSS) a
clip is cut to that many windows and a short one repeats its last window. An int16 wav becomes [-1, 1] by / 32768
(`int16_to_float`); other sample rates must be resampled (AVSBench uses resampy) before this.

Network (torchvggish `VGG`): conv3x3 64 - pool - 128 - pool - 256 - 256 - pool - 512 - 512 - pool (ReLU after each
conv, 2x2 max pools) takes [B, 96, 64, 1] to [B, 6, 4, 512], flattened in NHWC order (torchvggish transposes its
NCHW map to NHWC before the view), then FC 12288 -> 4096 -> 4096 -> 128 with a ReLU after every FC, the last one
included. Weights: `mmjax.weights.vggish.load_vggish(path_or_state_dict)` reads the released torch state dict
(vggish-10086976.pth: features.{0,3,6,8,11,13}, embeddings.{0,2,4}) or a .safetensors copy.

Frozen by default: with trainable=False (the default) the embeddings pass through `jax.lax.stop_gradient`, so no
gradient reaches VGGish. Keep its parameters out of the optimiser as well (the trainer's `load_frozen` subtree, or a
frozen group regex such as '^audio/'), since decoupled weight decay would otherwise still move them.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from mmjax.models.diffusers_blocks import Conv2d
from mmjax.nn.linear import Dense

SAMPLE_RATE = 16000
WINDOW_SAMPLES, HOP_SAMPLES = 400, 160                   # 25 ms, 10 ms at 16 kHz
FFT_LENGTH = 2 ** math.ceil(math.log2(WINDOW_SAMPLES))   # 512
NUM_BANDS, LOWER_HZ, UPPER_HZ, LOG_OFFSET = 64, 125.0, 7500.0, 0.01
EXAMPLE_FRAMES = 96                                      # 0.96 s of 10 ms frames; also the hop between examples
CONV_WIDTHS = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M')
FC_WIDTHS = (4096, 4096, 128)


def int16_to_float(samples: np.ndarray | jax.Array) -> jax.Array:
  """int16 PCM -> float32 in [-1, 1) (/ 32768, as torchvggish's wavfile_to_examples); [S] or [S, channels]."""
  return jnp.asarray(samples).astype(jnp.float32) / 32768.0


def _hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
  return 1127.0 * np.log(1.0 + hertz / 700.0)


def mel_matrix() -> np.ndarray:
  """The [257, 64] float32 matrix from STFT magnitude bins to HTK-mel bands (triangles on the mel scale, 125-7500
  Hz, bin 0 (DC) weighted 0), computed in float64 as torchvggish does."""
  bins_mel = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
  edges = np.linspace(_hertz_to_mel(np.array(LOWER_HZ)), _hertz_to_mel(np.array(UPPER_HZ)), NUM_BANDS + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins_mel[:, None] - lower) / (center - lower)
  falling = (upper - bins_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0, :] = 0.0
  return weights.astype(np.float32)


def log_mel_spectrogram(waveform: jax.Array) -> jax.Array:
  """float [S] mono 16 kHz -> log-mel frames [1 + (S - 400) // 160, 64] (float32); S must be at least 400."""
  waveform = jnp.asarray(waveform, jnp.float32)
  if waveform.ndim != 1 or waveform.shape[0] < WINDOW_SAMPLES:
    raise ValueError(f'log_mel_spectrogram needs a mono waveform [S] with S >= {WINDOW_SAMPLES} samples '
                     f'(25 ms at 16 kHz), got shape {waveform.shape}.')
  num_frames = 1 + (waveform.shape[0] - WINDOW_SAMPLES) // HOP_SAMPLES
  index = np.arange(num_frames)[:, None] * HOP_SAMPLES + np.arange(WINDOW_SAMPLES)[None, :]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW_SAMPLES * np.arange(WINDOW_SAMPLES))  # periodic
  frames = waveform[index] * jnp.asarray(hann, jnp.float32)
  magnitude = jnp.abs(jnp.fft.rfft(frames, FFT_LENGTH))
  mel = jnp.matmul(magnitude, jnp.asarray(mel_matrix()), precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + LOG_OFFSET)


def log_mel_examples(waveform: jax.Array, sample_rate: int = SAMPLE_RATE, num_windows: int | None = None
                     ) -> jax.Array:
  """A clip's VGGish input [T, 96, 64, 1] (NHWC: 96 frames x 64 bands, one channel).

  waveform: float [S] in [-1, 1], or [S, channels] (averaged to mono, as torchvggish does).
  num_windows: None keeps every complete 0.96 s window (T = 1 + (F - 96) // 96 of the F log-mel frames); an int
    gives exactly that many, cutting longer clips and repeating the last window of shorter ones (AVSBench's
    padding of clips under 5 or 10 s).
  Raises ValueError for a sample rate other than 16 kHz or a clip shorter than one window (0.975 s).
  """
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f'VGGish needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample it first (AVSBench '
                     'uses resampy.resample(x, sr, 16000)).')
  waveform = jnp.asarray(waveform, jnp.float32)
  if waveform.ndim == 2:
    waveform = jnp.mean(waveform, axis=1)
  log_mel = log_mel_spectrogram(waveform)
  count = 1 + (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES
  if count < 1:
    raise ValueError(f'The clip has {waveform.shape[0]} samples, {log_mel.shape[0]} log-mel frames; VGGish needs '
                     f'at least one window of {EXAMPLE_FRAMES} frames (15,600 samples, 0.975 s).')
  examples = log_mel[:count * EXAMPLE_FRAMES].reshape(count, EXAMPLE_FRAMES, NUM_BANDS)
  if num_windows is not None:
    examples = examples[np.minimum(np.arange(num_windows), count - 1)]
  return examples[..., None]


class VGGish(nn.Module):
  """examples [B, 96, 64, 1] (log-mel, NHWC) -> embeddings [B, 128].

  Parameters: features_{i}/{kernel [3, 3, C_in, C_out], bias} at torchvggish's Sequential indices i in
  (0, 3, 6, 8, 11, 13), embeddings_{i}/{kernel, bias} for i in (0, 2, 4). trainable=False stops gradients at the
  output (see the module docstring). conv_widths ('M' = 2x2 max pool) and fc_widths are the released network's;
  narrower ones serve tests.
  """
  trainable: bool = False
  conv_widths: tuple[int | str, ...] = CONV_WIDTHS
  fc_widths: tuple[int, ...] = FC_WIDTHS
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, examples: jax.Array) -> jax.Array:
    if examples.ndim != 4 or examples.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS, 1):
      raise ValueError(f'VGGish expects log-mel examples [B, {EXAMPLE_FRAMES}, {NUM_BANDS}, 1] (NHWC), got shape '
                       f'{examples.shape}.')
    x, index = examples, 0
    for width in self.conv_widths:
      if width == 'M':
        x = nn.max_pool(x, (2, 2), (2, 2))
        index += 1
      else:
        x = nn.relu(Conv2d(width, 3, 1, 1, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f'features_{index}')(x))
        index += 2  # the conv and its ReLU
    x = x.reshape(x.shape[0], -1)  # NHWC flatten, torchvggish's order
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    for i, width in enumerate(self.fc_widths):
      axes = ('mlp', 'embed') if i == len(self.fc_widths) - 1 else ('embed', 'mlp')
      x = nn.relu(dense(width, axes, name=f'embeddings_{2 * i}')(x))
    return x if self.trainable else jax.lax.stop_gradient(x)
