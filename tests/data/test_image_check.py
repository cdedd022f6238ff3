"""check_images: every file decoded up front, in parallel, with every problem listed in one error."""
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from mmjax.data import ImageReadError, check_images, image_check


def _png(path, seed=0):
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
  return path


def test_every_problem_is_listed_at_once(tmp_path, capsys):
  good = [_png(tmp_path / f'ok{i}.png', i) for i in range(3)]
  truncated = _png(tmp_path / 'truncated.png')
  truncated.write_bytes(truncated.read_bytes()[:200])
  garbage = tmp_path / 'garbage.jpg'
  garbage.write_bytes(b'nonsense')
  missing = tmp_path / 'missing.png'
  folder = tmp_path / 'folder.png'
  folder.mkdir()
  paths = [good[0], truncated, garbage, good[1], missing, folder, good[2], garbage]
  with pytest.raises(ImageReadError) as info:
    check_images(paths, what='the test set')
  message = str(info.value)
  assert message.startswith('the test set: 4 of 7 image files are unreadable (1 missing, 3 do not decode):')
  assert info.value.paths == [truncated, garbage, missing, folder]  # repeats checked once, in order
  assert f'{missing}: does not exist' in message and f'{folder}: is not a file' in message
  assert f"cannot identify image file '{garbage}'" in message and f'{truncated}: OSError: image file is' in message
  assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)  # launch.py: a user error
  assert 'checking the test set' in capsys.readouterr().err  # the progress bar
  check_images(good, what='good files')


def test_the_first_problems_are_named_and_the_rest_counted(tmp_path, monkeypatch):
  monkeypatch.setattr(image_check, 'MAX_LISTED', 2)
  listing = r'5 of 5 image files.*\n  .*a0.png: .*\n  .*a1.png: .*\n  \.\.\. and 3 more$'
  with pytest.raises(ImageReadError, match=listing):
    check_images([tmp_path / f'a{i}.png' for i in range(5)], what='x', progress=False)


def test_decode_runs_the_readers_own_code_in_parallel(tmp_path):
  """`decode` sees each file once; two of them meet at a barrier, which only concurrent threads pass."""
  paths = [_png(tmp_path / f'{i}.png', i) for i in range(4)]
  barrier, seen, lock = threading.Barrier(2, timeout=10), [], threading.Lock()

  def decode(path):
    with lock:
      seen.append(path)
    if path in paths[:2]:
      barrier.wait()
    if path == paths[3]:
      raise ValueError(f'mode CMYK of {path} is refused')

  with pytest.raises(ImageReadError, match=r'1 of 4 .*\n  mode CMYK of .*3.png is refused$') as info:
    check_images(paths + paths, what='x', decode=decode, num_threads=2, progress=False)
  assert sorted(seen) == sorted(paths) and info.value.paths == [paths[3]]


def test_the_error_survives_pickling(tmp_path):
  error = ImageReadError('x: 1 of 1 image files are unreadable', [tmp_path / 'a.png'])
  copy = pickle.loads(pickle.dumps(error))
  assert str(copy) == str(error) and copy.paths == error.paths
