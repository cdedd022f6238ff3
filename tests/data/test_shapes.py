"""The generated shapes set: scenes, unambiguous questions, balance, LLaVA JSON round trip."""
import collections
import json
import re

import numpy as np
import pytest

from mmjax.data.llava_json import LlavaJsonSource
from mmjax.data.shapes import (
  LETTERS,
  POSITIONS,
  RGB,
  SceneSpec,
  Shape,
  caption,
  count_kind,
  draw_scene,
  make_examples,
  random_scene,
  write_llava_dataset,
)


def test_draw_scene_puts_shapes_in_their_cells():
  spec = SceneSpec((Shape("circle", "red", 1, 1, 0.8), Shape("square", "blue", 0, 2, 0.8)))
  pixels = np.asarray(draw_scene(spec, size=60))
  assert pixels.shape == (60, 60, 3) and pixels.dtype == np.uint8
  assert tuple(pixels[30, 30]) == RGB["red"]
  assert tuple(pixels[10, 50]) == RGB["blue"]
  assert tuple(pixels[50, 10]) == (255, 255, 255)


def test_random_scene_respects_bounds_and_matches_its_drawing():
  rng = np.random.default_rng(0)
  for _ in range(20):
    image, spec = random_scene(rng, size=48, min_shapes=2, max_shapes=5)
    cells = [(s.row, s.col) for s in spec.shapes]
    assert 2 <= len(cells) <= 5 and len(set(cells)) == len(cells)
    assert image.mode == "RGB" and image.size == (48, 48)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(draw_scene(spec, 48)))
  with pytest.raises(ValueError, match="min_shapes"):
    random_scene(rng, min_shapes=3, max_shapes=2)


def test_caption_text():
  spec = SceneSpec((Shape("circle", "red", 0, 0, 0.7), Shape("square", "blue", 1, 1, 0.7)))
  assert caption(spec) == "a red circle at the top left and a blue square in the center"


def _check_answer(ex):
  """Recomputes the answer from the specs and checks it is the only correct option."""
  options, answer, question = ex["options"], LETTERS.index(ex["answer"]), ex["question"]
  assert len(set(options)) == len(options)
  specs = ex["specs"]
  if ex["kind"] == "compare":
    kind = re.fullmatch(r"Which image has (?:more|the most) (\w+)s\?", question)[1]
    counts = [count_kind(s, kind) for s in specs]
    assert counts.count(max(counts)) == 1 and counts.index(max(counts)) == answer
    assert options == [f"Image {k + 1}" for k in range(len(specs))]
    return
  (spec,) = specs
  if ex["kind"] == "caption":
    truth = caption(spec)
    assert options[answer] == truth and options.count(truth) == 1
  elif ex["kind"] == "count":
    kind = re.fullmatch(r"How many (\w+)s are there\?", question)[1]
    assert options[answer] == str(count_kind(spec, kind))
  elif ex["kind"] == "color":
    kind = re.fullmatch(r"What colour is the (\w+)\?", question)[1]
    (shape,) = [s for s in spec.shapes if s.kind == kind]
    assert options[answer] == shape.color
  else:
    color, kind = re.fullmatch(r"Where is the (\w+) (\w+)\?", question).groups()
    (shape,) = [s for s in spec.shapes if (s.color, s.kind) == (color, kind)]
    assert options[answer] == POSITIONS[(shape.row, shape.col)]


def test_examples_are_unambiguous_and_well_formed():
  examples = make_examples(120, seed=1, size=32)
  assert sum(ex["kind"] == "compare" for ex in examples) == round(120 * 0.3)
  for ex in examples:
    _check_answer(ex)
    human, gpt = ex["conversations"]
    assert (human["from"], gpt["from"], gpt["value"]) == ("human", "gpt", ex["answer"])
    assert human["value"].count("<image>") == len(ex["images"]) == len(ex["specs"])
    assert human["value"].startswith("<image>\n" * len(ex["images"]) + ex["question"] + "\nA. ")
    assert human["value"].endswith("\nAnswer with the option letter.")
    assert (len(ex["images"]) == 1) == (ex["kind"] != "compare")
    for image, spec in zip(ex["images"], ex["specs"]):
      np.testing.assert_array_equal(np.asarray(image), np.asarray(draw_scene(spec, 32)))


def test_answer_letters_are_balanced():
  examples = make_examples(200, seed=2, size=16)
  letters = collections.defaultdict(collections.Counter)
  for ex in examples:
    letters[(ex["kind"], len(ex["options"]))][ex["answer"]] += 1
  assert {k for k, _ in letters} == {"caption", "count", "color", "position", "compare"}
  for (kind, n_options), counter in letters.items():
    assert set(counter) == set(LETTERS[:n_options]), (kind, counter)
    assert max(counter.values()) - min(counter.values()) <= 1, (kind, counter)


def test_examples_are_deterministic():
  a, b = make_examples(30, 5, size=16), make_examples(30, 5, size=16)
  c = make_examples(30, 6, size=16)
  assert [x["conversations"] for x in a] == [x["conversations"] for x in b]
  assert all(np.array_equal(np.asarray(p), np.asarray(q))
             for x, y in zip(a, b) for p, q in zip(x["images"], y["images"]))
  assert [x["conversations"] for x in a] != [x["conversations"] for x in c]


def test_write_and_read_back(tmp_path):
  json_path = write_llava_dataset(tmp_path / "shapes", 10, seed=3, size=24,
                                  multi_image_fraction=0.5)
  examples = make_examples(10, seed=3, size=24, multi_image_fraction=0.5)
  entries = json.loads(json_path.read_text())
  source = LlavaJsonSource(json_path)
  assert len(source) == 10
  for entry, ex, i in zip(entries, examples, range(10)):
    assert isinstance(entry["image"], str) == (len(ex["images"]) == 1)
    read = source[i]
    assert read["id"] == ex["id"] and read["conversations"] == ex["conversations"]
    assert read["video"] is None and len(read["images"]) == len(ex["images"])
    for got, want in zip(read["images"], ex["images"]):
      np.testing.assert_array_equal(got, np.asarray(want))
