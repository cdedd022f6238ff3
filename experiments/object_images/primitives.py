"""Random primitive objects for the smoke setting: a few boxes, spheres, tori, cylinders and cones, each part with its
own random scale, pose and colour (face colours), the whole object normalised into [-1, 1]^3."""
from __future__ import annotations

import numpy as np
import trimesh

from experiments.object_images.omage import normalize_mesh

PRIMITIVES = ('box', 'sphere', 'torus', 'cylinder', 'cone')


def make_primitive(kind: str, rng: np.random.Generator) -> trimesh.Trimesh:
  """One primitive of `kind` (a PRIMITIVES name), about unit size, with random proportions; low-poly so that
  encoding stays fast."""
  if kind == 'box':
    return trimesh.creation.box(extents=rng.uniform(0.3, 1.0, 3))
  if kind == 'sphere':
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    sphere.apply_scale(rng.uniform(0.5, 1.0, 3))
    return sphere
  if kind == 'torus':
    return trimesh.creation.torus(major_radius=0.4, minor_radius=rng.uniform(0.08, 0.2), major_sections=24,
                                  minor_sections=12)
  if kind == 'cylinder':
    return trimesh.creation.cylinder(radius=rng.uniform(0.15, 0.5), height=rng.uniform(0.3, 1.0), sections=24)
  if kind == 'cone':
    return trimesh.creation.cone(radius=rng.uniform(0.2, 0.5), height=rng.uniform(0.3, 1.0), sections=24)
  raise ValueError(f'unknown primitive {kind!r}; choose one of {PRIMITIVES}')


def random_object(rng: np.random.Generator, *, max_parts: int = 3) -> trimesh.Trimesh:
  """An object of 1..max_parts random primitives, randomly rotated and placed, each with one random RGB face colour,
  normalised into [-1, 1]^3."""
  parts = []
  for _ in range(int(rng.integers(1, max_parts + 1))):
    part = make_primitive(PRIMITIVES[int(rng.integers(len(PRIMITIVES)))], rng)
    part.apply_transform(trimesh.transformations.random_rotation_matrix(rand=rng.random(3)))
    part.apply_translation(rng.uniform(-0.5, 0.5, 3))
    part.visual.face_colors = np.append(rng.integers(0, 256, 3), 255).astype(np.uint8)
    parts.append(part)
  return normalize_mesh(trimesh.util.concatenate(parts))
