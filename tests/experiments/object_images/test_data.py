"""Object Images data: the loader transform, the released layouts' sources, splits, sharding and the GLB encoder."""
import gzip
import json
import struct
import zlib

import h5py
import ml_collections
import numpy as np
import pytest
import trimesh
from PIL import Image

from experiments.object_images import data, encode, omage
from mmjax.data import make_pipeline


def test_to_model_on_uint16_pixels():
  """Occupancy >= 0.5 keeps a pixel (its occupancy becomes exactly 1), below it every channel becomes -1."""
  rng = np.random.default_rng(0)
  stored = rng.integers(1, 65535, size=(2, 3, 12), dtype=np.uint16)
  stored[..., 3] = [[65535, 32768, 32767], [0, 40000, 1]]  # 0.5 * 65535 = 32767.5
  out = data.to_model(stored)
  assert out.dtype == np.float32 and out.shape == stored.shape
  occupied = np.array([[True, True, False], [False, True, False]])
  np.testing.assert_array_equal(out[~occupied], -1.0)
  np.testing.assert_array_equal(out[occupied][:, 3], 1.0)
  other = [c for c in range(12) if c != 3]
  want = stored[occupied][:, other].astype(np.float64) / 65535.0 * 2.0 - 1.0
  np.testing.assert_allclose(out[occupied][:, other], want, atol=1e-6)
  # A float omage in [0, 1] takes the same path.
  np.testing.assert_array_equal(data.to_model(stored.astype(np.float32) / np.float32(65535.0)), out)
  with pytest.raises(ValueError, match='outside'):
    data.to_model(np.full((2, 2, 12), 1.5, np.float32))
  with pytest.raises(ValueError, match='dtype'):
    data.to_model(stored.astype(np.int32))


def test_abo_classes():
  assert len(data.ABO_CLASSES) == 63 == data.NULL_LABEL and len(set(data.ABO_CLASSES)) == 63
  assert data.ABO_CLASSES.index('chair') == 12 and data.ABO_CLASSES.index('table') == 56


