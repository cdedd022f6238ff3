"""The smoke data set: labelled primitive objects encoded once to small omages and cached.

Object i is one primitive of kind PRIMITIVES[i mod 5] (box, sphere, torus, cylinder, cone) with a random scale and
colour (`primitives.make_primitive`), axis-aligned and normalised into [-1, 1]^3; its label is the kind's index (0-4,
standing in for ABO class ids). Each is encoded with `omage.mesh_to_omage` at `resolution` (256) and sparse-pooled to
`size`² (variant=smoke: 32²) with a margin that keeps charts apart after pooling (two charts stay apart only when
their gap spans about two pooled pixels: 8% at 32², 4% at 64²; at the release's 2% neighbouring charts merge) and
stored in the released layout that `data.OmageNpzSource` reads: <root>/<id>/omage_tensor.npz (uint16) and
<root>/index.json.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from experiments.object_images.encode import to_uint16
from experiments.object_images.omage import mesh_to_omage, normalize_mesh
from experiments.object_images.primitives import PRIMITIVES, make_primitive

INDEX_NAME = 'index.json'


def smoke_object(index: int, rng: np.random.Generator) -> tuple[trimesh.Trimesh, int]:
  """(mesh in [-1, 1]^3, label) of smoke object `index`: one primitive of kind index mod 5, axis-aligned (random
  rotations made every omage of a kind look different, which a smoke-sized DiT does not learn in minutes)."""
  label = index % len(PRIMITIVES)
  mesh = make_primitive(PRIMITIVES[label], rng)
  mesh.visual.face_colors = np.append(rng.integers(0, 256, 3), 255).astype(np.uint8)
  return normalize_mesh(mesh), label


def smoke_dir(cache_dir: str, *, num_shapes: int, resolution: int, size: int, margin: float, seed: int) -> Path:
  """The folder of one smoke set: `cache_dir` (or $XDG_CACHE_HOME / ~/.cache + mmjax) / a name of its settings."""
  root = Path(cache_dir).expanduser() if cache_dir else (
      Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'mmjax')
  return root / f'object_images_smoke_n{num_shapes}_r{resolution}_p{size}_m{margin:g}_s{seed}'


def smoke_set(cache_dir: str, *, num_shapes: int, resolution: int = 256, size: int = 64, margin: float = 0.04,
              seed: int = 0) -> tuple[Path, Path]:
  """(root, index json) of the smoke set, encoding it on first use (objects from np.random.default_rng(seed)).

  The folder is written whole or not at all (built beside it, then renamed), so concurrent or interrupted runs
  never leave a partial set.
  """
  if num_shapes < 1:
    raise ValueError(f'config.data.smoke_shapes must be >= 1, got {num_shapes}')
  root = smoke_dir(cache_dir, num_shapes=num_shapes, resolution=resolution, size=size, margin=margin, seed=seed)
  index = root / INDEX_NAME
  if index.is_file():
    return root, index
  root.parent.mkdir(parents=True, exist_ok=True)
  build = Path(tempfile.mkdtemp(prefix=root.name + '.', dir=root.parent))
  rng = np.random.default_rng(seed)
  rows = {}
  for i in range(num_shapes):
    mesh, label = smoke_object(i, rng)
    shape_id = f'{i:05d}'
    (build / shape_id).mkdir()
    np.savez_compressed(build / shape_id / 'omage_tensor.npz',
                        arr_0=to_uint16(mesh_to_omage(mesh, resolution=resolution, size=size, margin=margin)))
    rows[shape_id] = {'success': True, 'cate_text': PRIMITIVES[label], 'cate_id': label, 'path': shape_id}
  (build / INDEX_NAME).write_text(json.dumps(rows, indent=1))
  try:
    os.rename(build, root)
  except OSError:  # another process finished the same set first
    shutil.rmtree(build)
  return root, index
