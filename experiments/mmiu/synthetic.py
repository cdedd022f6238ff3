"""A small MMIU-format set of shapes questions, for smoke runs and tests.

Written in the release's flat layout: root/all.json, images under
root/<relation>/<task key>/<key>_<i>_<j>.jpg, referenced as './<relation>/<key>/...'.
Every question asks which of 2-4 images shows the most shapes; its gold letter is computed from
the drawn scenes.
"""
from __future__ import annotations

import json
import os

import numpy as np

from experiments.mmiu.tasks import RELATION_OF_KEY
from mmjax.data.shapes import random_scene

SMOKE_KEYS = ('forensic_detection_blink', 'forensic_detection_forgerynet', 'spot_the_diff',
              'emotion_recognition_expw', 'temporal_ordering', 'jigsaw_puzzle_solving',
              'threed_cad_recognition')
_ORDINALS = ('first', 'second', 'third', 'fourth')


def write_synthetic_mmiu(root: str, *, per_key: int = 4, seed: int = 0,
                         keys: tuple[str, ...] = SMOKE_KEYS, image_size: int = 32) -> str:
  """Writes `per_key` questions for each data key in `keys`; returns the path of all.json."""
  unknown = [k for k in keys if k not in RELATION_OF_KEY]
  if unknown:
    raise ValueError(f'synthetic MMIU: unknown task keys {unknown}')
  rng = np.random.default_rng(seed)
  records = []
  for key in keys:
    relation = RELATION_OF_KEY[key]
    os.makedirs(os.path.join(root, relation, key), exist_ok=True)
    for i in range(per_key):
      n = int(rng.integers(2, 5))
      while True:
        scenes = [random_scene(rng, size=image_size) for _ in range(n)]
        counts = [len(spec.shapes) for _, spec in scenes]
        if counts.count(max(counts)) == 1:
          break
      paths = []
      for j, (image, _) in enumerate(scenes):
        rel = f'{relation}/{key}/{key}_{i}_{j}.jpg'
        image.save(os.path.join(root, rel), quality=90)
        paths.append('./' + rel)
      options = '\n'.join(f'{"ABCD"[j]}: the {_ORDINALS[j]} image' for j in range(n))
      records.append({
          'task': key, 'visual_input_component': "['synthetic_image']", 'source': 'shapes',
          'options': options, 'question': 'Which image shows the most shapes?',
          'context': (f'You are given {n} images of coloured shapes. Count the shapes in each image '
                      'and tell which image shows the most.\nSelect from the following choices.\n'
                      + options + '\n'),
          'input_image_path': paths, 'output': 'ABCD'[int(np.argmax(counts))]})
  path = os.path.join(root, 'all.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(records, f, indent=1)
  return path
