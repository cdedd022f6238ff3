"""Encode a folder of GLB files as omages: `encode_folder`, and the `encode` program (launch.py --mode encode).

Output, in the released storage (value·65535 rounded to uint16) and the 1024² release's layout, so that
`data.OmageNpzSource(out_dir, out_dir/'index.json', split=...)` reads the npz files back:
  <out_dir>/<shape_id>/omage_tensor.npz   key 'arr_0', uint16 [size, size, 12]   (file_format='npz'), or
  <out_dir>/<shape_id>/omage.png          16-bit RGBA [size, 3·size]: channels 0-3 | 4-7 | 8-11 side by side
                                          (position + occupancy, normal + red, green + blue + metal + rough)
  <out_dir>/index.json                    pandas orient='index' {shape_id: {success, cate_text, cate_id, path,
                                          file, glb, error}} of every GLB, with the meta json's columns
The shape id is the GLB file's stem (ABO: 3dmodels/original/<c>/<id>.glb). Labels come from `meta_path` (a meta json
such as df_p64_m02_res64_meta.json) when given, else cate_id = NULL_LABEL and cate_text ''.

A file that fails (unreadable, no triangles, nothing to chart, a shape id used twice) is listed in the report's
`failed` and in the index with success false; the batch never stops. Existing outputs are kept unless `overwrite`,
so a rerun resumes an interrupted batch. Files are written whole or not at all (a temporary file, then a rename).
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from experiments.object_images.data import NULL_LABEL, glb_files, load_glb, read_labels

FILE_NAMES = {'npz': 'omage_tensor.npz', 'png': 'omage.png'}
INDEX_NAME = 'index.json'


def to_uint16(omage: np.ndarray) -> np.ndarray:
  """The released storage of an omage in [0, 1]: round(value·65535) as uint16 (values are clipped to [0, 1] first,
  as the official encoder does)."""
  return np.round(np.clip(omage, 0.0, 1.0) * 65535.0).astype(np.uint16)


def png16_bytes(image: np.ndarray) -> bytes:
  """A PNG file of a 16-bit RGBA image uint16 [H, W, 4] (colour type 6, bit depth 16, filter 0 on every row)."""
  if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != 4:
    raise ValueError(f'png16_bytes takes uint16 [H, W, 4], got {image.dtype} {list(image.shape)}')
  height, width, _ = image.shape
  rows = np.ascontiguousarray(image.astype('>u2')).view(np.uint8).reshape(height, width * 8)
  raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # a leading 0: filter "none"

  def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))

  header = struct.pack('>IIBBBBB', width, height, 16, 6, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw, 6)) + chunk(b'IEND', b'')


def tile_channels(omage: np.ndarray) -> np.ndarray:
  """[S, S, 12] -> [S, 3·S, 4]: the channel groups 0-3, 4-7 and 8-11 side by side (one RGBA image)."""
  return np.concatenate([omage[..., g:g + 4] for g in range(0, omage.shape[-1], 4)], axis=1)


def _write_atomic(path: Path, payload: bytes) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(payload)
  os.replace(tmp, path)


def _npz_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.savez_compressed(buffer, arr_0=array)
  return buffer.getvalue()


def encode_file(glb: Path, out_file: Path, encode_args: dict[str, Any]) -> None:
  """Encodes one GLB to `out_file` (.npz or .png by its suffix); raises on any failure."""
  from experiments.object_images import omage as omage_lib

  stored = to_uint16(omage_lib.mesh_to_omage(load_glb(glb), **encode_args))
  out_file.parent.mkdir(parents=True, exist_ok=True)
  _write_atomic(out_file, _npz_bytes(stored) if out_file.suffix == '.npz' else png16_bytes(tile_channels(stored)))


def _encode_or_error(glb: Path, out_file: Path, encode_args: dict[str, Any]) -> str | None:
  """None on success, else the error as one line: a corrupt file must not stop the batch."""
  try:
    encode_file(glb, out_file, encode_args)
  except Exception as e:  # any failure of one file is reported, never raised
    return f'{type(e).__name__}: {e}'
  return None


def _labels(meta_path: str | os.PathLike | None) -> dict[str, tuple[str, int]]:
  if meta_path is None:
    return {}
  return read_labels(meta_path)  # a meta json, or ABO's 3dmodels.csv.gz / listings_<c>.json.gz


def encode_folder(glb_dir: str | os.PathLike, out_dir: str | os.PathLike, *, size: int = 64, resolution: int = 1024,
                  max_patches: int = 64, margin: float = 0.02, workers: int = 1, file_format: str = 'npz',
                  meta_path: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Encodes every .glb under `glb_dir` (recursively) into `out_dir` (module docstring), with a progress bar.

  Args:
    size, resolution, max_patches, margin: `omage.mesh_to_omage`'s (the release: 64, 1024, 64, 0.02).
    workers: processes encoding in parallel (spawned, so a parent holding JAX is safe); 1 encodes in this process.
    file_format: 'npz' or 'png'.
    meta_path: labels of the shape ids (`data.read_labels`: a meta json or ABO's metadata); None: unlabelled.
    overwrite: re-encode files whose output exists.

  Returns:
    The report: glb_dir, out_dir, index (its path), num_files, written, existing (kept from an earlier run),
    failed ([{'file', 'error'}] in file order) and seconds.

  Raises:
    FileNotFoundError: `glb_dir` is missing.
    ValueError: `glb_dir` holds no .glb file, or a bad argument.
    OmageDataError: `meta_path` cannot be read (see `data.read_labels`).
  """
  if file_format not in FILE_NAMES:
    raise ValueError(f"file_format must be 'npz' or 'png', got {file_format!r}")
  if workers < 1:
    raise ValueError(f'workers must be >= 1, got {workers}')

  start = time.perf_counter()
  out_dir = Path(out_dir)
  files = glb_files(glb_dir)
  if not files:
    raise ValueError(f'GLB folder {glb_dir} holds no .glb files')
  labels = _labels(meta_path)
  encode_args = {'resolution': resolution, 'size': size, 'max_patches': max_patches, 'margin': margin}
  errors: dict[Path, str] = {}
  owner: dict[str, Path] = {}
  for glb in files:
    if glb.stem in owner:
      errors[glb] = f'shape id {glb.stem!r} is also the stem of {owner[glb.stem]}; shape ids must be unique'
    else:
      owner[glb.stem] = glb
  out_file = {glb: out_dir / glb.stem / FILE_NAMES[file_format] for glb in owner.values()}
  existing = [glb for glb, path in out_file.items() if path.is_file() and not overwrite]
  todo = [glb for glb, path in out_file.items() if overwrite or not path.is_file()]
  out_dir.mkdir(parents=True, exist_ok=True)
  with tqdm(total=len(files), initial=len(existing) + len(errors), unit='glb', desc='encode',
            dynamic_ncols=True) as bar:
    def record(glb: Path, error: str | None) -> None:
      if error is not None:
        errors[glb] = error
        logging.warning('encode: %s failed: %s', glb, error)
      bar.update(1)
      bar.set_postfix(failed=len(errors))

    if workers == 1:
      for glb in todo:
        record(glb, _encode_or_error(glb, out_file[glb], encode_args))
    else:
      context = multiprocessing.get_context('spawn')
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_encode_or_error, glb, out_file[glb], encode_args): glb for glb in todo}
        for future in concurrent.futures.as_completed(futures):
          try:
            error = future.result()
          except Exception as e:  # a worker that died (e.g. BrokenProcessPool) fails its files, not the batch
            error = f'{type(e).__name__}: {e}'
          record(futures[future], error)

  index = {}
  for glb in files:
    cate_text, cate_id = labels.get(glb.stem, ('', NULL_LABEL))
    ok = glb not in errors
    # A second file with a taken shape id is indexed under its path, so that the index lists every file.
    index[glb.stem if owner[glb.stem] == glb else str(glb)] = {
        'success': ok, 'cate_text': cate_text, 'cate_id': cate_id, 'path': glb.stem if ok else '',
        'file': str(out_file[glb].relative_to(out_dir)) if ok else '', 'error': errors.get(glb, ''),
        'glb': str(glb)}
  index_path = out_dir / INDEX_NAME
  _write_atomic(index_path, json.dumps(index, indent=1).encode())
  failed = [{'file': str(glb), 'error': errors[glb]} for glb in files if glb in errors]
  return {'glb_dir': str(glb_dir), 'out_dir': str(out_dir), 'index': str(index_path), 'num_files': len(files),
          'written': len(todo) - sum(glb in errors for glb in todo), 'existing': len(existing), 'failed': failed,
          'seconds': round(time.perf_counter() - start, 3)}


def encode_config() -> ml_collections.ConfigDict:
  """config.encode with the release's settings, for `encode_program`; glb_dir ('') must be set on the command line."""
  return ml_collections.ConfigDict({
      'glb_dir': '', 'meta_path': '', 'size': 64, 'resolution': 1024, 'max_patches': 64, 'margin': 0.02,
      'workers': 1, 'format': 'npz', 'overwrite': False})


def encode_program(config: Any, workdir: str) -> dict[str, Any]:
  """launch.py --mode encode: `encode_folder(config.encode.glb_dir, workdir, ...)` with config.encode's size,
  resolution, max_patches, margin, workers, format ('npz' | 'png'), meta_path ('' for none) and overwrite."""
  e = config.encode
  if not e.glb_dir:
    raise ValueError('--mode encode needs --config.encode.glb_dir=<folder of .glb files>')
  return encode_folder(e.glb_dir, workdir, size=e.size, resolution=e.resolution, max_patches=e.max_patches,
                       margin=e.margin, workers=e.workers, file_format=e.format, meta_path=e.meta_path or None,
                       overwrite=e.overwrite)
