"""Mesh -> omage encoder and sparse pooling (spec sections 1-3): pooling against a skimage/loop reference, the no-gap
property, the boundary snapping rule on a hand-made block, own-UV and xatlas charts, materials, and the round trip
through meshing.omage_to_mesh."""
from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage, spatial
from skimage.transform import resize

from experiments.object_images.meshing import omage_to_mesh
from experiments.object_images.omage import (
  ALBEDO,
  METALNESS,
  NORMAL,
  OCCUPANCY,
  POSITION,
  ROUGHNESS,
  mesh_to_omage,
  sparse_pool,
)
from experiments.object_images.primitives import PRIMITIVES, make_primitive, random_object

EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope='module')
def object_1024():
  """(mesh, unpooled 1024^2 omage) of a seeded random primitive object. The margin is 4%, not the spec's 2%: at
  1024 -> 64 charts 20 px apart can land in 4-adjacent blocks, and omage_to_mesh then bridges them with long
  triangles (see mesh_to_omage); 41 px always leaves an empty block between charts."""
  mesh = random_object(np.random.default_rng(0))
  return mesh, mesh_to_omage(mesh, size=1024, margin=0.04)


def _random_omage(rng: np.random.Generator, res: int) -> np.ndarray:
  """A [res, res, 12] omage with blobby random occupancy (edge-free occupied and empty blocks both occur) and random
  values, zero where unoccupied."""
  field = ndimage.gaussian_filter(rng.normal(size=(res, res)), 6)
  omage = rng.random((res, res, 12)).astype(np.float32)
  omage[..., OCCUPANCY] = field > 0
  return omage * (field > 0)[..., None]


def test_sparse_pool_matches_reference():
  omage = _random_omage(np.random.default_rng(1), 256)
  pooled = sparse_pool(omage, 16)
  nearest = resize(omage, (16, 16, 12), order=0, anti_aliasing=False, preserve_range=True)
  occ = omage[..., OCCUPANCY] >= 0.5
  edge = occ & ~ndimage.binary_erosion(occ, EIGHT)
  kinds = set()
  for i in range(16):
    for j in range(16):
      block = (slice(16 * i, 16 * i + 16), slice(16 * j, 16 * j + 16))
      if edge[block].any():
        expected = omage[block][edge[block]].mean(0)
        kinds.add('edge')
      else:
        expected = nearest[i, j]
        kinds.add('occupied' if expected[OCCUPANCY] else 'empty')
      np.testing.assert_allclose(pooled[i, j], expected, rtol=1e-5, atol=1e-6)
  assert kinds == {'edge', 'occupied', 'empty'}


