"""The AVSBench readers on fake trees in each official layout (S4, MS3, AVSS): shapes, flags, padding, mask modes,
the palette, the log-mel layout; and bad input: a missing frame, mask or audio file is named."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.avesformer import data

H, W = 6, 8


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _binary(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 2, (H, W)).astype(bool)


def _csv(path: Path, rows: list[dict]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _log_mel(path: Path, seed: int, windows: int = 5) -> np.ndarray:
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.random.default_rng(seed).standard_normal((windows, 1, 96, 64)).astype(np.float32)
  np.save(path, array)
  return array


def _s4_tree(root: Path) -> dict:
  """Two test videos and one train video; returns what was written, by (split, name)."""
  rows, written = [], {}
  for split, name, cat in (('test', 'a1', 'dog'), ('test', 'b2', 'car'), ('train', 'c3', 'dog')):
    rows.append({'name': name, 'start_time': '0', 'category': cat, 'split': split})
    frames, masks = [], []
    for k in range(1, 6):
      frame_dir = root / 's4_data/visual_frames' / split / cat / name
      frame_dir.mkdir(parents=True, exist_ok=True)
      frames.append(_rgb(10 * len(rows) + k))
      Image.fromarray(frames[-1]).save(frame_dir / f'{name}_{k}.png')
      if split == 'test' or k == 1:
        mask_dir = root / 's4_data/gt_masks' / split / cat / name
        mask_dir.mkdir(parents=True, exist_ok=True)
        masks.append(_binary(k + len(name)))
        Image.fromarray(masks[-1]).save(mask_dir / f'{name}_{k}.png')   # PIL saves bool arrays as mode '1'
    audio = _log_mel(root / 's4_data/audio_log_mel' / split / cat / f'{name}.npy', len(rows))
    written[split, name] = (np.stack(frames), np.stack(masks), audio)
  _csv(root / 's4_meta_data.csv', rows)
  return written


def test_s4_reader(tmp_path):
  written = _s4_tree(tmp_path)
  test = data.S4Source(tmp_path, 'test')
  assert len(test) == 2 and [v.name for v in test.videos] == ['a1', 'b2']
  ex = test[1]
  frames, masks, audio = written['test', 'b2']
  assert ex['frames'].shape == (5, H, W, 3) and ex['frames'].dtype == np.float32
  expected = (frames.astype(np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(ex['frames'], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ex['masks'], masks.astype(np.float32))
  np.testing.assert_array_equal(ex['audio'][..., 0], audio[:, 0])       # [5, 1, 96, 64] -> [5, 96, 64, 1]
  np.testing.assert_array_equal(ex['mask_flags'], np.ones(5))
  assert int(ex['index']) == 1
  train = data.S4Source(tmp_path, 'train')[0]
  _, train_masks, _ = written['train', 'c3']
  np.testing.assert_array_equal(train['mask_flags'], [1, 0, 0, 0, 0])     # S4 train labels frame 1 only
  np.testing.assert_array_equal(train['masks'][0], train_masks[0])
  assert not train['masks'][1:].any() and train['masks'].shape == (5, H, W)


@pytest.mark.parametrize('kind', ['frame', 'mask', 'audio', 'csv'])
def test_s4_missing_file_is_named(tmp_path, kind):
  _s4_tree(tmp_path)
  gone = {'frame': tmp_path / 's4_data/visual_frames/test/car/b2/b2_3.png',
          'mask': tmp_path / 's4_data/gt_masks/test/dog/a1/a1_5.png',
          'audio': tmp_path / 's4_data/audio_log_mel/test/car/b2.npy',
          'csv': tmp_path / 's4_meta_data.csv'}[kind]
  gone.unlink()
  with pytest.raises(data.MissingFilesError, match=str(gone)) as e:
    data.S4Source(tmp_path, 'test')
  assert e.value.paths == [gone]


def test_s4_wav_path_is_named_when_absent(tmp_path):
  _s4_tree(tmp_path)
  with pytest.raises(data.MissingFilesError, match='audio_wav/test/dog/a1.wav'):
    data.S4Source(tmp_path, 'test', audio='wav')


def test_ms3_reader_reads_mode_p_masks(tmp_path):
  name = 'vid'
  frame_dir, mask_dir = tmp_path / 'ms3_data/visual_frames' / name, tmp_path / 'ms3_data/gt_masks/val' / name
  frame_dir.mkdir(parents=True)
  mask_dir.mkdir(parents=True)
  masks = []
  for k in range(1, 6):
    Image.fromarray(_rgb(k)).save(frame_dir / f'{name}.mp4_{k}.png')
    masks.append(_binary(k))
    image = Image.fromarray(masks[-1].astype(np.uint8) * 255, 'L').convert('P')
    image.save(mask_dir / f'{name}_{k}.png')
  _log_mel(tmp_path / 'ms3_data/audio_log_mel/val' / f'{name}.npy', 0)
  _csv(tmp_path / 'ms3_meta_data.csv', [{'name': name, 'split': 'val'}])
  ex = data.MS3Source(tmp_path, 'val')[0]
  np.testing.assert_array_equal(ex['masks'], np.stack(masks).astype(np.float32))
  np.testing.assert_array_equal(ex['mask_flags'], np.ones(5))
  Image.fromarray(np.ones((H, W), np.uint8), 'L').convert('P').save(mask_dir / f'{name}_2.png')   # index 1, not 255
  with pytest.raises(ValueError, match=f'{name}_2.png'):
    data.MS3Source(tmp_path, 'val')[0]


def test_palette_is_the_voc_bit_interleaving():
  colours = data.palette()
  assert colours.shape == (71, 3)
  np.testing.assert_array_equal(colours[[0, 1, 2, 3, 7, 8, 9]],
                                [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [128, 128, 128], [64, 0, 0],
                                 [192, 0, 0]])
  assert len({tuple(c) for c in colours}) == 71
  labels = np.array([[0, 5], [70, 12]])
  np.testing.assert_array_equal(data.colours_to_labels(data.labels_to_colours(labels, colours), colours), labels)


def _avss_tree(root: Path) -> dict:
  """test: a v1s video (5 frames, 5 masks) and a v2 video (10 + 10); train: a v1s video (5 frames, 1 mask)."""
  colours = data.palette()
  (root / 'label2idx.json').write_text(json.dumps({f'class{i}': i for i in range(71)}))
  rows, labels = [], {}
  for uid, label, split in (('s1', 'v1s', 'test'), ('n2', 'v2', 'test'), ('t3', 'v1s', 'train')):
    rows.append({'uid': uid, 'label': label, 'split': split})
    base = root / label / uid
    (base / 'frames').mkdir(parents=True)
    (base / 'labels_rgb').mkdir(parents=True)
    n = 10 if label == 'v2' else 5
    masks = 1 if split == 'train' else n
    labels[uid] = np.random.default_rng(len(rows)).integers(0, 71, (masks, 12, 8))
    for i in range(n):
      Image.fromarray(_rgb(i, 12, 8)).save(base / 'frames' / f'{i}.jpg')
    for i in range(masks):
      Image.fromarray(data.labels_to_colours(labels[uid][i], colours)).save(base / 'labels_rgb' / f'{i}.png')
    _log_mel(base / 'audio.npy', len(rows), windows=10)
  _csv(root / 'metadata.csv', rows)
  return labels


def test_avss_reader_flags_padding_and_sizes(tmp_path):
  labels = _avss_tree(tmp_path)
  test = data.AVSSSource(tmp_path, 'test', audio='log_mel', image_size=6)
  assert test.classes[:2] == ['class0', 'class1'] and len(test.classes) == 71
  v1s, v2 = test[0], test[1]
  assert v1s['frames'].shape == (10, 6, 6, 3) and v1s['masks'].dtype == np.int32
  np.testing.assert_array_equal(v1s['frame_flags'], [1] * 5 + [0] * 5)
  np.testing.assert_array_equal(v1s['mask_flags'], [1] + [0] * 9)
  np.testing.assert_array_equal(v2['frame_flags'], np.ones(10))
  np.testing.assert_array_equal(v2['mask_flags'], np.ones(10))
  assert not v1s['frames'][5:].any() and not v1s['masks'][5:].any()       # zero images, all-background masks
  resized = np.asarray(Image.fromarray(labels['n2'][3].astype(np.uint8)).resize((6, 6), Image.Resampling.NEAREST))
  np.testing.assert_array_equal(v2['masks'][3], resized)                   # test: resize, nearest for masks
  train = data.AVSSSource(tmp_path, 'train', audio='log_mel', image_size=6)[0]
  np.testing.assert_array_equal(train['mask_flags'], [1] + [0] * 9)
  # train: short side (8) to 6 -> 9 x 6, centre crop rows round(1.5) = 2 .. 8
  short = np.asarray(Image.fromarray(labels['t3'][0].astype(np.uint8)).resize((6, 9), Image.Resampling.NEAREST))
  np.testing.assert_array_equal(train['masks'][0], short[2:8])
  assert not train['masks'][1:].any()


def test_avss_missing_mask_is_named(tmp_path):
  _avss_tree(tmp_path)
  gone = tmp_path / 'v2/n2/labels_rgb/7.png'
  gone.unlink()
  with pytest.raises(data.MissingFilesError, match=str(gone)):
    data.AVSSSource(tmp_path, 'test', audio='log_mel')
  with pytest.raises(data.MissingFilesError, match='v2/n2/audio.wav'):
    data.AVSSSource(tmp_path, 'test', audio='wav')


def test_log_mel_npy_with_the_wrong_shape_is_named(tmp_path):
  path = tmp_path / 'x.npy'
  np.save(path, np.zeros((4, 1, 96, 64), np.float32))
  with pytest.raises(ValueError, match='x.npy'):
    data.read_audio(path, 5)


def test_sources_feed_grain_pipelines_sharded_per_process(tmp_path):
  from mmjax.data import make_eval_pipeline, make_pipeline
  _s4_tree(tmp_path)
  source = data.S4Source(tmp_path, 'test')
  batch = make_eval_pipeline(source, global_batch_size=4, process_index=0, process_count=1)[0]
  np.testing.assert_array_equal(batch['mask'], [1, 1, 0, 0])      # the official test batch of 4, padded
  np.testing.assert_array_equal(batch['index'][:2], [0, 1])
  assert batch['frames'].shape == (4, 5, H, W, 3) and batch['audio'].shape == (4, 5, 96, 64, 1)
  shards = [make_pipeline(source, global_batch_size=2, seed=0, repeat=False, process_index=p,
                          process_count=2)[0] for p in (0, 1)]
  whole = make_pipeline(source, global_batch_size=2, seed=0, repeat=False, process_index=0, process_count=1)[0]
  np.testing.assert_array_equal(np.concatenate([s['index'] for s in shards]), whole['index'])


def test_a_mask_of_another_size_is_named(tmp_path):
  _s4_tree(tmp_path)
  bad = tmp_path / 's4_data/gt_masks/test/dog/a1/a1_2.png'
  Image.fromarray(np.zeros((H + 1, W), bool)).save(bad)
  with pytest.raises(ValueError, match=str(bad)):
    data.S4Source(tmp_path, 'test')[0]
