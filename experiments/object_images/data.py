"""Object Images data: the loader transform, ABO's classes, and random-access sources of the on-disk layouts.

Every source yields {'omage': float32 [S, S, C] in [-1, 1] (`to_model`), 'label': int32 []} with C = 4 (geometry:
position, occupancy) or 12 (plus normal, albedo, metalness, roughness), and is a plain random-access source for
`mmjax.data.make_pipeline`, which shards it per process: each process reads (and, for GLB folders, converts) only
the examples of its own batches.

Layouts of the official release (3dlg-hcvc/omages, the Hugging Face dataset 3dlg-hcvc/omages_ABO):
  `OmageH5Source`    the released 64² set: df_p64_m02_res64.h5 (key 'omage', [N, 64, 64, 12] uint16 or float) and
                     df_p64_m02_res64_meta.json, whose row i describes h5 row i.
  `OmageNpzSource`   per-shape npz files (key 'arr_0', [R, R, 12]): the 1024² tar release (<root>/<path>/
                     omage_tensor.npz, `layout='release'`; the official loader takes its meta from a pandas pickle,
                     which is never loaded here: pass a meta json with the same columns), the Hugging Face folder
                     (<root>/data/<last char of id>/<id>/objamage_tensor.npz, `layout='hf'`) or `encode_folder`'s
                     output (the release layout); R > S is reduced by `omage.sparse_pool`.
  `GlbFolderSource`  raw GLB files converted on the fly by `omage.mesh_to_omage`, labelled by a meta json or by
                     ABO's own metadata (3dmodels/metadata/3dmodels.csv.gz, listings/metadata/listings_<c>.json.gz;
                     `read_abo_labels`).

The meta json is pandas' orient='index' layout, {shape_id: {'success', 'cate_text', 'cate_id', 'path'}}, read with
json. Splits reproduce the official code (3dlg-hcvc/omages src/data/abo_datasets/omg_dataset.py, generate_split):
drop the rows without success (and those outside `categories`), shuffle their positions with
np.random.RandomState(314), and cut at round(0.9·n): the first part is 'train', the rest 'val'; 'all' keeps every
row (the paper trains on 'fullsplit').
"""
from __future__ import annotations

import json
import os
import threading
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

# ABO's 63 categories in label order (3dlg-hcvc/omages, ABO_id2label); the meta json's cate_id indexes this table.
ABO_CLASSES = (
    'air conditioner', 'bag', 'battery charger', 'bed', 'bench', 'birdhouse', 'book or journal', 'bottle rack',
    'bowl', 'cabinet', 'candle holder', 'cart', 'chair', 'clock', 'clothes hook', 'clothes rack',
    'container or basket', 'cooking pan', 'cup', 'dining set', 'dresser', 'drink coaster', 'easel',
    'electrical cable', 'exercise equipment', 'exercise mat', 'exercise weight', 'fan', 'figurine or sculpture',
    'file folder', 'fire pit', 'floor mat', 'heater', 'holder', 'instrument stand', 'jar', 'ladder', 'lamp',
    'laptop stand', 'mattress', 'mirror', 'mount', 'mouse pad', 'office appliance', 'ottoman',
    'picture frame or painting', 'pillow', 'plant or flower pot', 'rug', 'shelf', 'shredder', 'soap dispenser',
    'sofa', 'speaker stand', 'sports equipment', 'step stool', 'table', 'tent', 'trash can', 'tray', 'vanity',
    'vase', 'wagon')
NULL_LABEL = len(ABO_CLASSES)  # 63: the unconditional label of classifier-free guidance (a 64-row table)
NUM_CHANNELS = 12
META_COLUMNS = ('success', 'cate_text', 'cate_id', 'path')
SPLITS = ('train', 'val', 'all')


class OmageDataError(ValueError):
  """A data file that cannot be read as omages; the message names the file and the problem."""


def to_unit(omage: np.ndarray) -> np.ndarray:
  """float32 in [0, 1] of an omage as stored: uint16 (value·65535) is divided by 65535, floats are kept.

  Raises:
    ValueError: another dtype, or float values outside [0, 1] (nothing is clipped).
  """
  omage = np.asarray(omage)
  if omage.dtype == np.uint16:
    return omage.astype(np.float32) / np.float32(65535.0)
  if not np.issubdtype(omage.dtype, np.floating):
    raise ValueError(f'omage dtype {omage.dtype} is neither uint16 (value*65535) nor float in [0, 1]')
  lo, hi = float(omage.min(initial=0.0)), float(omage.max(initial=0.0))
  if not (0.0 <= lo and hi <= 1.0):  # also refuses NaN
    raise ValueError(f'float omage values lie in [{lo:.4g}, {hi:.4g}], outside [0, 1]')
  return omage.astype(np.float32)


