"""A generated "shapes" vision-language set: coloured shapes on a 3x3 grid, captions and questions.

Scenes are drawn with PIL on a white background, one shape per grid cell at most, so every fact a
question asks about can be read off the `SceneSpec`. Used for smoke training and as test fixtures.
"""
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
RGB = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220),
       "yellow": (235, 200, 20)}
GRID = 3
POSITIONS = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right",
             (1, 0): "left", (1, 1): "center", (1, 2): "right",
             (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}
QUESTION_KINDS = ("caption", "count", "color", "position", "compare")
LETTERS = "ABCD"
MAX_COUNT = 4  # count questions offer answers 0..MAX_COUNT; scenes hold at most this many shapes


@dataclass(frozen=True)
class Shape:
  """One shape: `kind` in KINDS, `color` in COLORS, cell (`row`, `col`) in the 3x3 grid (0 = top /
  left), `size` = the shape's extent as a fraction of its cell's side, in (0, 1]."""
  kind: str
  color: str
  row: int
  col: int
  size: float


@dataclass(frozen=True)
class SceneSpec:
  """The shapes of one scene, at most one per cell."""
  shapes: tuple[Shape, ...]


def draw_scene(spec: SceneSpec, size: int = 64) -> Image.Image:
  """Draws `spec` as an RGB image of `size` x `size` pixels on a white background."""
  if size < GRID * 4:
    raise ValueError(f"shapes: image size must be at least {GRID * 4} pixels, got {size}")
  image = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  cell = size / GRID
  for s in spec.shapes:
    cx, cy = (s.col + 0.5) * cell, (s.row + 0.5) * cell
    r = s.size * cell / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if s.kind == "circle":
      draw.ellipse(box, fill=RGB[s.color])
    elif s.kind == "square":
      draw.rectangle(box, fill=RGB[s.color])
    elif s.kind == "triangle":
      draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=RGB[s.color])
    else:
      raise ValueError(f"shapes: unknown shape kind {s.kind!r}; expected one of {KINDS}")
  return image


def random_scene(rng: np.random.Generator, *, size: int = 64, min_shapes: int = 1,
                 max_shapes: int = 4) -> tuple[Image.Image, SceneSpec]:
  """Draws a scene of `min_shapes`..`max_shapes` (inclusive) shapes in distinct random cells.

  Returns (RGB image [size, size], its SceneSpec); shapes are listed in row-major cell order.
  """
  spec = _random_spec(rng, min_shapes, max_shapes)
  return draw_scene(spec, size), spec