def _omages(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint16 [n, size, size, 12], every pixel occupied; pixel (0, 0, 0) of example i is i + 1 (its identity)."""
  arrays = rng.integers(0, 65535, size=(n, size, size, 12), dtype=np.uint16)
  arrays[..., 3] = 65535
  arrays[:, 0, 0, 0] = np.arange(1, n + 1)
  return arrays


def _identity(example: dict) -> int:
  return int(round((example['omage'][0, 0, 0] + 1.0) / 2.0 * 65535.0)) - 1


def _write_meta(path, ids, success, cate_ids, paths=None):
  table = {sid: {'success': ok, 'cate_text': data.ABO_CLASSES[c], 'cate_id': c, 'path': p}
           for sid, ok, c, p in zip(ids, success, cate_ids, paths or ids)}
  path.write_text(json.dumps(table))


@pytest.fixture
def released_64(tmp_path):
  """A tiny df_p64_m02_res64.h5 + meta json: 12 rows, rows 2 and 7 failed."""
  rng = np.random.default_rng(1)
  n = 12
  ids = [f'B0{i:08d}X' for i in range(n)]
  success = [i not in (2, 7) for i in range(n)]
  cate_ids = [int(c) for c in rng.integers(0, 63, n)]
  with h5py.File(tmp_path / 'df_p64_m02_res64.h5', 'w') as f:
    f['omage'] = _omages(n, 64, rng)
  _write_meta(tmp_path / 'df_p64_m02_res64_meta.json', ids, success, cate_ids)
  return tmp_path / 'df_p64_m02_res64.h5', ids, success, cate_ids


def test_h5_source_splits_labels_and_channels(released_64):
  h5_path, ids, success, cate_ids = released_64
  kept = [i for i in range(len(ids)) if success[i]]
  # The official generate_split: a global-RNG shuffle seeded 314, cut at round(0.9 n).
  np.random.seed(314)
  order = np.arange(len(kept))
  np.random.shuffle(order)
  cut = int(np.round(0.9 * len(kept)))
  train, val = data.OmageH5Source(h5_path), data.OmageH5Source(h5_path, split='val', channels=4)
  assert (len(train), len(val)) == (cut, len(kept) - cut)
  assert train.shape_ids == [ids[kept[i]] for i in order[:cut]]
  assert val.shape_ids == [ids[kept[i]] for i in order[cut:]]
  for source in (train, val):
    for k in range(len(source)):
      example = source[k]
      row = ids.index(source.shape_ids[k])
      assert _identity(example) == row  # h5 row i belongs to meta row i
      assert example['label'].dtype == np.int32 and int(example['label']) == cate_ids[row]
      assert example['omage'].shape == (64, 64, source.channels) and example['omage'].dtype == np.float32
  with h5py.File(h5_path) as f:
    np.testing.assert_array_equal(train[0]['omage'], data.to_model(f['omage'][ids.index(train.shape_ids[0])]))
  assert len(data.OmageH5Source(h5_path, split='all', categories=['chair', data.ABO_CLASSES[cate_ids[0]]])) == sum(
      success[i] and cate_ids[i] in (12, cate_ids[0]) for i in range(len(ids)))


def test_h5_source_sharded_over_two_processes_reads_every_example_once(released_64):
  source = data.OmageH5Source(released_64[0], split='all')
  seen = []
  for process in range(2):
    pipeline = make_pipeline(source, global_batch_size=2, seed=0, shuffle=False, repeat=False,
                             process_index=process, process_count=2)
    for batch in pipeline:
      assert batch['omage'].shape == (1, 64, 64, 12)
      seen.extend(_identity({'omage': o}) for o in batch['omage'])
  assert sorted(seen) == sorted(released_64[1].index(s) for s in source.shape_ids)


def test_h5_source_errors_name_the_file(tmp_path, released_64):
  h5_path = released_64[0]
  meta = h5_path.with_name('df_p64_m02_res64_meta.json')
  wrong_key, wrong_shape, garbage = tmp_path / 'a.h5', tmp_path / 'b.h5', tmp_path / 'c.h5'
  with h5py.File(wrong_key, 'w') as f:
    f['images'] = np.zeros((12, 64, 64, 12), np.uint16)
  with h5py.File(wrong_shape, 'w') as f:
    f['omage'] = np.zeros((12, 32, 32, 12), np.uint16)
  garbage.write_bytes(b'not an h5 file')
  for path, match in ((wrong_key, "no key 'omage'"), (wrong_shape, r'shape \[12, 32, 32, 12\]'),
                      (garbage, 'cannot read h5')):
    with pytest.raises(data.OmageDataError, match=match) as error:
      data.OmageH5Source(path, meta)
    assert str(path) in str(error.value)
  bad_meta = tmp_path / 'meta.json'
  bad_meta.write_text(json.dumps({'B01': {'success': True, 'cate_id': 1, 'path': 'x'}}))
  with pytest.raises(data.OmageDataError, match=r"lacks columns \['cate_text'\]") as error:
    data.OmageH5Source(h5_path, bad_meta)
  assert str(bad_meta) in str(error.value)
  with pytest.raises(FileNotFoundError, match='missing.h5'):
    data.OmageH5Source(tmp_path / 'missing.h5', meta)


def test_npz_sources_pool_1024_style_files(tmp_path):
  """R x R npz files (R = 64 stands in for 1024) are sparse-pooled to `size` before the loader transform."""
  rng = np.random.default_rng(2)
  ids = ['B07AAAAAAA', 'B07BBBBBBB', 'B07CCCCCCC']
  arrays = _omages(len(ids), 64, rng)
  arrays[:, 20:40, 10:30, 3] = 0  # a hole, so pooling has edge blocks
  for sid, array in zip(ids, arrays):
    (tmp_path / 'release' / 'objs' / sid).mkdir(parents=True)
    np.savez(tmp_path / 'release' / 'objs' / sid / 'omage_tensor.npz', array)
    (tmp_path / 'hf' / 'data' / sid[-1] / sid).mkdir(parents=True)
    np.savez(tmp_path / 'hf' / 'data' / sid[-1] / sid / 'objamage_tensor.npz', array.astype(np.float32) / 65535)
  meta = tmp_path / 'meta.json'
  _write_meta(meta, ids, [True] * 3, [12, 37, 56], [f'objs/{sid}' for sid in ids])
  release = data.OmageNpzSource(tmp_path / 'release', meta, split='all', size=16)
  hf = data.OmageNpzSource(tmp_path / 'hf', meta, layout='hf', split='all', size=16, channels=4)
  for k, sid in enumerate(ids):
    want = data.to_model(omage.sparse_pool(data.to_unit(arrays[k]), 16))
    np.testing.assert_array_equal(release[k]['omage'], want)
    np.testing.assert_allclose(hf[k]['omage'], want[..., :4], atol=1e-6)
    assert int(release[k]['label']) == [12, 37, 56][k] and release.shape_ids[k] == sid
  assert (release[0]['omage'][..., 3] == -1).any()  # the hole survives pooling
  unpooled = data.OmageNpzSource(tmp_path / 'release', meta, split='all', size=64)
  np.testing.assert_array_equal(unpooled[1]['omage'], data.to_model(arrays[1]))


def test_npz_source_errors_name_the_file(tmp_path):
  meta = tmp_path / 'meta.json'
  ids = ['B0KEY', 'B0SHAPE', 'B0CORRUPT', 'B0MISSING']
  _write_meta(meta, ids, [True] * 4, [0] * 4)
  for sid in ids[:3]:
    (tmp_path / sid).mkdir()
  np.savez(tmp_path / 'B0KEY' / 'omage_tensor.npz', omage=np.zeros((64, 64, 12), np.uint16))
  np.savez(tmp_path / 'B0SHAPE' / 'omage_tensor.npz', np.zeros((64, 32, 12), np.uint16))
  (tmp_path / 'B0CORRUPT' / 'omage_tensor.npz').write_bytes(b'PK\x03\x04 truncated')
  source = data.OmageNpzSource(tmp_path, meta, split='all')
  matches = {'B0KEY': "no key 'arr_0'", 'B0SHAPE': r'shape \[64, 32, 12\]', 'B0CORRUPT': 'cannot read npz',
             'B0MISSING': 'does not exist'}
  for k, sid in enumerate(source.shape_ids):
    with pytest.raises(data.OmageDataError, match=matches[sid]) as error:
      source[k]
    assert str(tmp_path / sid / 'omage_tensor.npz') in str(error.value)


def _png16_pixels(path) -> np.ndarray:
  """uint16 [H, W, 4] of a 16-bit RGBA PNG whose rows all use filter 0 (as encode writes them)."""
  blob = path.read_bytes()
  assert blob[:8] == b'\x89PNG\r\n\x1a\n'
  pos, idat, header = 8, b'', None
  while pos < len(blob):
    (length,), kind = struct.unpack('>I', blob[pos:pos + 4]), blob[pos + 4:pos + 8]
    payload = blob[pos + 8:pos + 8 + length]
    assert struct.unpack('>I', blob[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + payload)
    header = struct.unpack('>IIBBBBB', payload) if kind == b'IHDR' else header
    idat += payload if kind == b'IDAT' else b''
    pos += 12 + length
  width, height, depth, colour = header[:4]
  assert (depth, colour) == (16, 6)
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 8)
  assert (rows[:, 0] == 0).all()
  return rows[:, 1:].copy().view('>u2').reshape(height, width, 4).astype(np.uint16)


@pytest.fixture
def glb_folder(tmp_path):
  folder = tmp_path / 'glbs'
  (folder / 'sub').mkdir(parents=True)
  trimesh.creation.box((1.0, 0.5, 0.3)).export(folder / 'box.glb')
  trimesh.creation.icosphere(1).export(folder / 'sub' / 'sphere.glb')
  trimesh.creation.cylinder(0.3, 1.0, sections=8).export(folder / 'cylinder.glb')
  (folder / 'broken.glb').write_bytes(b'glTF' + bytes(range(60)))
  return folder


def test_encode_folder_converts_the_good_files_and_lists_the_corrupt_one(tmp_path, glb_folder):
  args = {'size': 16, 'resolution': 64}
  out = tmp_path / 'out'
  report = encode.encode_folder(glb_folder, out, **args)
  assert report['num_files'] == 4 and report['written'] == 3 and report['existing'] == 0
  assert [f['file'] for f in report['failed']] == [str(glb_folder / 'broken.glb')]
  assert 'GLB' in report['failed'][0]['error']
  index = json.loads((out / 'index.json').read_text())
  assert {k: v['success'] for k, v in index.items()} == {'box': True, 'broken': False, 'cylinder': True,
                                                          'sphere': True}
  stored = np.load(out / 'sphere' / 'omage_tensor.npz')['arr_0']
  assert stored.dtype == np.uint16 and stored.shape == (16, 16, 12)
  expected = omage.mesh_to_omage(data.load_glb(glb_folder / 'sub' / 'sphere.glb'), size=16, resolution=64)
  np.testing.assert_array_equal(stored, np.round(expected * 65535).astype(np.uint16))
  # The output reads back through the npz source (unlabelled: NULL_LABEL) ...
  source = data.OmageNpzSource(out, out / 'index.json', split='all', size=16)
  assert sorted(source.shape_ids) == ['box', 'cylinder', 'sphere']
  assert all(int(source[k]['label']) == data.NULL_LABEL for k in range(3))
  np.testing.assert_array_equal(source[source.shape_ids.index('sphere')]['omage'], data.to_model(stored))
  # ... a rerun keeps what exists, and the PNG format holds the same values.
  assert encode.encode_folder(glb_folder, out, **args)['existing'] == 3
  png_report = encode.encode_folder(glb_folder, tmp_path / 'png', file_format='png', **args)
  assert png_report['written'] == 3 and len(png_report['failed']) == 1
  tiled = np.concatenate([stored[..., 0:4], stored[..., 4:8], stored[..., 8:12]], axis=1)
  np.testing.assert_array_equal(_png16_pixels(tmp_path / 'png' / 'sphere' / 'omage.png'), tiled)
  with Image.open(tmp_path / 'png' / 'sphere' / 'omage.png') as image:  # a standard PNG: Pillow keeps the high bytes
    np.testing.assert_array_equal(np.asarray(image), tiled >> 8)


def test_encode_program_in_worker_processes(tmp_path, glb_folder):
  (glb_folder / 'sub' / 'sphere.glb').unlink()
  (glb_folder / 'cylinder.glb').unlink()
  config = ml_collections.ConfigDict({'encode': encode.encode_config()})
  config.encode.update(glb_dir=str(glb_folder), size=16, resolution=64, workers=2)
  report = encode.encode_program(config, str(tmp_path / 'out'))
  assert report['written'] == 1 and [f['file'] for f in report['failed']] == [str(glb_folder / 'broken.glb')]
  expected = omage.mesh_to_omage(data.load_glb(glb_folder / 'box.glb'), size=16, resolution=64)
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'box' / 'omage_tensor.npz')['arr_0'],
                                encode.to_uint16(expected))


def test_glb_folder_source_converts_on_read(glb_folder, tmp_path):
  meta = tmp_path / 'meta.json'
  _write_meta(meta, ['box', 'sphere', 'broken'], [True] * 3, [9, 61, 3])
  source = data.GlbFolderSource(glb_folder, meta_path=meta, size=16, resolution=64, channels=4)
  assert len(source) == 3 and source.num_unlabelled == 1  # cylinder has no row
  names = [path.stem for path, _ in source.samples]
  box = source[names.index('box')]
  assert box['omage'].shape == (16, 16, 4) and int(box['label']) == 9
  expected = omage.mesh_to_omage(data.load_glb(glb_folder / 'box.glb'), size=16, resolution=64)
  np.testing.assert_array_equal(box['omage'], data.to_model(expected)[..., :4])
  with pytest.raises(data.OmageDataError, match='broken.glb'):
    source[names.index('broken')]


def _gzip_text(path, text: str) -> None:
  with gzip.open(path, 'wt', encoding='utf-8', newline='') as f:
    f.write(text)


def test_abo_metadata_labels_glb_folders(glb_folder, tmp_path):
  """ABO's 3dmodels.csv.gz and listings json.gz label the GLB stems; a bad row is named by file and line."""
  csv_gz = tmp_path / '3dmodels.csv.gz'
  _gzip_text(csv_gz, '3dmodel_id,path,faces,category\nbox,x/box.glb,12,Cabinet\nsphere,e/sphere.glb,80,VASE\n'
                     'other,r/other.glb,4,book_or_journal\n')
  assert data.read_abo_labels(csv_gz, category_key='category') == {
      'box': ('cabinet', 9), 'sphere': ('vase', 61), 'other': ('book or journal', 6)}
  source = data.GlbFolderSource(glb_folder, meta_path=csv_gz, label_column='category', size=16, resolution=64,
                                channels=4)
  assert sorted((p.stem, label) for p, label in source.samples) == [('box', 9), ('sphere', 61)]
  assert source.num_unlabelled == 2  # broken, cylinder
  listings = tmp_path / 'listings_0.json.gz'
  _gzip_text(listings, '{"item_id": "A1", "3dmodel_id": "box", "product_type": [{"value": "CABINET"}]}\n'
                       '{"item_id": "A2", "product_type": [{"value": "SHOES"}]}\n\n'  # no 3D model: skipped
                       '{"item_id": "A3", "3dmodel_id": "box", "product_type": [{"value": "CABINET"}]}\n')
  assert data.read_labels(listings) == {'box': ('cabinet', 9)}
  assert encode._labels(listings) == {'box': ('cabinet', 9)}

  bad = tmp_path / 'bad.csv.gz'
  _gzip_text(bad, '3dmodel_id,category\nbox,chair\nsphere,spaceship\n')
  with pytest.raises(data.OmageDataError, match=r"bad.csv.gz, line 3 \(3dmodel_id 'sphere'\): category "
                                                r"'spaceship' is not one of the 63 ABO classes"):
    data.GlbFolderSource(glb_folder, meta_path=bad, label_column='category')
  with pytest.raises(data.OmageDataError, match=r"bad.csv.gz has no column \['product_type'\].*label_column"):
    data.read_abo_labels(bad)
  _gzip_text(bad, '3dmodel_id,category\nbox,chair\n,table\n')
  with pytest.raises(data.OmageDataError, match='bad.csv.gz, line 3: empty 3dmodel_id'):
    data.read_abo_labels(bad, category_key='category')
  _gzip_text(listings, '{"3dmodel_id": "box", "product_type": "chair"}\n{"3dmodel_id": "box", "product_type": '
                       '"sofa"}\n{not json\n')
  with pytest.raises(data.OmageDataError, match=r"listings_0.json.gz, line 2: 3dmodel_id 'box' is 'sofa' here "
                                                r"but 'chair' on line 1"):
    data.read_abo_labels(listings)
  _gzip_text(listings, '{"3dmodel_id": "box", "product_type": "chair"}\n{not json\n')
  with pytest.raises(data.OmageDataError, match='listings_0.json.gz, line 2: not JSON'):
    data.read_abo_labels(listings)
  (tmp_path / 'trunc.csv.gz').write_bytes(csv_gz.read_bytes()[:30])
  with pytest.raises(data.OmageDataError, match='cannot read ABO metadata .*trunc.csv.gz'):
    data.read_abo_labels(tmp_path / 'trunc.csv.gz', category_key='category')