def to_model(omage: np.ndarray) -> np.ndarray:
  """The paper's loader transform: float32 [..., C] in [-1, 1] of a stored omage [..., C] (C >= 4; uint16 or float).

  Scale to [0, 1] (`to_unit`), occupancy (channel 3) := occupancy >= 0.5, zero every channel of an unoccupied pixel,
  then x·2 − 1: the background is −1 in every channel and the occupancy is exactly ±1.
  """
  x = to_unit(omage)
  if x.ndim < 1 or x.shape[-1] < 4:
    raise ValueError(f'omage of shape {x.shape} has no occupancy channel (channel 3)')
  occupied = x[..., 3:4] >= 0.5
  x = np.where(occupied, x, np.float32(0.0))
  x[..., 3:4] = occupied
  return x * np.float32(2.0) - np.float32(1.0)


def read_meta(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
  """(shape_id, row) of every row of a meta json (pandas orient='index'), in file order (= h5 row order).

  Raises:
    OmageDataError: the file cannot be read or parsed, is not {id: {column: value}}, or lacks a column.
  """
  path = Path(path)
  try:
    with open(path) as f:
      table = json.load(f)
  except (OSError, ValueError) as e:
    raise OmageDataError(f'cannot read meta json {path}: {type(e).__name__}: {e}') from e
  if not isinstance(table, dict) or not all(isinstance(row, dict) for row in table.values()):
    raise OmageDataError(f"meta json {path} is not pandas' orient='index' layout {{shape_id: {{column: value}}}}")
  for shape_id, row in table.items():
    missing = [c for c in META_COLUMNS if c not in row]
    if missing:
      raise OmageDataError(f'meta json {path}: row {shape_id!r} lacks columns {missing}; expected {META_COLUMNS}')
  return list(table.items())


def split_positions(n: int, split: str, *, split_ratio: float = 0.9, seed: int = 314) -> np.ndarray:
  """Positions into n rows of `split` ('train' | 'val' | 'all'), as the official generate_split draws them:
  a RandomState(seed) shuffle of arange(n), cut at round(split_ratio·n); the shuffled order is kept."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if split == 'all':
    return np.arange(n)
  if not 0.0 < split_ratio < 1.0:
    raise ValueError(f'split_ratio must be in (0, 1), got {split_ratio}')
  index = np.arange(n)
  np.random.RandomState(seed).shuffle(index)
  cut = int(np.round(np.cumsum(np.array([split_ratio, 1.0 - split_ratio])) * n).astype(int)[0])
  return index[:cut] if split == 'train' else index[cut:]


def select_rows(meta: list[tuple[str, dict[str, Any]]], meta_path: str | os.PathLike, split: str, *,
                split_ratio: float = 0.9, seed: int = 314,
                categories: Sequence[str] | None = None) -> list[tuple[int, str, dict[str, Any]]]:
  """(row position in the file, shape_id, row) of `split`: the successful rows, of `categories` when given (names
  of ABO_CLASSES), split by `split_positions`.

  Raises:
    OmageDataError: a row's cate_id is not a label in [0, 63] (63 = NULL_LABEL: unlabelled, as `encode_folder`
      writes without labels).
    ValueError: an unknown category name.
  """
  if categories is not None:
    unknown = sorted(set(categories) - set(ABO_CLASSES))
    if unknown:
      raise ValueError(f'unknown ABO categories {unknown}; the 63 names are experiments.object_images.data.'
                       'ABO_CLASSES')
  rows = []
  for position, (shape_id, row) in enumerate(meta):
    if not row['success'] or (categories is not None and row['cate_text'] not in categories):
      continue
    if not isinstance(row['cate_id'], int) or not 0 <= row['cate_id'] <= NULL_LABEL:
      raise OmageDataError(f'meta json {meta_path}: row {shape_id!r} has cate_id {row["cate_id"]!r}, not a '
                           f'label in [0, {NULL_LABEL}] ({NULL_LABEL}: unlabelled)')
    rows.append((position, shape_id, row))
  return [rows[i] for i in split_positions(len(rows), split, split_ratio=split_ratio, seed=seed)]


ABO_METADATA_SUFFIXES = ('.csv', '.csv.gz', '.json.gz')  # 3dmodels.csv(.gz), listings_<c>.json.gz


def abo_class(value: Any) -> str:
  """The ABO_CLASSES spelling of a category value: a name ('Book or journal', 'AIR_CONDITIONER': lower case,
  underscores as spaces) or a listings-style list of {'value': name} (the first entry's)."""
  if isinstance(value, list) and value and isinstance(value[0], dict):
    value = value[0].get('value', '')
  return ' '.join(str(value).replace('_', ' ').lower().split())


def read_abo_labels(path: str | os.PathLike, *, category_key: str = 'product_type',
                    id_key: str = '3dmodel_id') -> dict[str, tuple[str, int]]:
  """{3D model id: (class name, label)} of ABO's metadata, the labels of raw GLB folders (<id>.glb).

  `path` is a csv (3dmodels/metadata/3dmodels.csv.gz or a plain .csv, one row per model, columns `id_key` and
  `category_key`) or ABO's listings (listings/metadata/listings_<c>.json.gz: one product per line; products without
  `id_key` have no 3D model and are skipped, `category_key` may be a list of {'value': ...} as ABO's product_type
  is). Category values name one of the 63 ABO_CLASSES (`abo_class`).

  Raises:
    FileNotFoundError: `path` is missing.
    OmageDataError: an unreadable file, a csv without the two columns, or a row (named by its line number) with an
      empty id, a category outside ABO_CLASSES, or a label that contradicts an earlier row of the same model.
  """
  import csv
  import gzip

  path = Path(path)
  name = path.name.lower()
  if not name.endswith(ABO_METADATA_SUFFIXES):
    raise OmageDataError(f'ABO metadata {path}: expected a file ending in one of {ABO_METADATA_SUFFIXES}')
  if not path.is_file():
    raise FileNotFoundError(f'ABO metadata {path} does not exist')
  opener = gzip.open if name.endswith('.gz') else open
  labels: dict[str, tuple[str, int]] = {}
  first_line: dict[str, int] = {}
  try:
    with opener(path, 'rt', encoding='utf-8', newline='') as f:
      if name.endswith('.json.gz'):
        rows = ((line, _json_line(path, line, text)) for line, text in enumerate(f, 1) if text.strip())
      else:
        reader = csv.DictReader(f)
        missing = [k for k in (id_key, category_key) if k not in (reader.fieldnames or ())]
        if missing:
          raise OmageDataError(f'ABO metadata {path} has no column {missing} (columns: {reader.fieldnames}); set the '
                               'category column with --config.data.label_column')
        rows = ((reader.line_num, row) for row in reader)
      for line, row in rows:
        if not isinstance(row, dict):
          raise OmageDataError(f'ABO metadata {path}, line {line}: expected a JSON object, got {type(row).__name__}')
        shape_id = str(row.get(id_key) or '').strip()
        if not shape_id:
          if name.endswith('.json.gz'):
            continue  # a listing without a 3D model
          raise OmageDataError(f'ABO metadata {path}, line {line}: empty {id_key}')
        cate_text = abo_class(row.get(category_key, ''))
        if cate_text not in ABO_CLASSES:
          raise OmageDataError(f'ABO metadata {path}, line {line} ({id_key} {shape_id!r}): {category_key} '
                               f'{row.get(category_key)!r} is not one of the 63 ABO classes '
                               '(experiments.object_images.data.ABO_CLASSES)')
        label = (cate_text, ABO_CLASSES.index(cate_text))
        if labels.setdefault(shape_id, label) != label:
          raise OmageDataError(f'ABO metadata {path}, line {line}: {id_key} {shape_id!r} is {cate_text!r} here but '
                               f'{labels[shape_id][0]!r} on line {first_line[shape_id]}')
        first_line.setdefault(shape_id, line)
  except (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error) as e:
    if isinstance(e, OmageDataError):
      raise
    raise OmageDataError(f'cannot read ABO metadata {path}: {type(e).__name__}: {e}') from e
  return labels


def _json_line(path: Path, line: int, text: str) -> Any:
  try:
    return json.loads(text)
  except ValueError as e:
    raise OmageDataError(f'ABO metadata {path}, line {line}: not JSON ({e})') from e


def read_labels(path: str | os.PathLike, *, category_key: str = 'product_type') -> dict[str, tuple[str, int]]:
  """{shape id: (class name, label)} of a labels file: ABO's metadata (`read_abo_labels`, by the file's suffix) or a
  meta json (its successful rows' cate_text and cate_id; see `read_meta`)."""
  if Path(path).name.lower().endswith(ABO_METADATA_SUFFIXES):
    return read_abo_labels(path, category_key=category_key)
  return {shape_id: (row['cate_text'], row['cate_id'])
          for _, shape_id, row in select_rows(read_meta(path), path, 'all')}


def _check_channels(channels: int) -> int:
  if channels not in (4, NUM_CHANNELS):
    raise ValueError(f'channels must be 4 (geometry) or 12 (geometry and material), got {channels}')
  return channels


def _example(omage: np.ndarray, label: int, channels: int, where: str) -> dict[str, np.ndarray]:
  """The example of a stored omage; `where` names its file (and row) in an error."""
  try:
    model = to_model(omage)
  except ValueError as e:
    raise OmageDataError(f'{where}: {e}') from e
  return {'omage': np.ascontiguousarray(model[..., :channels]), 'label': np.asarray(label, np.int32)}


def _check_omage(array: np.ndarray, path: Path, what: str) -> None:
  """Raises OmageDataError naming `path` unless `array` is a square [R, R, 12] omage."""
  if array.ndim != 3 or array.shape[0] != array.shape[1] or array.shape[2] != NUM_CHANNELS:
    raise OmageDataError(f'{what} in {path} has shape {list(array.shape)}, expected [R, R, {NUM_CHANNELS}]')


class OmageH5Source:
  """Examples of the released 64² omages: {'omage': float32 [64, 64, C] in [-1, 1], 'label': int32 [] (cate_id)}.

  Reads h5 row i (key 'omage') for meta row i; the h5 file is opened on first read in each process.
  """

  def __init__(self, h5_path: str | os.PathLike, meta_path: str | os.PathLike | None = None, *,
               split: str = 'train', channels: int = NUM_CHANNELS, split_ratio: float = 0.9, seed: int = 314,
               categories: Sequence[str] | None = None):
    """Checks the files and selects the split.

    Args:
      h5_path: df_p64_m02_res64.h5.
      meta_path: its meta json; default: the h5 path with '.h5' replaced by '_meta.json'.
      split, split_ratio, seed, categories: see `select_rows` ('all' keeps every successful row).
      channels: 4 (geometry) or 12.

    Raises:
      FileNotFoundError: a file is missing.
      OmageDataError: the h5 cannot be opened, lacks key 'omage', its shape is not [N, 64, 64, 12] with N the
        meta's row count, or the meta json is bad.
    """
    self.h5_path = Path(h5_path)
    self.meta_path = Path(meta_path) if meta_path is not None else self.h5_path.with_name(
        self.h5_path.name.removesuffix('.h5') + '_meta.json')
    self.channels = _check_channels(channels)
    self.split = split
    for path in (self.h5_path, self.meta_path):
      if not path.is_file():
        raise FileNotFoundError(f'omage file {path} does not exist')
    meta = read_meta(self.meta_path)
    try:
      with h5py.File(self.h5_path, 'r') as f:
        if 'omage' not in f:
          raise OmageDataError(f"h5 file {self.h5_path} has no key 'omage' (keys: {sorted(f.keys())})")
        shape, dtype = f['omage'].shape, f['omage'].dtype
    except OSError as e:
      raise OmageDataError(f'cannot read h5 file {self.h5_path}: {e}') from e
    if len(shape) != 4 or shape[1:] != (64, 64, NUM_CHANNELS) or shape[0] != len(meta):
      raise OmageDataError(f"h5 file {self.h5_path}: 'omage' has shape {list(shape)}, expected "
                           f'[{len(meta)}, 64, 64, {NUM_CHANNELS}] ({len(meta)} rows in {self.meta_path})')
    if dtype != np.uint16 and not np.issubdtype(dtype, np.floating):
      raise OmageDataError(f"h5 file {self.h5_path}: 'omage' has dtype {dtype}, expected uint16 or float")
    self.rows = select_rows(meta, self.meta_path, split, split_ratio=split_ratio, seed=seed, categories=categories)
    self.shape_ids = [shape_id for _, shape_id, _ in self.rows]
    self._file = None
    self._pid = None

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    position, _, row = self.rows[index]
    if self._file is None or self._pid != os.getpid():  # an h5py handle does not survive a fork
      self._file, self._pid = h5py.File(self.h5_path, 'r'), os.getpid()
    return _example(self._file['omage'][position], row['cate_id'], self.channels,
                    f"h5 file {self.h5_path}, 'omage' row {position}")

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, '_file': None, '_pid': None}

  def __repr__(self) -> str:
    return f'OmageH5Source({str(self.h5_path)!r}, split={self.split!r}, {len(self)} shapes, C={self.channels})'


