"""A shaded preview of meshes without a GPU or Blender: NumPy projection and shading, PIL polygon fill.

The view is orthographic from elevation / azimuth (degrees) around an object in [-1, 1]^3 with z up (the omage
convention: Blender coordinates), scaled so that the whole cube fits the image from any direction. Faces are
flat-shaded, ambient + diffuse |n . light| (two-sided: decoded omage meshes are not consistently oriented when they
have no normals), coloured by the albedo texture at their corners' UVs (textured meshes from
`meshing.omage_to_mesh`) or the mesh's face colours, and drawn far to near (painter's algorithm: the meshes are many
small triangles, so its ordering errors are at most a pixel wide), supersampled 2x.
"""
from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image, ImageDraw

ELEVATION, AZIMUTH = 20.0, 35.0  # degrees: slightly from above, turned so that three faces of a box show
LIGHT = np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])  # camera space: upper left, towards the viewer
AMBIENT, DIFFUSE = 0.3, 0.7
BACKGROUND = (255, 255, 255)
SUPERSAMPLE = 2


def view_rotation(elevation: float = ELEVATION, azimuth: float = AZIMUTH) -> np.ndarray:
  """float64 [3, 3] taking object coordinates (z up) to camera ones (x right, y up, z towards the viewer)."""
  a, e = np.radians(azimuth), np.radians(elevation)
  spin = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])  # about the object's z
  to_camera = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])  # object -y faces the viewer, z is up
  tilt = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])  # look down by e
  return tilt @ to_camera @ spin


def project(vertices: np.ndarray, size: int, *, elevation: float = ELEVATION,
            azimuth: float = AZIMUTH) -> tuple[np.ndarray, np.ndarray]:
  """(pixel coordinates float64 [N, 2] as (x right, y down) in a size x size image, depth [N], larger = nearer) of
  vertices [N, 3] in [-1, 1]^3; the cube's circumscribed sphere (radius sqrt 3) spans the image."""
  cam = np.asarray(vertices, np.float64) @ view_rotation(elevation, azimuth).T
  scale = size / 2 / np.sqrt(3)
  return np.stack([size / 2 + cam[:, 0] * scale, size / 2 - cam[:, 1] * scale], axis=1), cam[:, 2]


def face_colors(mesh: trimesh.Trimesh) -> np.ndarray:
  """float64 [F, 3] in [0, 1]: the mean albedo texel at each face's corners for a textured mesh, else its face
  colours."""
  visual = mesh.visual
  texture = getattr(getattr(visual, 'material', None), 'baseColorTexture', None)
  if texture is not None and getattr(visual, 'uv', None) is not None:
    image = np.asarray(texture.convert('RGB'), np.float64) / 255
    h, w = image.shape[:2]
    uv = np.asarray(visual.uv)
    cols = np.clip(np.floor(uv[:, 0] * w), 0, w - 1).astype(int)
    rows = np.clip(np.floor((1 - uv[:, 1]) * h), 0, h - 1).astype(int)
    return image[rows, cols][mesh.faces].mean(axis=1)
  if isinstance(visual, trimesh.visual.ColorVisuals):
    return np.asarray(visual.face_colors[:, :3], np.float64) / 255
  return np.full((len(mesh.faces), 3), 0.7)


def render_mesh(mesh: trimesh.Trimesh, size: int = 128, *, elevation: float = ELEVATION,
                azimuth: float = AZIMUTH) -> np.ndarray:
  """uint8 [size, size, 3]: the shaded mesh (vertices in [-1, 1]^3) on a white background."""
  big = size * SUPERSAMPLE
  image = Image.new('RGB', (big, big), BACKGROUND)
  if len(mesh.faces):
    pixels, depth = project(mesh.vertices, big, elevation=elevation, azimuth=azimuth)
    cam = np.asarray(mesh.vertices, np.float64) @ view_rotation(elevation, azimuth).T
    corners = cam[mesh.faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    shade = AMBIENT + DIFFUSE * np.abs(normals @ LIGHT) / np.maximum(lengths, 1e-12)
    rgb = np.round(np.clip(face_colors(mesh) * shade[:, None], 0, 1) * 255).astype(int)
    draw = ImageDraw.Draw(image)
    for f in np.argsort(depth[mesh.faces].mean(axis=1), kind='stable'):  # far to near
      draw.polygon([tuple(p) for p in pixels[mesh.faces[f]]], fill=tuple(rgb[f]))
  return np.asarray(image.resize((size, size), Image.LANCZOS))


def write_render_grid(path: str, meshes: list[trimesh.Trimesh], *, size: int = 128, cols: int = 8) -> None:
  """One PNG of the meshes rendered side by side, `cols` per row, a 2-pixel grey gap; an empty mesh stays blank."""
  if not meshes:
    raise ValueError(f'write_render_grid: no meshes to render into {path}')
  rows = -(-len(meshes) // cols)
  canvas = np.full((rows * (size + 2) - 2, min(len(meshes), cols) * (size + 2) - 2, 3), 200, np.uint8)
  for k, mesh in enumerate(meshes):
    r, c = divmod(k, cols)
    canvas[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = render_mesh(mesh, size)
  Image.fromarray(canvas).save(path)
