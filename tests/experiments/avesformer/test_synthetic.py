"""The synthetic smoke set: the target mask is exactly the sounding shape, the audio is its kind's tone, and the
S4-layout tree on disk reads back (through data.S4Source, .npy and wav audio) as the in-memory source; the overlays."""
import numpy as np
from PIL import Image

from experiments.avesformer import data, overlay, synthetic


def test_masks_are_the_sounding_shape():
  source = synthetic.SyntheticSource(6, seed=3, size=48, num_shapes=3)
  moved = []
  for i in range(len(source)):
    clip, ex = source.clips[i], source[i]
    rgb = overlay.denormalize(ex['frames'])
    for t in range(5):
      for k, colour in enumerate(clip.colours):
        shape = np.all(rgb[t] == colour, axis=-1)
        assert shape.sum() > 20
        if k == clip.source:
          np.testing.assert_array_equal(ex['masks'][t] > 0, shape)
        else:
          assert not (ex['masks'][t] > 0)[shape].any()
    moved.append(not np.array_equal(ex['masks'][0], ex['masks'][-1]))
  assert all(moved) and {c.source for c in source.clips} != {0}


def test_each_kind_has_its_own_sound():
  source = synthetic.SyntheticSource(12, seed=0)
  by_kind = {}
  for i, clip in enumerate(source.clips):
    by_kind.setdefault(clip.kinds[clip.source], []).append(source[i]['audio'])
  assert len(by_kind) >= 2
  assert all(a.shape == (5, 96, 64, 1) for audios in by_kind.values() for a in audios)
  peaks = {kind: int(np.argmax(audios[0][0, :, :, 0].mean(0))) for kind, audios in by_kind.items()}
  assert len(set(peaks.values())) == len(peaks)                     # distinct pitches peak in distinct mel bands
  for audios in by_kind.values():
    assert all(np.array_equal(audios[0], a) for a in audios)


def test_s4_tree_reads_back_as_the_in_memory_source(tmp_path):
  root = synthetic.write_s4_tree(tmp_path, {'train': 1, 'test': 2}, seed=7, size=32, noise=0.02)
  memory = synthetic.SyntheticSource(2, seed=int(np.random.SeedSequence([7, 1]).generate_state(1)[0]), size=32,
                                     noise=0.02)
  npy = data.S4Source(root, 'test', audio='log_mel')
  wav = data.S4Source(root, 'test', audio='wav')
  for i in range(2):
    a, b, c = npy[i], wav[i], memory[i]
    np.testing.assert_array_equal(a['frames'], c['frames'])
    np.testing.assert_array_equal(a['masks'], c['masks'])
    np.testing.assert_array_equal(a['audio'], c['audio'])
    np.testing.assert_array_equal(b['audio'], a['audio'])
  assert npy.videos[0].category == memory.clips[0].kinds[memory.clips[0].source]
  train = data.S4Source(root, 'train')[0]
  np.testing.assert_array_equal(train['mask_flags'], [1, 0, 0, 0, 0])


def test_overlays(tmp_path):
  source = synthetic.SyntheticSource(1, seed=1, size=32)
  ex = source[0]
  path = overlay.write_binary_overlays(tmp_path / 'clip.png', ex['frames'], ex['masks'], ex['masks'])
  row = np.asarray(Image.open(path))
  assert row.shape == (32, 5 * 32, 3)
  rgb = overlay.denormalize(ex['frames'][0])
  first = row[:, :32]
  inside = ex['masks'][0] > 0
  assert (first[~inside] == rgb[~inside]).all() and (first[inside] != rgb[inside]).any()
  labels = np.zeros((10, 32, 32), np.int32)
  labels[:, 4:12, 4:12] = 5
  names = [f'class{i}' for i in range(71)]
  frames = np.zeros((10, 32, 32, 3), np.float32)
  path = overlay.write_semantic_overlays(tmp_path / 'avss.png', frames, labels, names, np.array([1] * 5 + [0] * 5))
  assert np.asarray(Image.open(path)).shape == (32, 5 * 32, 3)