# np.load parses .npy headers with ast.literal_eval, which is not thread-safe on Python 3.11 < 3.11.8 (Grain's reader
# threads crashed with "AST constructor recursion depth mismatch"); reads of npz files are serialised.
_NPZ_LOCK = threading.Lock()


def load_npz_omage(path: str | os.PathLike) -> np.ndarray:
  """The omage [R, R, 12] (uint16 or float, as stored) of an npz file's 'arr_0'.

  Raises:
    OmageDataError: the file is missing or unreadable, lacks 'arr_0', or the array is not [R, R, 12].
  """
  path = Path(path)
  try:
    with _NPZ_LOCK:
      array = _read_arr_0(path)
  except OmageDataError:
    raise
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:  # missing, truncated or foreign
    raise OmageDataError(f'cannot read npz file {path}: {type(e).__name__}: {e}') from e
  _check_omage(array, path, "'arr_0'")
  return array


def _read_arr_0(path: Path) -> np.ndarray:
  """'arr_0' of the npz file at `path` (OmageDataError for a plain .npy file or a missing key)."""
  data = np.load(path, allow_pickle=False)
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise OmageDataError(f'{path} holds a single array, not an npz archive with key \'arr_0\'')
  with data:
    if 'arr_0' not in data.files:
      raise OmageDataError(f"npz file {path} has no key 'arr_0' (keys: {data.files})")
    return data['arr_0']


