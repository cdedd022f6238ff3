"""Synthetic audio-visual segmentation clips for the smoke setting: moving shapes, each kind with its own tone.

A clip has T one-second frames of `num_shapes` shapes of distinct kinds (circle, square, triangle) and distinct
colours, each moving up and down (bouncing) inside its own vertical band, so shapes never overlap. The kinds take
the bands in a random order and the colours are random, so neither position nor colour says which shape sounds.
One shape sounds for the whole clip (S4's single source); the audio is a sine at its kind's pitch (PITCHES_HZ) plus
optional white noise, and the target mask of every frame is exactly the sounding shape's pixels. Only the audio
tells a model which shape to segment; shuffling the audio across clips destroys the signal.

Two forms with the example schema of data.py ({'frames', 'audio', 'masks', 'frame_flags', 'mask_flags', 'index'}):
`SyntheticSource` (in memory) and `write_s4_tree` (AVSBench's S4 layout on disk, read back by data.S4Source, wav and
.npy log-mel). Audio features use mmjax.models.vggish.log_mel_examples (imported on first use).
"""
from __future__ import annotations

import csv
import functools
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from experiments.avesformer.data import normalize

KINDS = ('circle', 'square', 'triangle')
PITCHES_HZ = {'circle': 440.0, 'square': 660.0, 'triangle': 990.0}
COLOURS = ((220, 30, 30), (30, 160, 50), (30, 60, 220), (235, 200, 20), (160, 40, 200))
BACKGROUND = (245, 245, 245)
SAMPLE_RATE = 16000
NUM_FRAMES = 5


@dataclass(frozen=True)
class Clip:
  """One clip. kinds / colours: per shape (band order, left to right); centres: float [K, T, 2] (x, y) in pixels;
  radius: the shapes' half-extent in pixels; source: the sounding shape's index."""
  kinds: tuple[str, ...]
  colours: tuple[tuple[int, int, int], ...]
  centres: np.ndarray
  radius: float
  source: int
  size: int


def random_clip(rng: np.random.Generator, *, size: int = 64, num_frames: int = NUM_FRAMES,
                num_shapes: int = 2) -> Clip:
  """Draws a clip of `num_shapes` (1..3) shapes on a `size` x `size` canvas over `num_frames` frames."""
  if not 1 <= num_shapes <= len(KINDS):
    raise ValueError(f'num_shapes must be in 1..{len(KINDS)}, got {num_shapes}')
  if size < 16 * num_shapes:
    raise ValueError(f'size must be at least {16 * num_shapes} pixels for {num_shapes} shapes, got {size}')
  band = size / num_shapes
  radius = 0.3 * band
  kinds = tuple(KINDS[i] for i in rng.permutation(len(KINDS))[:num_shapes])
  colours = tuple(COLOURS[i] for i in rng.permutation(len(COLOURS))[:num_shapes])
  lo, hi = radius + 1, size - radius - 1
  centres = np.zeros((num_shapes, num_frames, 2))
  for k in range(num_shapes):
    centres[k, :, 0] = (k + 0.5) * band + rng.uniform(-0.1, 0.1) * band
    y, step = rng.uniform(lo, hi), rng.choice([-1, 1]) * rng.uniform(0.1, 0.25) * size
    for t in range(num_frames):
      centres[k, t, 1] = y
      y += step
      if not lo <= y <= hi:  # bounce off the edge
        step = -step
        y = float(np.clip(2 * (hi if y > hi else lo) - y, lo, hi))
  return Clip(kinds, colours, centres, radius, int(rng.integers(num_shapes)), size)


def _draw(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
  box = (cx - r, cy - r, cx + r, cy + r)
  if kind == 'circle':
    draw.ellipse(box, fill=fill)
  elif kind == 'square':
    draw.rectangle(box, fill=fill)
  else:
    draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)


def render(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 frames [T, S, S, 3], float32 masks [T, S, S] of the sounding shape in {0, 1})."""
  frames, masks = [], []
  for t in range(clip.centres.shape[1]):
    image = Image.new('RGB', (clip.size, clip.size), BACKGROUND)
    mask = Image.new('L', (clip.size, clip.size), 0)
    for k, (kind, colour) in enumerate(zip(clip.kinds, clip.colours)):
      cx, cy = clip.centres[k, t]
      _draw(ImageDraw.Draw(image), kind, cx, cy, clip.radius, colour)
      if k == clip.source:
        _draw(ImageDraw.Draw(mask), kind, cx, cy, clip.radius, 255)
    frames.append(np.asarray(image))
    masks.append(np.asarray(mask, np.float32) / 255)
  return np.stack(frames), np.stack(masks).astype(np.float32)


def tone(kind: str, seconds: float, *, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
  """float32 [seconds * 16000] in [-1, 1]: a 0.5-amplitude sine at PITCHES_HZ[kind] plus `noise`-scaled white noise."""
  t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
  wave_ = 0.5 * np.sin(2 * np.pi * PITCHES_HZ[kind] * t)
  if noise:
    wave_ = wave_ + noise * (rng or np.random.default_rng(0)).standard_normal(t.shape)
  return np.clip(wave_, -1.0, 1.0).astype(np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> int16 PCM (x 32767, rounded)."""
  return np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def log_mel(samples: np.ndarray, num_windows: int) -> np.ndarray:
  """float32 [num_windows, 96, 64, 1] VGGish log-mel of 16 kHz samples (as they read back from an int16 wav)."""
  from mmjax.models.vggish import log_mel_examples
  pcm = to_int16(samples).astype(np.float32) / np.float32(32768)
  return np.asarray(log_mel_examples(pcm, SAMPLE_RATE, num_windows=num_windows), np.float32)


