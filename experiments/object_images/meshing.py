"""Omage -> textured triangle mesh (spec section 4, the official `meshing_objamage`), patch ids and OBJ/GLB export.

Every occupied pixel (occupancy > 0.5) is one vertex at position * 2 - 1. Pixel p = (i, j) emits the triangle
(p, (i, j+1), (i+1, j)) when all three are occupied and (p, (i, j-1), (i-1, j)) when all three are occupied, so a
full 2 x 2 quad gives two triangles and a 3-of-4 L gives one only when it matches one of these two patterns.

Differences from the official code, on purpose:
- Border: the official code builds the neighbours with `np.roll`, so a chart touching the image border is joined to
  the opposite border. By default no triangle crosses the border here; `wrap=True` reproduces the official faces.
- Geometry-only omages ([S, S, 4], or normal channels that are all zero): the official code compares against the
  zero normal mapped to (-1, -1, -1), which orients faces towards one fixed direction. Here a pixel without a normal
  keeps the pixel-grid winding instead (both patterns wind the same way in the image, so a chart stays consistent).
- UVs sit on pixel centres, u = (j + 0.5) / W, v = 1 - (i + 0.5) / H (OBJ/trimesh convention, v up; the PNG row 0
  is the top), rather than on the closed grid [0, 1]: every vertex then samples exactly its own texel, and since
  triangles span occupied pixel centres only, bilinear filtering never reads the background.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage
import trimesh
from PIL import Image

from experiments.object_images.omage import ALBEDO, METALNESS, NORMAL, NUM_CHANNELS, OCCUPANCY, POSITION, ROUGHNESS


def _check_omage(omage: np.ndarray, where: str) -> np.ndarray:
  """The omage as float64 [H, W, C] with C in (4, 12) and finite values in [0, 1], else a ValueError naming why."""
  omage = np.asarray(omage)
  if omage.ndim != 3 or omage.shape[-1] not in (OCCUPANCY + 1, NUM_CHANNELS):
    raise ValueError(f'{where}: expected an omage [S, S, 4] (geometry) or [S, S, 12] (with materials), '
                     f'got shape {omage.shape}')
  omage = omage.astype(np.float64)
  if not np.isfinite(omage).all():
    raise ValueError(f'{where}: the omage has NaN or infinite values')
  lo, hi = omage.min(initial=0.0), omage.max(initial=0.0)
  if lo < -1e-3 or hi > 1 + 1e-3:
    raise ValueError(f'{where}: omage values span [{lo:.3g}, {hi:.3g}], expected [0, 1] as stored on disk '
                     '(map a model-space omage in [-1, 1] back with (x + 1) / 2)')
  return omage


def occupancy(omage: np.ndarray) -> np.ndarray:
  """bool [H, W]: the occupied pixels (occupancy channel > 0.5) of an omage [H, W, 4 or 12] in [0, 1]."""
  return _check_omage(omage, 'occupancy')[..., OCCUPANCY] > 0.5


def grid_faces(occ: np.ndarray, *, wrap: bool = False) -> np.ndarray:
  """int64 [F, 3] triangles over row-major pixel indices i * W + j of the occupancy mask occ [H, W].

  The first pattern's faces come first, then the second's, each in row-major order of the anchor pixel p (the
  official order). With wrap=True neighbours are taken modulo the image size, as `np.roll` does.
  """
  h, w = occ.shape
  index = np.arange(h * w).reshape(h, w)
  rows, cols = np.indices((h, w))
  faces = []
  for step, inside in ((1, (rows < h - 1) & (cols < w - 1)), (-1, (rows > 0) & (cols > 0))):
    # The neighbour along j (same row) and along i (same column), step pixels away.
    along_j, along_i = np.roll(index, -step, axis=1), np.roll(index, -step, axis=0)
    emit = occ & np.roll(occ, -step, axis=1) & np.roll(occ, -step, axis=0)
    if not wrap:
      emit &= inside
    faces.append(np.stack([index[emit], along_j[emit], along_i[emit]], axis=1))
  return np.concatenate(faces, axis=0).astype(np.int64)


def patch_ids(omage: np.ndarray) -> np.ndarray:
  """int32 [H, W]: 0 on the background, k >= 1 on the k-th largest 8-connected component of the occupancy.

  8-connectivity (a 3 x 3 structure) is `skimage.measure.label`'s default on 2-D masks, which the official code
  uses. Equal sizes keep the raster order of their first pixel.
  """
  labels, n = scipy.ndimage.label(occupancy(omage), structure=np.ones((3, 3), bool))
  sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  rank = np.empty(n + 1, np.int32)
  rank[0] = 0
  rank[1 + np.argsort(-sizes, kind='stable')] = np.arange(1, n + 1, dtype=np.int32)
  return rank[labels]


def _orient(faces: np.ndarray, vertices: np.ndarray, normals: np.ndarray | None) -> np.ndarray:
  """Faces with (0, 2, 1) order where the face normal disagrees with the baked normal at their first vertex.

  normals: [H * W, 3] in [0, 1] or None; a pixel whose normal channels are all zero carries no normal (see the module
  docstring) and keeps its winding.
  """
  if normals is None or len(faces) == 0:
    return faces
  first = faces[:, 0]
  face_normal = np.cross(vertices[faces[:, 1]] - vertices[first], vertices[faces[:, 2]] - vertices[first])
  flip = (np.einsum('fk,fk->f', face_normal, normals[first] * 2 - 1) < 0) & normals[first].any(axis=1)
  return np.where(flip[:, None], faces[:, [0, 2, 1]], faces)


def _material(omage: np.ndarray) -> trimesh.visual.material.PBRMaterial:
  """glTF metallic-roughness material: base colour = albedo, metallicRoughness texture G = roughness, B = metalness
  (R is unused by glTF; 255 reads as 'not occluded' where a viewer packs occlusion there too)."""
  to_u8 = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
  albedo = to_u8(omage[..., ALBEDO])
  packed = np.stack([np.full(omage.shape[:2], 255, np.uint8), to_u8(omage[..., ROUGHNESS]),
                     to_u8(omage[..., METALNESS])], axis=-1)
  return trimesh.visual.material.PBRMaterial(
      name='omage', baseColorTexture=Image.fromarray(albedo), metallicRoughnessTexture=Image.fromarray(packed),
      metallicFactor=1.0, roughnessFactor=1.0)


def omage_to_mesh(omage: np.ndarray, *, wrap: bool = False) -> trimesh.Trimesh:
  """Mesh of an omage [S, S, 4] or [S, S, 12] with values in [0, 1] (as stored on disk).

  Returns a trimesh.Trimesh (process=False: vertices and faces exactly as built) with one vertex per pixel used by a
  triangle, in row-major pixel order; `mesh.metadata['pixel']` is each vertex's row-major pixel index, and
  `mesh.visual` holds the UVs (plus the albedo and metallic-roughness textures for 12 channels). An omage without
  any triangle (nothing occupied, or no 2 x 2 / L-shaped neighbourhood) gives an empty mesh, as in the official code.
  """
  omage = _check_omage(omage, 'omage_to_mesh')
  h, w, c = omage.shape
  occ = omage[..., OCCUPANCY] > 0.5
  flat = omage.reshape(h * w, c)
  vertices = flat[:, POSITION] * 2 - 1
  faces = grid_faces(occ, wrap=wrap)
  faces = _orient(faces, vertices, flat[:, NORMAL] if c == NUM_CHANNELS else None)
  # Prune: keep the pixels some triangle uses, in pixel order, and renumber the faces.
  used = np.unique(faces)
  faces = np.searchsorted(used, faces)
  i, j = np.divmod(used, w)
  uv = np.stack([(j + 0.5) / w, 1 - (i + 0.5) / h], axis=1)
  visual = trimesh.visual.TextureVisuals(uv=uv, material=_material(omage) if c == NUM_CHANNELS else None)
  mesh = trimesh.Trimesh(vertices[used], faces.reshape(-1, 3), visual=visual, process=False, validate=False)
  mesh.metadata['pixel'] = used
  return mesh


def _check_export(mesh: trimesh.Trimesh, path: str | Path, suffix: str, where: str) -> Path:
  path = Path(path)
  if path.suffix.lower() != suffix:
    raise ValueError(f'{where}: {path} must end in {suffix}')
  if len(mesh.faces) == 0:
    raise ValueError(f'{where}: the mesh has no faces (an empty omage), nothing to write to {path}')
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


def export_glb(mesh: trimesh.Trimesh, path: str | Path) -> Path:
  """Write mesh (from omage_to_mesh) as binary glTF with its UVs and PBR textures; returns the path."""
  path = _check_export(mesh, path, '.glb', 'export_glb')
  path.write_bytes(trimesh.exchange.gltf.export_glb(mesh))
  return path


def export_obj(mesh: trimesh.Trimesh, path: str | Path) -> Path:
  """Write mesh (from omage_to_mesh) as `<stem>.obj` + `<stem>.mtl` beside it, and for textured meshes the PNGs
  `<stem>_albedo.png` (map_Kd), `<stem>_roughness.png` (map_Pr) and `<stem>_metalness.png` (map_Pm, the PBR
  extension of MTL that Blender reads); returns the .obj path.
  """
  path = _check_export(mesh, path, '.obj', 'export_obj')
  material = getattr(mesh.visual, 'material', None)
  mtl = ['newmtl omage', 'Kd 1 1 1', 'Ka 0 0 0', 'Ks 0 0 0']
  if isinstance(material, trimesh.visual.material.PBRMaterial) and material.baseColorTexture is not None:
    packed = np.asarray(material.metallicRoughnessTexture.convert('RGB'))
    for key, image in (('albedo', material.baseColorTexture.convert('RGB')),
                       ('roughness', Image.fromarray(packed[..., 1])), ('metalness', Image.fromarray(packed[..., 2]))):
      image.save(path.with_name(f'{path.stem}_{key}.png'))
    mtl += ['Pr 1', 'Pm 1', f'map_Kd {path.stem}_albedo.png', f'map_Pr {path.stem}_roughness.png',
            f'map_Pm {path.stem}_metalness.png']
  path.with_suffix('.mtl').write_text('\n'.join(mtl) + '\n')
  # Each vertex has exactly one UV, so the v and vt indices of a corner are equal (OBJ indices are 1-based).
  corners = (mesh.faces + 1).astype(str)
  lines = [f'mtllib {path.stem}.mtl', 'o omage']
  lines += [f'v {x:.7g} {y:.7g} {z:.7g}' for x, y, z in np.asarray(mesh.vertices)]
  lines += [f'vt {u:.7g} {v:.7g}' for u, v in np.asarray(mesh.visual.uv)]
  lines.append('usemtl omage')
  lines += [f'f {a}/{a} {b}/{b} {c}/{c}' for a, b, c in corners]
  path.write_text('\n'.join(lines) + '\n')
  return path