def pool_to(omage: np.ndarray, size: int, path: str | os.PathLike) -> np.ndarray:
  """[size, size, 12] of a stored omage [R, R, 12]: as is when R == size, else `omage.sparse_pool` of its [0, 1]
  values (float32); OmageDataError naming `path` when size does not divide R."""
  resolution = omage.shape[0]
  if resolution == size:
    return omage
  if resolution % size:
    raise OmageDataError(f'omage in {path} is {resolution}² pixels, which {size}² blocks do not tile')
  from experiments.object_images import omage as omage_lib  # trimesh and xatlas, only for pooling and meshes

  return omage_lib.sparse_pool(to_unit(omage), size)


class OmageNpzSource:
  """Examples of per-shape npz omages: {'omage': float32 [size, size, C] in [-1, 1], 'label': int32 [] (cate_id)}.

  Files (key 'arr_0', [R, R, 12] uint16 or float; R > size is sparse-pooled): with `layout='release'`
  <root>/<path column>/omage_tensor.npz (the 1024² tar release and `encode_folder`'s output), with `layout='hf'`
  <root>/data/<last char of id>/<id>/objamage_tensor.npz (the Hugging Face dataset 3dlg-hcvc/omages_ABO).
  """

  FILE_NAMES = {'release': 'omage_tensor.npz', 'hf': 'objamage_tensor.npz'}

  def __init__(self, root: str | os.PathLike, meta_path: str | os.PathLike, *, layout: str = 'release',
               split: str = 'train', size: int = 64, channels: int = NUM_CHANNELS, split_ratio: float = 0.9,
               seed: int = 314, categories: Sequence[str] | None = None):
    """Reads the meta json and selects the split; files are read when their example is.

    Raises:
      FileNotFoundError: `root` is missing.
      OmageDataError: the meta json is missing or bad (see `read_meta`, `select_rows`).
    """
    if layout not in self.FILE_NAMES:
      raise ValueError(f"layout must be 'release' or 'hf', got {layout!r}")
    self.root, self.meta_path, self.layout = Path(root), Path(meta_path), layout
    if not self.root.is_dir():
      raise FileNotFoundError(f'omage folder {self.root} does not exist')
    self.size, self.channels, self.split = size, _check_channels(channels), split
    self.rows = select_rows(read_meta(self.meta_path), self.meta_path, split, split_ratio=split_ratio, seed=seed,
                            categories=categories)
    self.shape_ids = [shape_id for _, shape_id, _ in self.rows]

  def file(self, index: int) -> Path:
    """The npz file of example `index`."""
    _, shape_id, row = self.rows[index]
    folder = Path(row['path']) if self.layout == 'release' else Path('data', shape_id[-1], shape_id)
    return self.root / folder / self.FILE_NAMES[self.layout]

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    path = self.file(index)
    if not path.is_file():
      raise OmageDataError(f'omage file {path} (shape {self.rows[index][1]!r}) does not exist')
    return _example(pool_to(load_npz_omage(path), self.size, path), self.rows[index][2]['cate_id'], self.channels,
                    f'npz file {path}')

  def __repr__(self) -> str:
    return (f'OmageNpzSource({str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, {len(self)} shapes, '
            f'size={self.size}, C={self.channels})')