def test_sparse_pool_never_opens_gaps(object_1024):
  """Claim: the pooled occupancy equals the block-wise max of the source occupancy, exactly. So no occupied 64^2 pixel
  lacks an occupied source pixel, and every 8-connected chart at 1024^2 (even one smaller than a block) keeps at least
  one occupied pixel at 64^2, with all blocks it touches occupied."""
  for omage in (_random_omage(np.random.default_rng(2), 512), object_1024[1]):
    occ = omage[..., OCCUPANCY] >= 0.5
    pooled = sparse_pool(omage, 64)[..., OCCUPANCY] >= 0.5
    f = omage.shape[0] // 64
    block_max = occ.reshape(64, f, 64, f).any(axis=(1, 3))
    np.testing.assert_array_equal(pooled, block_max)
    labels, n = ndimage.label(occ, EIGHT)
    assert n > 1
    for k in range(1, n + 1):
      iy, ix = np.nonzero(labels == k)
      assert pooled[iy // f, ix // f].all()


def test_boundary_snapping_hand_made_block():
  """48 x 48, blocks of 16: a square occupying rows/cols 2..45. Block (0, 0) holds the square's corner, whose edge
  pixels are row 2 (cols 2..15) and col 2 (rows 3..15): it becomes their mean. Block (1, 1) is all interior: it takes
  the nearest sample, pixel (24, 24)."""
  rows, cols = np.mgrid[0:48, 0:48]
  omage = np.zeros((48, 48, 12), np.float32)
  inside = (rows >= 2) & (rows <= 45) & (cols >= 2) & (cols <= 45)
  omage[..., OCCUPANCY] = inside
  omage[..., 0] = inside * rows / 100
  omage[..., 1] = inside * cols / 100
  pooled = sparse_pool(omage, 3)
  edge_rows = np.concatenate([np.full(14, 2), np.arange(3, 16)])
  edge_cols = np.concatenate([np.arange(2, 16), np.full(13, 2)])
  np.testing.assert_allclose(pooled[0, 0, :2], [edge_rows.mean() / 100, edge_cols.mean() / 100], rtol=1e-6)
  np.testing.assert_allclose(pooled[1, 1, :2], [0.24, 0.24], rtol=1e-6)
  assert pooled[0, 0, OCCUPANCY] == 1 and pooled[1, 1, OCCUPANCY] == 1


def _cube_with_uvs() -> trimesh.Trimesh:
  """The [-1, 1]^3 cube with one UV square per side (4 corners per side, so per-side vertex normals)."""
  box = trimesh.creation.box(extents=(2, 2, 2))
  tris = box.vertices[box.faces]
  normal = box.face_normals
  axis = np.abs(normal).argmax(1)
  side = axis * 2 + (normal[np.arange(len(axis)), axis] > 0)
  uv = np.zeros((len(tris), 3, 2))
  for f in range(len(tris)):
    u_axis, v_axis = [a for a in range(3) if a != axis[f]]
    uv[f] = np.stack([tris[f, :, u_axis], tris[f, :, v_axis]], -1) / 2 + 0.5 + [3 * side[f], 0]
  verts, inverse = np.unique(np.concatenate([tris, uv], -1).reshape(-1, 5), axis=0, return_inverse=True)
  visual = trimesh.visual.TextureVisuals(uv=verts[:, 3:])
  return trimesh.Trimesh(verts[:, :3], inverse.reshape(-1, 3), visual=visual, process=False)


def test_cube_own_uvs_gives_six_charts():
  cube = _cube_with_uvs()
  assert len(cube.vertices) == 24
  omage = mesh_to_omage(cube, resolution=256, size=256)
  np.testing.assert_array_equal(omage, mesh_to_omage(cube, resolution=256, size=256))  # deterministic
  labels, n = ndimage.label(omage[..., OCCUPANCY] > 0.5, EIGHT)
  assert n == 6
  seen = set()
  for k in range(1, 7):
    pix = omage[labels == k]
    pos, nrm = pix[:, POSITION] * 2 - 1, pix[:, NORMAL] * 2 - 1
    axis = int(np.abs(nrm.mean(0)).argmax())
    sign = float(np.sign(nrm.mean(0)[axis]))
    seen.add((axis, sign))
    np.testing.assert_allclose(nrm, np.broadcast_to(np.eye(3)[axis] * sign, nrm.shape), atol=1e-5)
    np.testing.assert_allclose(pos[:, axis], sign, atol=1e-5)
    others = [a for a in range(3) if a != axis]
    # The chart covers its side: in-plane positions span [-1, 1] up to one pixel of a chart about 60 pixels wide.
    np.testing.assert_allclose(pos[:, others].min(0), -1, atol=0.05)
    np.testing.assert_allclose(pos[:, others].max(0), 1, atol=0.05)
  assert len(seen) == 6


def test_xatlas_sphere_covers_surface():
  sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
  omage = mesh_to_omage(sphere, resolution=256, size=256, normalize=False)
  pix = omage[omage[..., OCCUPANCY] > 0.5]
  pos, nrm = pix[:, POSITION] * 2 - 1, pix[:, NORMAL] * 2 - 1
  radius = np.linalg.norm(pos, axis=1)
  # Flat facets of the level-3 icosphere sit at least 0.99 from the centre.
  assert radius.min() > 0.99 and radius.max() < 1 + 1e-5
  assert (np.sum(nrm * pos / radius[:, None], axis=1) > 0.99).all()
  surface = trimesh.sample.sample_surface(sphere, 2000, seed=0)[0]
  gap = spatial.cKDTree(pos).query(surface)[0]
  assert gap.max() < 0.05


def test_textured_material_channels():
  """A quad with a base-colour texture (left half red, right half blue) and a metallicRoughness texture (G = rough
  0.2, B = metal 0.6), times the factors."""
  quad = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
  base = np.zeros((2, 4, 3), np.uint8)
  base[:, :2, 0] = 255
  base[:, 2:, 2] = 255
  mr = np.zeros((2, 2, 3), np.uint8)
  mr[..., 1], mr[..., 2] = 51, 153
  material = trimesh.visual.material.PBRMaterial(
      baseColorTexture=Image.fromarray(base), metallicRoughnessTexture=Image.fromarray(mr), metallicFactor=0.5,
      roughnessFactor=1.0, baseColorFactor=[1.0, 1.0, 1.0, 1.0])
  quad.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]], material=material)
  omage = mesh_to_omage(quad, resolution=64, size=64, normalize=False)
  occ = omage[..., OCCUPANCY] > 0.5
  np.testing.assert_allclose(omage[occ][:, ROUGHNESS], 0.2, atol=1e-5)
  np.testing.assert_allclose(omage[occ][:, METALNESS], 0.3, atol=1e-5)
  pos = omage[occ][:, POSITION] * 2 - 1
  albedo = omage[occ][:, ALBEDO]
  # Bilinear lookup with wrapping: texel centres of the 4-wide image are at u = 1/8, 3/8, ..., so u in [1/8, 3/8]
  # (x in [-3/4, -1/4]) is pure red and u in [5/8, 7/8] pure blue.
  left = (pos[:, 0] > -0.74) & (pos[:, 0] < -0.26)
  right = (pos[:, 0] > 0.26) & (pos[:, 0] < 0.74)
  assert left.sum() > 100 and right.sum() > 100
  np.testing.assert_allclose(albedo[left], np.broadcast_to([1, 0, 0], albedo[left].shape), atol=1e-5)
  np.testing.assert_allclose(albedo[right], np.broadcast_to([0, 0, 1], albedo[right].shape), atol=1e-5)


