"""Omage -> mesh on synthetic omages (spec section 10): the six faces of a box painted as rectangular charts."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from experiments.object_images.meshing import export_glb, export_obj, grid_faces, omage_to_mesh, patch_ids

SIZE = 64
# (top, left, h, w) of the six charts: 2-pixel margins (so no two charts are 8-connected), all sizes distinct.
CHARTS = [(2, 2, 20, 18), (2, 22, 16, 20), (2, 44, 14, 12), (26, 2, 12, 22), (26, 26, 10, 10), (26, 38, 8, 15)]
# The outward normal of each box face; rows and columns run along the other two axes in increasing order, so some
# charts are wound inwards by the pixel grid and need the normal-driven flip.
NORMALS = [np.roll([s, 0.0, 0.0], a) for a in range(3) for s in (1.0, -1.0)]


def box_omage(rng: np.random.Generator) -> np.ndarray:
  """float32 [64, 64, 12] in [0, 1]: each box face (half extent 0.8) as one chart, with its own albedo/metal/rough."""
  omage = np.zeros((SIZE, SIZE, 12), np.float32)
  for (top, left, h, w), normal in zip(CHARTS, NORMALS):
    axis = int(np.argmax(np.abs(normal)))
    others = [k for k in range(3) if k != axis]
    pos = np.zeros((h, w, 3))
    pos[..., axis] = 0.8 * normal[axis]
    pos[..., others[0]] = np.linspace(-0.8, 0.8, h)[:, None]
    pos[..., others[1]] = np.linspace(-0.8, 0.8, w)[None, :]
    chart = omage[top:top + h, left:left + w]
    chart[..., 0:3] = (pos + 1) / 2
    chart[..., 3] = 1
    chart[..., 4:7] = (normal + 1) / 2
    chart[..., 7:12] = rng.uniform(0, 1, 5)
  return omage


def official_faces(occ: np.ndarray) -> np.ndarray:
  """The official `meshing_uv_map` rule re-derived with np.roll (wraps at the border): [F, 3] pixel indices."""
  index = np.arange(occ.size).reshape(occ.shape)
  out = []
  for shift in (-1, 1):
    tri = occ & np.roll(occ, shift, axis=0) & np.roll(occ, shift, axis=1)
    out.append(np.stack([index[tri], np.roll(index, shift, axis=1)[tri], np.roll(index, shift, axis=0)[tri]], 1))
  return np.concatenate(out)


def test_box_counts_positions_and_patches():
  omage = box_omage(np.random.default_rng(0))
  mesh = omage_to_mesh(omage)
  assert len(mesh.faces) == sum(2 * (h - 1) * (w - 1) for _, _, h, w in CHARTS)
  assert len(mesh.vertices) == sum(h * w for _, _, h, w in CHARTS)
  np.testing.assert_allclose(mesh.vertices, omage.reshape(-1, 12)[mesh.metadata['pixel'], :3] * 2 - 1, atol=1e-6)
  ids = patch_ids(omage)
  assert ids.max() == len(CHARTS)
  sizes = np.bincount(ids.ravel())[1:]
  assert (np.diff(sizes) <= 0).all()
  for top, left, h, w in CHARTS:
    patch = ids[top:top + h, left:left + w]
    assert (patch == patch[0, 0]).all() and (ids == patch[0, 0]).sum() == h * w


def test_orientation_agrees_with_the_painted_normals():
  omage = box_omage(np.random.default_rng(1))
  mesh = omage_to_mesh(omage)
  painted = omage.reshape(-1, 12)[mesh.metadata['pixel'][mesh.faces[:, 0]], 4:7] * 2 - 1
  assert (np.einsum('fk,fk->f', mesh.face_normals, painted) > 0.99).all()
  # Geometry only: no normals, so each chart keeps one grid winding, and the painted box needs some flipped.
  bare = omage_to_mesh(omage[..., :4])
  np.testing.assert_array_equal(bare.metadata['pixel'], mesh.metadata['pixel'])
  dots = np.einsum('fk,fk->f', bare.face_normals, painted)
  chart = patch_ids(omage).ravel()[bare.metadata['pixel'][bare.faces[:, 0]]]
  for k in range(1, len(CHARTS) + 1):
    assert len(np.unique(np.sign(dots[chart == k]))) == 1
  assert (dots < 0).any() and (dots > 0).any()


@pytest.mark.parametrize('missing', [None, (0, 0), (0, 1), (1, 0), (1, 1)])
def test_quad_and_l_shapes_follow_the_two_patterns(missing):
  occ = np.zeros((4, 4), bool)
  occ[1:3, 1:3] = True
  if missing is not None:
    occ[1 + missing[0], 1 + missing[1]] = False
  faces = grid_faces(occ)
  # Pattern 1 needs the top-left corner with its right and lower neighbours, pattern 2 the bottom-right corner with
  # its left and upper neighbours.
  expected = int(occ[1, 1] and occ[1, 2] and occ[2, 1]) + int(occ[2, 2] and occ[2, 1] and occ[1, 2])
  assert len(faces) == expected
  assert occ.ravel()[faces].all()


def test_border_wrap_is_off_by_default_and_official_with_the_flag():
  omage = np.zeros((16, 16, 4))
  omage[..., :3] = np.random.default_rng(2).uniform(0.2, 0.8, (16, 16, 3))
  omage[0:4, 5:9, 3] = 1  # touches the top border
  omage[13:16, 6:10, 3] = 1  # touches the bottom border, overlapping columns: wrapped quads join them
  omage[6:9, 0:3, 3] = 1  # touches the left border
  omage[7:11, 14:16, 3] = 1  # and the right one, overlapping rows
  occ = omage[..., 3] > 0.5
  official = official_faces(occ)
  wrapped = omage_to_mesh(omage, wrap=True)
  np.testing.assert_array_equal(wrapped.metadata['pixel'][wrapped.faces], official)
  i, j = np.divmod(official, 16)
  local = (np.ptp(i, axis=1) <= 1) & (np.ptp(j, axis=1) <= 1)
  assert 0 < local.sum() < len(official)
  plain = omage_to_mesh(omage)
  np.testing.assert_array_equal(plain.metadata['pixel'][plain.faces], official[local])


def test_pruning_and_8_connected_patches():
  omage = np.zeros((12, 12, 4))
  omage[..., :3] = 0.5
  omage[1:4, 1:4, 3] = 1  # a 3 x 3 chart: the only pixels with triangles
  omage[8, 1:6, 3] = 1  # a one-pixel-wide line
  omage[1, 8, 3] = omage[2, 9, 3] = 1  # a diagonal pair: one 8-connected component (two 4-connected ones)
  omage[10, 10, 3] = 1  # an isolated pixel
  mesh = omage_to_mesh(omage)
  assert len(mesh.vertices) == 9 and len(mesh.faces) == 8
  i, j = np.divmod(mesh.metadata['pixel'], 12)
  assert (i >= 1).all() and (i < 4).all() and (j >= 1).all() and (j < 4).all()
  ids = patch_ids(omage)
  assert ids.max() == 4
  assert ids[1, 1] == 1 and ids[8, 1] == 2 and ids[1, 8] == ids[2, 9] == 3 and ids[10, 10] == 4


def texel(image: Image.Image, uv: np.ndarray) -> np.ndarray:
  """Bilinear lookup (as a renderer samples, texel centres at half-integers) of an [H, W] image at uv [N, 2] (v up,
  row 0 at the top): float [N, C]."""
  pixels = np.asarray(image, np.float64).reshape(image.size[1], image.size[0], -1)
  h, w = pixels.shape[:2]
  x, y = uv[:, 0] * w - 0.5, (1 - uv[:, 1]) * h - 0.5
  x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  top = pixels[y0, x0] * (1 - fx) + pixels[y0, x0 + 1] * fx
  bottom = pixels[y0 + 1, x0] * (1 - fx) + pixels[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def test_uvs_sample_each_vertex_own_material():
  omage = box_omage(np.random.default_rng(3))
  mesh = omage_to_mesh(omage)
  flat = omage.reshape(-1, 12)[mesh.metadata['pixel']]
  material = mesh.visual.material
  to_u8 = lambda x: np.round(x * 255)
  np.testing.assert_allclose(texel(material.baseColorTexture, mesh.visual.uv), to_u8(flat[:, 7:10]), atol=1e-9)
  packed = texel(material.metallicRoughnessTexture, mesh.visual.uv)
  np.testing.assert_allclose(packed[:, 1], to_u8(flat[:, 11]), atol=1e-9)  # glTF: G = roughness
  np.testing.assert_allclose(packed[:, 2], to_u8(flat[:, 10]), atol=1e-9)  # B = metalness


def test_glb_export_reloads_with_the_same_mesh(tmp_path):
  mesh = omage_to_mesh(box_omage(np.random.default_rng(4)))
  path = export_glb(mesh, tmp_path / 'box.glb')
  loaded = trimesh.load(path, force='mesh', process=False)
  assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)
  np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
  np.testing.assert_allclose(loaded.visual.uv, mesh.visual.uv, atol=1e-6)
  assert loaded.visual.material.baseColorTexture.size == (SIZE, SIZE)
  np.testing.assert_array_equal(np.asarray(loaded.visual.material.metallicRoughnessTexture.convert('RGB')),
                                np.asarray(mesh.visual.material.metallicRoughnessTexture))


def test_obj_export_writes_mtl_and_textures(tmp_path):
  omage = box_omage(np.random.default_rng(5))
  mesh = omage_to_mesh(omage)
  path = export_obj(mesh, tmp_path / 'box.obj')
  mtl = (tmp_path / 'box.mtl').read_text().split('\n')
  maps = {line.split()[0]: tmp_path / line.split()[1] for line in mtl if line.startswith('map_')}
  assert set(maps) == {'map_Kd', 'map_Pr', 'map_Pm'} and all(p.is_file() for p in maps.values())
  np.testing.assert_array_equal(np.asarray(Image.open(maps['map_Pr'])),
                                np.asarray(mesh.visual.material.metallicRoughnessTexture)[..., 1])
  loaded = trimesh.load(path, process=False)
  assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)
  np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(loaded.visual.material.image.convert('RGB')),
                                np.asarray(mesh.visual.material.baseColorTexture))


@pytest.mark.parametrize('shape, match', [((64, 64), 'shape'), ((64, 64, 3), 'shape'), ((2, 8, 8, 4), 'shape')])
def test_bad_shapes_are_named(shape, match):
  with pytest.raises(ValueError, match=match):
    omage_to_mesh(np.zeros(shape))


def test_bad_values_and_empty_omages(tmp_path):
  omage = box_omage(np.random.default_rng(6))
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    omage_to_mesh(omage * 2 - 1)  # a model-space omage
  broken = omage.copy()
  broken[5, 5, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    omage_to_mesh(broken)
  with pytest.raises(ValueError, match='.glb'):
    export_glb(omage_to_mesh(omage), tmp_path / 'box.gltf')
  # Nothing occupied: an empty mesh (as the official code returns), which the exporters refuse by name.
  empty = omage_to_mesh(np.zeros((SIZE, SIZE, 12)))
  assert len(empty.vertices) == 0 and len(empty.faces) == 0
  assert patch_ids(np.zeros((SIZE, SIZE, 4))).max() == 0
  for export, name in ((export_glb, 'e.glb'), (export_obj, 'e.obj')):
    with pytest.raises(ValueError, match='no faces'):
      export(empty, tmp_path / name)
    assert not (tmp_path / name).exists()
