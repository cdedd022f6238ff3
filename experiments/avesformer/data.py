"""AVSBench readers for S4, MS3 and AVSS in their released on-disk layouts, as random-access Grain sources.

Layouts (AVSBench's loaders; [A] marks our assumption where the release has a pickle or nothing):
  S4, root = Single-source/:
    s4_meta_data.csv                               columns name, category, split (also start_time)
    s4_data/visual_frames/{split}/{cat}/{name}/{name}_{1..5}.png          RGB, pre-resized to 224 x 224
    s4_data/gt_masks/{split}/{cat}/{name}/{name}_{k}.png                  read as PIL mode '1'; train k = 1 only
    s4_data/audio_log_mel/{split}/{cat}/{name}.npy                         [A] the .pkl's [5, 1, 96, 64] as .npy
    s4_data/audio_wav/{split}/{cat}/{name}.wav                             16 kHz PCM
  MS3, root = Multi-sources/:
    ms3_meta_data.csv                              columns name, split
    ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png
    ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png                     read as PIL mode 'P', / 255 (0/255 -> 0/1)
    ms3_data/audio_log_mel/{split}/{name}.npy                              [A] as S4
    ms3_data/audio_wav/{split}/{name}.wav                                  [A] S4's layout
  AVSS, root = the AVSBench-semantic folder:
    metadata.csv (columns uid, label in {v1s, v1m, v2}, split), label2idx.json (71 class names -> ids)
    {label}/{uid}/frames/{i}.jpg, {label}/{uid}/labels_rgb/{i}.png (i from 0), {label}/{uid}/audio.wav
    {label}/{uid}/audio.npy                                                [A] precomputed [10, 1, 96, 64] log-mel
    Colour masks map to class ids through the 71-entry bit-interleaved palette (`palette`; a colour outside it maps
    to 0, as AVSBench's argmax over all-false matches does). v1 clips have 5 frames, zero-padded to 10:
    frame_flags (vid_temporal_mask_flag) is 1 for real frames; mask_flags (gt_temporal_mask_flag) marks supervised
    frames (v1s: frame 0 only, v1m: 0-4, v2: all 10); padded frames are zero images with all-background masks.
    Sizes: train = short side to image_size (bilinear; masks nearest) + centre crop; val / test = resize to
    image_size x image_size.

Every example (all three readers, and the synthetic sets) is a dict of numpy arrays:
  frames      float32 [T, H, W, 3]   ImageNet-normalised ((x / 255 - mean) / std), zeros for padded frames
  audio       float32 [T, 96, 64, 1] VGGish log-mel windows, one per second
  masks       float32 [T, H, W] in {0, 1} (S4 / MS3), int32 [T, H, W] class ids (AVSS); zeros where unlabelled
  frame_flags float32 [T]            1 for a real frame (vid_temporal_mask_flag)
  mask_flags  float32 [T]            1 for a supervised frame (gt_temporal_mask_flag); S4 train: frame 1 only
  index       int32 []               the video's position in the split; `source.videos[index]` names it
T = 5 for S4 / MS3 and 10 for AVSS. Audio comes from `.npy` log-mel (audio='log_mel') or from the wav through
`mmjax.models.vggish.log_mel_examples` (audio='wav', imported on first use); pickles are never loaded.

The sources are random-access (`__len__`, `__getitem__`); `mmjax.data.make_pipeline` / `make_eval_pipeline` shard
them per process. The official test protocol reads the split unshuffled in csv order, batch 4 (metrics.py).
Every file a split needs is checked when the source is built: a missing one raises `MissingFilesError` naming it.
"""
from __future__ import annotations

import csv
import functools
import json
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
AUDIO_MODES = ('log_mel', 'wav')
AVSS_LABELS = ('v1s', 'v1m', 'v2')
AVSS_NUM_CLASSES = 71
AVSS_FRAMES = 10
V1_FRAMES = 5
MAX_LISTED = 10


class MissingFilesError(FileNotFoundError):
  """Files a split needs are absent; `paths` lists all of them."""

  def __init__(self, message: str, paths: list[Path]):
    super().__init__(message)
    self.paths = paths


@dataclass(frozen=True)
class Video:
  """One video of a split. frames / masks: paths in frame order (masks of the first len(masks) frames; the rest read
  as zeros); category: S4's category folder, AVSS's label (v1s / v1m / v2), '' for MS3."""
  name: str
  split: str
  category: str
  frames: tuple[Path, ...]
  masks: tuple[Path, ...]
  audio: Path
  frame_flags: tuple[float, ...]
  mask_flags: tuple[float, ...]


def palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
  """int32 [C, 3]: AVSBench's colour for class id j, its bits interleaved over R, G, B from the high bit down (the
  PASCAL VOC colour map): bit 3i of j -> bit 7-i of R, 3i+1 -> G, 3i+2 -> B."""
  colours = np.zeros((num_classes, 3), np.int32)
  for j in range(num_classes):
    lab, shift = j, 7
    while lab > 0:
      for channel in range(3):
        colours[j, channel] |= ((lab >> channel) & 1) << shift
      shift -= 1
      lab >>= 3
  return colours


def colours_to_labels(rgb: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """int32 [H, W] class ids of an RGB mask [H, W, 3]: the index of the palette colour each pixel equals (0 when it
  equals none, as AVSBench's argmax over an all-false match does)."""
  match = np.all(np.asarray(rgb, np.int32)[:, :, None, :] == colours[None, None], axis=-1)   # [H, W, C]
  return np.argmax(match, axis=-1).astype(np.int32)


def labels_to_colours(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """uint8 [..., 3]: the palette colour of each class id."""
  return colours[np.asarray(labels)].astype(np.uint8)


def normalize(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 ImageNet-normalised, as ToTensor + Normalize."""
  return ((np.asarray(rgb, np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _open(path: Path, mode: str) -> Image.Image:
  try:
    with Image.open(path) as image:
      return image.convert(mode)
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise OSError(f'cannot read image {path}: {type(e).__name__}: {e}') from e


def read_frame(path: Path, size: tuple[str, int] | None = None) -> np.ndarray:
  """float32 [H, W, 3] normalised frame; size = ('crop' | 'resize', S) applies AVSS's train / test sizing."""
  return normalize(np.asarray(_sized(_open(path, 'RGB'), size, Image.Resampling.BILINEAR)))


def _sized(image: Image.Image, size: tuple[str, int] | None, resample: Image.Resampling) -> Image.Image:
  if size is None:
    return image
  how, s = size
  if how == 'resize':
    return image.resize((s, s), resample)
  w, h = image.size
  ow, oh = (int(1.0 * w * s / h), s) if w > h else (s, int(1.0 * h * s / w))
  image = image.resize((ow, oh), resample)
  x1, y1 = int(round((ow - s) / 2.0)), int(round((oh - s) / 2.0))
  return image.crop((x1, y1, x1 + s, y1 + s))


def read_binary_mask(path: Path, mode: str) -> np.ndarray:
  """float32 [H, W] in {0, 1}: mode '1' (S4: PIL's 1-bit conversion) or 'P' (MS3: palette indices / 255)."""
  image = _open(path, mode)
  if mode == '1':
    return np.asarray(image, np.float32)
  values = np.asarray(image, np.float32) / np.float32(255)
  if not np.all((values == 0) | (values == 1)):
    raise ValueError(f'mask {path}: mode-P values must be 0 or 255 (AVSBench reads them / 255 as 0/1), got '
                     f'{sorted(set(np.unique(np.asarray(image)).tolist()))[:8]}')
  return values


def read_label_mask(path: Path, colours: np.ndarray, size: tuple[str, int] | None = None) -> np.ndarray:
  """int32 [H, W] class ids of an AVSS colour mask (nearest-neighbour sizing)."""
  return colours_to_labels(np.asarray(_sized(_open(path, 'RGB'), size, Image.Resampling.NEAREST)), colours)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
  """(float32 [S] or [S, channels] in [-1, 1), sample rate) of a 16-bit PCM wav (int16 / 32768, as torchvggish)."""
  try:
    with wave.open(str(path), 'rb') as w:
      width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
      raw = w.readframes(w.getnframes())
  except (OSError, EOFError, wave.Error) as e:
    raise OSError(f'cannot read wav {path}: {type(e).__name__}: {e}') from e
  if width != 2:
    raise ValueError(f'wav {path}: {8 * width}-bit samples; the reader takes 16-bit PCM (convert it)')
  samples = np.frombuffer(raw, '<i2').astype(np.float32) / np.float32(32768)
  return (samples if channels == 1 else samples.reshape(-1, channels)), rate


def read_audio(path: Path, num_windows: int) -> np.ndarray:
  """float32 [num_windows, 96, 64, 1] log-mel of `path`: a .npy [num_windows, 1, 96, 64] (the pickles' layout) or a
  wav through mmjax.models.vggish.log_mel_examples (short clips repeat their last window)."""
  if path.suffix == '.npy':
    array = np.load(path, allow_pickle=False)
    if array.shape != (num_windows, 1, 96, 64):
      raise ValueError(f'log-mel {path}: shape {array.shape}, expected ({num_windows}, 1, 96, 64)')
    return np.ascontiguousarray(np.transpose(array, (0, 2, 3, 1)), np.float32)
  from mmjax.models.vggish import log_mel_examples
  samples, rate = read_wav(path)
  try:
    return np.asarray(log_mel_examples(samples, rate, num_windows=num_windows), np.float32)
  except ValueError as e:
    raise ValueError(f'wav {path}: {e}') from e


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
  """The rows of `path` as dicts; raises naming the file when it or one of `columns` is missing."""
  if not path.is_file():
    raise MissingFilesError(f'index file {path} is missing', [path])
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  header = list(rows[0]) if rows else []
  missing = [c for c in columns if c not in header]
  if missing:
    raise ValueError(f'{path}: missing column(s) {missing}; found {header}')
  return rows


def _check_files(videos: list[Video], what: str) -> None:
  missing = []
  for v in videos:
    for kind, paths in (('frame', v.frames), ('mask', v.masks), ('audio', (v.audio,))):
      missing += [(kind, v.name, p) for p in paths if not p.is_file()]
  if missing:
    listed = [f'{kind} {p} (video {name})' for kind, name, p in missing[:MAX_LISTED]]
    more = f'\n  ... and {len(missing) - MAX_LISTED} more' if len(missing) > MAX_LISTED else ''
    raise MissingFilesError(f'{what}: {len(missing)} file(s) missing, the first: {listed[0]}\n  ' +
                            '\n  '.join(listed) + more, [p for _, _, p in missing])


class AVSSource:
  """Random-access source over `videos` (see the module docstring for the example schema): T = num_frames, frames
  read by `frame_reader(path)`, masks by `mask_reader(path)` into `mask_dtype` arrays."""

  def __init__(self, videos: list[Video], what: str, *, num_frames: int, frame_reader: Callable[[Path], np.ndarray],
               mask_reader: Callable[[Path], np.ndarray], mask_dtype: type = np.float32):
    if not videos:
      raise ValueError(f'{what}: no video of this split is listed in the index file')
    _check_files(videos, what)
    self.videos, self.what, self.num_frames = videos, what, num_frames
    self.frame_reader, self.mask_reader, self.mask_dtype = frame_reader, mask_reader, mask_dtype

  def __len__(self) -> int:
    return len(self.videos)

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.what}, {len(self)} videos)'

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    video = self.videos[index]
    frames = [self.frame_reader(p) for p in video.frames]
    masks = [self.mask_reader(p) for p in video.masks]
    shape = frames[0].shape[:2]
    for path, array in zip(video.frames + video.masks, frames + masks):
      if array.shape[:2] != shape:
        raise ValueError(f'{path}: {array.shape[1]} x {array.shape[0]} pixels, but {video.frames[0].name} of the same '
                         f'video has {shape[1]} x {shape[0]}')
    filler = np.zeros(shape, self.mask_dtype)
    frames += [np.zeros_like(frames[0])] * (self.num_frames - len(frames))
    masks += [filler] * (self.num_frames - len(masks))
    return {'frames': np.stack(frames), 'audio': read_audio(video.audio, self.num_frames),
            'masks': np.stack(masks).astype(self.mask_dtype),
            'frame_flags': np.asarray(video.frame_flags, np.float32),
            'mask_flags': np.asarray(video.mask_flags, np.float32), 'index': np.int32(index)}


def _audio_path(base: Path, stem: Path, audio: str) -> Path:
  if audio not in AUDIO_MODES:
    raise ValueError(f'audio must be one of {AUDIO_MODES}, got {audio!r}')
  return base / ('audio_log_mel' if audio == 'log_mel' else 'audio_wav') / stem.with_suffix(
      '.npy' if audio == 'log_mel' else '.wav')


class S4Source(AVSSource):
  """AVSBench S4 (single source) split; masks read as mode '1'; train has the first frame's mask only."""

  def __init__(self, root: str | Path, split: str, *, audio: str = 'log_mel'):
    root = Path(root)
    rows = read_csv(root / 's4_meta_data.csv', ('name', 'category', 'split'))
    data = root / 's4_data'
    videos = []
    for row in (r for r in rows if r['split'] == split):
      name, cat = row['name'], row['category']
      labelled = 1 if split == 'train' else V1_FRAMES
      videos.append(Video(
          name, split, cat,
          tuple(data / 'visual_frames' / split / cat / name / f'{name}_{k}.png' for k in range(1, 6)),
          tuple(data / 'gt_masks' / split / cat / name / f'{name}_{k}.png' for k in range(1, labelled + 1)),
          _audio_path(data, Path(split) / cat / name, audio),
          (1.0,) * V1_FRAMES, (1.0,) * labelled + (0.0,) * (V1_FRAMES - labelled)))
    super().__init__(videos, f'AVSBench S4 {split} ({root})', num_frames=V1_FRAMES, frame_reader=read_frame,
                     mask_reader=functools.partial(read_binary_mask, mode='1'))


class MS3Source(AVSSource):
  """AVSBench MS3 (multiple sources) split; all 5 masks, read as mode 'P' / 255."""

  def __init__(self, root: str | Path, split: str, *, audio: str = 'log_mel'):
    root = Path(root)
    rows = read_csv(root / 'ms3_meta_data.csv', ('name', 'split'))
    data = root / 'ms3_data'
    videos = [Video(
        r['name'], split, '',
        tuple(data / 'visual_frames' / r['name'] / f"{r['name']}.mp4_{k}.png" for k in range(1, 6)),
        tuple(data / 'gt_masks' / split / r['name'] / f"{r['name']}_{k}.png" for k in range(1, 6)),
        _audio_path(data, Path(split) / r['name'], audio), (1.0,) * V1_FRAMES, (1.0,) * V1_FRAMES)
        for r in rows if r['split'] == split]
    super().__init__(videos, f'AVSBench MS3 {split} ({root})', num_frames=V1_FRAMES, frame_reader=read_frame,
                     mask_reader=functools.partial(read_binary_mask, mode='P'))


class AVSSSource(AVSSource):
  """AVSBench-semantic split (v1s, v1m and v2 videos, 10 frames each); masks are int32 class ids.
  `classes` lists the class names by id (label2idx.json)."""

  def __init__(self, root: str | Path, split: str, *, audio: str = 'wav', image_size: int = 224):
    root = Path(root)
    if audio not in AUDIO_MODES:
      raise ValueError(f'audio must be one of {AUDIO_MODES}, got {audio!r}')
    rows = read_csv(root / 'metadata.csv', ('uid', 'label', 'split'))
    label_file = root / 'label2idx.json'
    if not label_file.is_file():
      raise MissingFilesError(f'class index {label_file} is missing', [label_file])
    label2idx = json.loads(label_file.read_text())
    if sorted(label2idx.values()) != list(range(AVSS_NUM_CLASSES)):
      raise ValueError(f'{label_file}: expected {AVSS_NUM_CLASSES} classes with ids 0..{AVSS_NUM_CLASSES - 1}, '
                       f'got {len(label2idx)} entries')
    self.classes = [name for name, _ in sorted(label2idx.items(), key=lambda item: item[1])]
    self.colours = palette(AVSS_NUM_CLASSES)
    size = ('crop' if split == 'train' else 'resize', image_size)
    videos = []
    for row in (r for r in rows if r['split'] == split):
      uid, label = row['uid'], row['label']
      if label not in AVSS_LABELS:
        raise ValueError(f"{root / 'metadata.csv'}: video {uid} has label {label!r}; expected one of {AVSS_LABELS}")
      base = root / label / uid
      n = AVSS_FRAMES if label == 'v2' else V1_FRAMES
      labelled = 1 if (label == 'v1s' and split == 'train') else n
      supervised = 1 if label == 'v1s' else n
      videos.append(Video(
          uid, split, label, tuple(base / 'frames' / f'{i}.jpg' for i in range(n)),
          tuple(base / 'labels_rgb' / f'{i}.png' for i in range(labelled)),
          base / ('audio.npy' if audio == 'log_mel' else 'audio.wav'),
          (1.0,) * n + (0.0,) * (AVSS_FRAMES - n), (1.0,) * supervised + (0.0,) * (AVSS_FRAMES - supervised)))
    super().__init__(videos, f'AVSBench-semantic {split} ({root})', num_frames=AVSS_FRAMES,
                     frame_reader=functools.partial(read_frame, size=size),
                     mask_reader=functools.partial(read_label_mask, colours=self.colours, size=size),
                     mask_dtype=np.int32)