@functools.lru_cache(maxsize=len(KINDS) * 4)
def _clean_log_mel(kind: str, num_frames: int) -> np.ndarray:
  return log_mel(tone(kind, num_frames), num_frames)


class SyntheticSource:
  """In-memory synthetic S4-style set: `num_clips` clips drawn from `seed`, examples as data.py's schema (T frames,
  every frame's mask labelled unless `labelled_frames` is smaller). `clips[i]` describes clip i."""

  def __init__(self, num_clips: int, *, seed: int, size: int = 64, num_frames: int = NUM_FRAMES,
               num_shapes: int = 2, noise: float = 0.0, labelled_frames: int | None = None):
    rng = np.random.default_rng(seed)
    self.clips = [random_clip(rng, size=size, num_frames=num_frames, num_shapes=num_shapes) for _ in range(num_clips)]
    self.noise_seeds = rng.integers(2 ** 31, size=num_clips)
    self.noise, self.num_frames = noise, num_frames
    self.labelled = num_frames if labelled_frames is None else labelled_frames

  def __len__(self) -> int:
    return len(self.clips)

  def waveform(self, index: int) -> np.ndarray:
    """float32 [T * 16000]: clip `index`'s audio."""
    clip = self.clips[index]
    return tone(clip.kinds[clip.source], self.num_frames, noise=self.noise,
                rng=np.random.default_rng(self.noise_seeds[index]))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    clip = self.clips[index]
    frames, masks = render(clip)
    kind = clip.kinds[clip.source]
    audio = _clean_log_mel(kind, self.num_frames) if not self.noise else log_mel(self.waveform(index), self.num_frames)
    flags = (np.arange(self.num_frames) < self.labelled).astype(np.float32)
    return {'frames': normalize(frames), 'audio': audio.copy(), 'masks': masks * flags[:, None, None],
            'frame_flags': np.ones(self.num_frames, np.float32), 'mask_flags': flags, 'index': np.int32(index)}


def write_s4_tree(root: str | Path, clips_per_split: dict[str, int], *, seed: int, size: int = 64,
                  num_shapes: int = 2, noise: float = 0.0, log_mel_npy: bool = True) -> Path:
  """Writes synthetic clips in AVSBench's S4 layout under `root` (data.py's module docstring): the csv, 5 PNG frames,
  masks as 1-bit PNGs (train: the first frame's only, as S4), a 16-bit wav and, with `log_mel_npy`, the log-mel
  .npy [5, 1, 96, 64]. Category = the sounding shape's kind. Split s draws its clips from seed (seed, s's position).
  Returns root."""
  root = Path(root)
  data = root / 's4_data'
  rows = []
  for position, (split, count) in enumerate(clips_per_split.items()):
    source = SyntheticSource(count, seed=int(np.random.SeedSequence([seed, position]).generate_state(1)[0]),
                             size=size, num_shapes=num_shapes, noise=noise)
    for i, clip in enumerate(source.clips):
      name, category = f'{split}_{i:04d}', clip.kinds[clip.source]
      rows.append({'name': name, 'start_time': '0', 'category': category, 'split': split})
      frames, masks = render(clip)
      frame_dir = data / 'visual_frames' / split / category / name
      mask_dir = data / 'gt_masks' / split / category / name
      frame_dir.mkdir(parents=True, exist_ok=True)
      mask_dir.mkdir(parents=True, exist_ok=True)
      for k in range(NUM_FRAMES):
        Image.fromarray(frames[k]).save(frame_dir / f'{name}_{k + 1}.png')
        if split != 'train' or k == 0:
          Image.fromarray((masks[k] * 255).astype(np.uint8)).convert('1').save(mask_dir / f'{name}_{k + 1}.png')
      samples = source.waveform(i)
      wav_path = data / 'audio_wav' / split / category / f'{name}.wav'
      wav_path.parent.mkdir(parents=True, exist_ok=True)
      with wave.open(str(wav_path), 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(to_int16(samples).tobytes())
      if log_mel_npy:
        npy_path = data / 'audio_log_mel' / split / category / f'{name}.npy'
        npy_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy_path, np.transpose(log_mel(samples, NUM_FRAMES), (0, 3, 1, 2)))
  with open(root / 's4_meta_data.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['name', 'start_time', 'category', 'split'])
    writer.writeheader()
    writer.writerows(rows)
  return root