def load_glb(path: str | os.PathLike) -> Any:
  """The trimesh.Scene of a GLB file (its parts keep their own materials; `omage.mesh_to_omage` joins them).

  Raises:
    OmageDataError: trimesh cannot read the file, or it holds no triangles.
  """
  import trimesh  # a heavy import that only GLB input needs

  path = Path(path)
  try:
    scene = trimesh.load(path, file_type='glb', force='scene')
  except Exception as e:  # trimesh raises many types (ValueError, KeyError, struct.error, ...) on a corrupt file
    raise OmageDataError(f'cannot read GLB file {path}: {type(e).__name__}: {e}') from e
  if not any(len(getattr(g, 'faces', ())) for g in scene.geometry.values()):
    raise OmageDataError(f'GLB file {path} holds no triangles')
  return scene


def glb_files(root: str | os.PathLike) -> list[Path]:
  """Sorted .glb files (any case) under `root`, searched recursively (ABO: 3dmodels/original/<c>/<id>.glb)."""
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'GLB folder {root} does not exist')
  return sorted(p for p in root.rglob('*') if p.suffix.lower() == '.glb' and p.is_file())


class GlbFolderSource:
  """Examples {'omage': float32 [size, size, C] in [-1, 1], 'label': int32 []} of GLB files, each converted by
  `omage.mesh_to_omage` when read (about the cost of one encode per example: cache with `encode_folder` for
  training). Labels are those of the file's stem (the shape id) in `meta_path` (`read_labels`: a meta json, or
  ABO's 3dmodels.csv.gz / listings_<c>.json.gz with the category in column `label_column`), or NULL_LABEL without
  one; with labels, files without one are left out (their count is `num_unlabelled`).
  """

  def __init__(self, root: str | os.PathLike, *, meta_path: str | os.PathLike | None = None, split: str = 'all',
               size: int = 64, resolution: int = 1024, max_patches: int = 64, margin: float = 0.02,
               channels: int = NUM_CHANNELS, split_ratio: float = 0.9, seed: int = 314,
               label_column: str = 'product_type'):
    """Lists the files; `split` splits them in sorted order like `select_rows`.

    Raises:
      FileNotFoundError: `root` (or `meta_path`) is missing.
      ValueError: `root` holds no .glb file.
      OmageDataError: a bad labels file (see `read_labels`).
    """
    self.root = Path(root)
    files = glb_files(self.root)
    if not files:
      raise ValueError(f'GLB folder {self.root} holds no .glb files')
    self.channels, self.split = _check_channels(channels), split
    self.encode_args = {'resolution': resolution, 'size': size, 'max_patches': max_patches, 'margin': margin}
    if meta_path is None:
      labelled = [(path, NULL_LABEL) for path in files]
    else:
      ids = read_labels(meta_path, category_key=label_column)
      labelled = [(path, ids[path.stem][1]) for path in files if path.stem in ids]
    self.num_unlabelled = len(files) - len(labelled)
    self.samples = [labelled[i] for i in split_positions(len(labelled), split, split_ratio=split_ratio, seed=seed)]

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    from experiments.object_images import omage as omage_lib

    path, label = self.samples[index]
    try:
      omage = omage_lib.mesh_to_omage(load_glb(path), **self.encode_args)
    except ValueError as e:  # OmageDataError from load_glb, or a mesh mesh_to_omage cannot chart
      raise OmageDataError(f'cannot encode GLB file {path}: {e}') from e
    return _example(omage, label, self.channels, f'GLB file {path}')

  def __repr__(self) -> str:
    return f'GlbFolderSource({str(self.root)!r}, split={self.split!r}, {len(self)} files, C={self.channels})'
