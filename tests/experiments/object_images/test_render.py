"""render.py: the shaded pixels of a render cover exactly where the mesh projects, faces facing different ways shade
differently, a textured omage mesh shows its albedo, and the grid holds one cell per mesh."""
import numpy as np
import scipy.ndimage
import trimesh
from PIL import Image
from scipy.spatial import Delaunay

from experiments.object_images.meshing import omage_to_mesh
from experiments.object_images.render import project, render_mesh, write_render_grid

SIZE = 64


def _foreground(image: np.ndarray) -> np.ndarray:
  return np.any(image < 250, axis=-1)


def test_shaded_pixels_sit_where_the_mesh_projects():
  box = trimesh.creation.box((1.0, 0.6, 0.8))
  box.apply_translation((0.2, -0.1, 0.1))  # off centre, so that a wrong image offset shows
  image = render_mesh(box, SIZE)
  assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
  fg = _foreground(image)
  # A convex mesh projects onto the convex hull of its projected vertices; test pixel centres against it.
  pixels, _ = project(box.vertices, SIZE)
  rows, cols = np.indices((SIZE, SIZE))
  centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
  hull = (Delaunay(pixels).find_simplex(centres) >= 0).reshape(SIZE, SIZE)
  assert hull.sum() > 200
  assert not np.any(fg & ~scipy.ndimage.binary_dilation(hull, iterations=2))  # nothing drawn outside (antialiasing)
  assert np.all(fg[scipy.ndimage.binary_erosion(hull, iterations=2)])  # nothing missing inside
  # Three visible faces, three shades (flat Lambert shading), all darker than the background.
  inside = image[scipy.ndimage.binary_erosion(hull, iterations=2)].astype(int)
  shades = np.unique(inside[:, 0] // 8)
  assert len(shades) >= 3


def test_textured_omage_mesh_shows_its_albedo_and_grid_has_a_cell_per_mesh(tmp_path):
  omage = np.zeros((16, 16, 12), np.float32)
  i, j = np.meshgrid(np.linspace(0.3, 0.7, 10), np.linspace(0.3, 0.7, 10), indexing='ij')
  chart = omage[3:13, 3:13]
  chart[..., 0], chart[..., 1], chart[..., 2] = j, 0.5, 1 - i  # a square in the plane y = 0, facing the viewer
  chart[..., 3] = 1.0
  chart[..., 4:7] = (0.5, 0.0, 0.5)  # normal -y
  chart[..., 7:10] = (0.9, 0.1, 0.1)  # red albedo
  mesh = omage_to_mesh(omage)
  image = render_mesh(mesh, SIZE).astype(int)
  fg = _foreground(image)
  assert fg.sum() > 100
  r, g, b = (image[..., c][fg].mean() for c in range(3))
  assert r > 2 * g and r > 2 * b

  path = tmp_path / 'render.png'
  write_render_grid(str(path), [mesh, trimesh.Trimesh(), mesh], size=32, cols=2)
  with Image.open(path) as grid:
    cells = np.asarray(grid.convert('RGB')).astype(int)
  assert cells.shape == (2 * 34 - 2, 2 * 34 - 2, 3)
  assert _foreground(cells[:32, :32]).any() and _foreground(cells[34:, :32]).any()
  assert not _foreground(cells[:32, 34:]).any()  # the empty mesh leaves its cell blank