def _random_spec(rng: np.random.Generator, min_shapes: int, max_shapes: int) -> SceneSpec:
  if not 1 <= min_shapes <= max_shapes <= GRID * GRID:
    raise ValueError(f"shapes: need 1 <= min_shapes <= max_shapes <= {GRID * GRID}, got "
                     f"min_shapes={min_shapes}, max_shapes={max_shapes}")
  n = int(rng.integers(min_shapes, max_shapes + 1))
  cells = np.sort(rng.choice(GRID * GRID, size=n, replace=False))
  return SceneSpec(tuple(
      Shape(kind=KINDS[rng.integers(len(KINDS))], color=COLORS[rng.integers(len(COLORS))],
            row=int(c) // GRID, col=int(c) % GRID, size=round(float(rng.uniform(0.6, 0.9)), 3))
      for c in cells))


def position_phrase(row: int, col: int) -> str:
  """'at the top left', 'in the center', 'on the left', ... for a grid cell."""
  name = POSITIONS[(row, col)]
  if name == "center":
    return "in the center"
  if name in ("left", "right"):
    return f"on the {name}"
  return f"at the {name}"


def caption(spec: SceneSpec) -> str:
  """Describes the shapes in row-major cell order, e.g. 'a red circle at the top left and a blue
  square in the center'. Distinct specs (ignoring shape sizes) get distinct captions."""
  parts = [f"a {s.color} {s.kind} {position_phrase(s.row, s.col)}"
           for s in sorted(spec.shapes, key=lambda s: (s.row, s.col))]
  if not parts:
    return "an empty white image"
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def count_kind(spec: SceneSpec, kind: str) -> int:
  """Number of shapes of `kind` in `spec`."""
  return sum(s.kind == kind for s in spec.shapes)


def _place(correct: str, distractors: list[str], target: int) -> list[str]:
  """The options: the distractors with the correct one inserted at index `target`."""
  options = list(distractors)
  options.insert(target, correct)
  return options


def _color_question(rng, target):
  while True:
    spec = _random_spec(rng, 1, MAX_COUNT)
    unique = [k for k in KINDS if count_kind(spec, k) == 1]
    if unique:
      break
  kind = unique[rng.integers(len(unique))]
  color = next(s.color for s in spec.shapes if s.kind == kind)
  others = [COLORS[i] for i in rng.permutation(len(COLORS)) if COLORS[i] != color]
  return [spec], f"What colour is the {kind}?", _place(color, others, target)


def _count_question(rng, target):
  spec = _random_spec(rng, 1, MAX_COUNT)
  kind = KINDS[rng.integers(len(KINDS))]
  n = count_kind(spec, kind)
  others = [str(int(c)) for c in rng.permutation(MAX_COUNT + 1) if c != n][:len(LETTERS) - 1]
  return [spec], f"How many {kind}s are there?", _place(str(n), others, target)


def _position_question(rng, target):
  while True:
    spec = _random_spec(rng, 1, MAX_COUNT)
    pairs = [(s.color, s.kind) for s in spec.shapes]
    unique = [s for s in spec.shapes if pairs.count((s.color, s.kind)) == 1]
    if unique:
      break
  shape = unique[rng.integers(len(unique))]
  correct = POSITIONS[(shape.row, shape.col)]
  names = [n for n in POSITIONS.values() if n != correct]
  others = [names[i] for i in rng.permutation(len(names))[:len(LETTERS) - 1]]
  return [spec], f"Where is the {shape.color} {shape.kind}?", _place(correct, others, target)


def _perturb(rng, spec: SceneSpec) -> SceneSpec:
  """Changes one shape's colour, kind or cell (to an empty one)."""
  shapes = list(spec.shapes)
  j = int(rng.integers(len(shapes)))
  how = int(rng.integers(3))
  if how == 0:
    colors = [c for c in COLORS if c != shapes[j].color]
    shapes[j] = replace(shapes[j], color=colors[rng.integers(len(colors))])
  elif how == 1:
    kinds = [k for k in KINDS if k != shapes[j].kind]
    shapes[j] = replace(shapes[j], kind=kinds[rng.integers(len(kinds))])
  else:
    free = sorted(set(POSITIONS) - {(s.row, s.col) for s in shapes})
    row, col = free[rng.integers(len(free))]
    shapes[j] = replace(shapes[j], row=row, col=col)
  return SceneSpec(tuple(sorted(shapes, key=lambda s: (s.row, s.col))))


def _caption_question(rng, target):
  spec = _random_spec(rng, 1, MAX_COUNT)
  correct = caption(spec)
  others: list[str] = []
  while len(others) < len(LETTERS) - 1:
    text = caption(_perturb(rng, spec))
    if text != correct and text not in others:
      others.append(text)
  return [spec], "Describe the image.", _place(correct, others, target)


def _compare_question(rng, target, num_images):
  kind = KINDS[rng.integers(len(KINDS))]
  while True:
    specs = [_random_spec(rng, 1, MAX_COUNT) for _ in range(num_images)]
    counts = [count_kind(s, kind) for s in specs]
    if counts.count(max(counts)) == 1:
      break
  # Move the image with the most `kind`s to the target slot; the others keep their order.
  best = specs.pop(int(np.argmax(counts)))
  specs.insert(target, best)
  most = "more" if num_images == 2 else "the most"
  options = [f"Image {i + 1}" for i in range(num_images)]
  return specs, f"Which image has {most} {kind}s?", options


def make_examples(n: int, seed: int, *, size: int = 64,
                  multi_image_fraction: float = 0.3) -> list[dict]:
  """Makes `n` multiple-choice examples, deterministically from `seed`.

  Each example is a LLaVA-style record:
    'id': str; 'images': list of PIL RGB images [size, size] (1, or 2-3 for 'compare');
    'conversations': [{'from': 'human', 'value': '<image>\\n' * len(images) + question + options},
                      {'from': 'gpt', 'value': answer letter}];
    'answer': letter; 'options': list[str]; 'question': str;
    'kind': one of QUESTION_KINDS; 'specs': tuple of SceneSpec, one per image.
  round(n * multi_image_fraction) examples are 'compare' questions over 2-3 images; the others
  cycle through caption, count, color and position questions over one image. The answer is the
  only correct option (scenes are redrawn until it is), and answer letters are balanced within
  each question kind (and, for 'compare', each image count).
  """
  if n < 0:
    raise ValueError(f"shapes: n must be >= 0, got {n}")
  if not 0.0 <= multi_image_fraction <= 1.0:
    raise ValueError(f"shapes: multi_image_fraction must be in [0, 1], got {multi_image_fraction}")
  rng = np.random.default_rng(seed)
  multi = np.zeros(n, bool)
  multi[rng.permutation(n)[:round(n * multi_image_fraction)]] = True
  single_makers = {"caption": _caption_question, "count": _count_question,
                   "color": _color_question, "position": _position_question}
  num_single = 0
  num_multi = {2: 0, 3: 0}  # per image count, so that each option count has balanced letters
  examples = []
  for i in range(n):
    if multi[i]:
      num_images = int(rng.integers(2, 4))
      kind, answer = "compare", num_multi[num_images] % num_images
      specs, question, options = _compare_question(rng, answer, num_images)
      num_multi[num_images] += 1
    else:
      kind = QUESTION_KINDS[num_single % len(single_makers)]
      answer = (num_single // len(single_makers)) % len(LETTERS)
      specs, question, options = single_makers[kind](rng, answer)
      num_single += 1
    letter = LETTERS[answer]
    prompt = ("<image>\n" * len(specs) + question + "\n"
              + "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options))
              + "\nAnswer with the option letter.")
    examples.append({
        "id": f"shapes_{seed}_{i:06d}", "images": [draw_scene(s, size) for s in specs],
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": letter}],
        "answer": letter, "options": options, "question": question, "kind": kind,
        "specs": tuple(specs)})
  return examples


def write_llava_dataset(root: str | os.PathLike, n: int, seed: int, **kwargs) -> Path:
  """Writes `make_examples(n, seed, **kwargs)` as a LLaVA conversation dataset; returns its JSON.

  Layout: root/images/<id>_<k>.png and root/data.json, a list of entries {'id', 'image': path
  relative to root (a list of paths for multi-image entries), 'conversations'}, readable by
  `mmjax.data.llava_json.LlavaJsonSource(root / 'data.json')`.
  """
  root = Path(root)
  (root / "images").mkdir(parents=True, exist_ok=True)
  entries = []
  for ex in make_examples(n, seed, **kwargs):
    paths = []
    for k, image in enumerate(ex["images"]):
      rel = f"images/{ex['id']}_{k}.png"
      image.save(root / rel)
      paths.append(rel)
    entries.append({"id": ex["id"], "image": paths[0] if len(paths) == 1 else paths,
                    "conversations": ex["conversations"]})
  json_path = root / "data.json"
  json_path.write_text(json.dumps(entries, indent=1))
  return json_path