def test_face_colours_and_empty_mesh():
  box = make_primitive('box', np.random.default_rng(0))
  box.visual.face_colors = [255, 0, 0, 255]
  omage = mesh_to_omage(box, resolution=128, size=16)
  occ = omage[..., OCCUPANCY] > 0.5
  np.testing.assert_allclose(omage[occ][:, ALBEDO], np.broadcast_to([1, 0, 0], (occ.sum(), 3)), atol=1e-6)
  assert set(PRIMITIVES) == {'box', 'sphere', 'torus', 'cylinder', 'cone'}
  with pytest.raises(ValueError, match='no faces'):
    mesh_to_omage(trimesh.Trimesh())
  box.vertices[0] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    mesh_to_omage(box)


def test_round_trip_through_meshing(object_1024):
  """Encode -> pool to 64^2 -> omage_to_mesh: Chamfer distance (mean of both directions) below 1.5% of the bounding
  box diagonal, surface area within 5% (pooled charts lose about half a pixel at their borders), and no bridging
  triangle (every edge shorter than 5% of the diagonal)."""
  mesh, omage = object_1024
  decoded = omage_to_mesh(sparse_pool(omage, 64))
  a = trimesh.sample.sample_surface(mesh, 4000, seed=0)[0]
  b = trimesh.sample.sample_surface(decoded, 4000, seed=0)[0]
  chamfer = (spatial.cKDTree(b).query(a)[0].mean() + spatial.cKDTree(a).query(b)[0].mean()) / 2
  diagonal = np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])
  assert chamfer < 0.015 * diagonal
  assert abs(decoded.area / mesh.area - 1) < 0.05
  assert decoded.edges_unique_length.max() < 0.05 * diagonal


def test_glb_scene_parts_keep_their_materials():
  """A two-part GLB (a face-coloured box, a sphere with constant PBR factors) loaded as a scene: each part bakes its
  own albedo / metalness / roughness."""
  box = trimesh.creation.box()
  box.visual.face_colors = [0, 255, 0, 255]
  sphere = trimesh.creation.icosphere(subdivisions=2)
  sphere.apply_translation([2, 0, 0])
  material = trimesh.visual.material.PBRMaterial(baseColorFactor=[0.2, 0.4, 0.6, 1.0], metallicFactor=0.3,
                                                 roughnessFactor=0.7)
  sphere.visual = trimesh.visual.TextureVisuals(uv=sphere.vertices[:, :2] / 2 + 0.5, material=material)
  glb = trimesh.Scene([box, sphere]).export(file_type='glb')
  scene = trimesh.load(io.BytesIO(glb), file_type='glb', force='scene')
  omage = mesh_to_omage(scene, resolution=128, size=128)
  occ = omage[..., OCCUPANCY] > 0.5
  materials = np.unique(omage[occ][:, 7:].round(2), axis=0)
  expected = [[0, 1, 0, 0, 0.5], [0.2, 0.4, 0.6, 0.3, 0.7]]  # box: Principled defaults for metal / rough
  np.testing.assert_allclose(materials, expected, atol=0.01)
