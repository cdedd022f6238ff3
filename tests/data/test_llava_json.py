"""LlavaJsonSource on hand-written single, multi-image, video and text-only entries."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data.image_folder import ImageReadError
from mmjax.data.llava_json import LlavaJsonSource


def _turns(question, answer="ok"):
  return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _image(path, colour, size=(5, 7)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size[::-1], colour).save(path)


@pytest.fixture
def root(tmp_path):
  _image(tmp_path / "img" / "a.png", (255, 0, 0))
  _image(tmp_path / "img" / "b.jpg", (0, 0, 255), size=(6, 4))
  for f in range(3):
    _image(tmp_path / "vid" / "clip" / f"{f:03d}.png", (f * 50, 0, 0), size=(4, 4))
  np.save(tmp_path / "vid" / "clip.npy",
          np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3))
  return tmp_path


def _write(root, entries, name="data.json"):
  path = root / name
  if name.endswith(".jsonl"):
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n\n")
  else:
    path.write_text(json.dumps(entries))
  return path


ENTRIES = [
    {"id": "single", "image": "img/a.png", "conversations": _turns("<image>\nWhat colour?", "red")},
    {"id": "multi", "image": ["img/a.png", "img/b.jpg"],
     "conversations": _turns("<image>\n<image>\nSame?", "no")},
    {"id": "frames", "video": "vid/clip", "conversations": _turns("<image>\nWhat happens?")},
    {"id": "array", "video": "vid/clip.npy", "conversations": _turns("<video>\nDescribe.")},
    {"id": 7, "conversations": [{"from": "system", "value": "Be brief."}] + _turns("Hi")},
]


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_reads_every_entry_kind(root, name):
  source = LlavaJsonSource(_write(root, ENTRIES, name))
  assert len(source) == 5
  single, multi, frames, array, text = (source[i] for i in range(5))
  assert single["id"] == "single" and single["video"] is None
  (image,) = single["images"]
  assert image.dtype == np.uint8 and image.shape == (5, 7, 3) and tuple(image[0, 0]) == (255, 0, 0)
  assert single["conversations"] == ENTRIES[0]["conversations"]
  assert [im.shape for im in multi["images"]] == [(5, 7, 3), (6, 4, 3)]
  assert frames["images"] == [] and frames["video"].shape == (3, 4, 4, 3)
  assert frames["video"].dtype == np.uint8
  np.testing.assert_array_equal(frames["video"][:, 0, 0, 0], [0, 50, 100])
  assert frames["conversations"][0]["value"] == "<video>\nWhat happens?"  # rewritten for video
  np.testing.assert_array_equal(array["video"], np.load(root / "vid" / "clip.npy"))
  assert text["id"] == "7" and text["images"] == [] and text["video"] is None
  assert text["conversations"][0] == {"from": "system", "value": "Be brief."}


def test_max_frames_samples_uniformly(root):
  source = LlavaJsonSource(_write(root, ENTRIES[2:4]), max_frames=2)
  np.testing.assert_array_equal(source[0]["video"][:, 0, 0, 0], [0, 100])
  full = np.load(root / "vid" / "clip.npy")
  np.testing.assert_array_equal(source[1]["video"], full[[0, 4]])


def test_image_root_is_configurable(root, tmp_path_factory):
  elsewhere = tmp_path_factory.mktemp("json")
  path = _write(elsewhere, ENTRIES[:1])
  with pytest.raises(FileNotFoundError, match="a.png"):
    LlavaJsonSource(path)
  assert len(LlavaJsonSource(path, image_root=root)[0]["images"]) == 1


@pytest.mark.parametrize("entry, message", [
    ({"id": "x", "image": "img/a.png", "conversations": _turns("no placeholder")},
     r"entry 0 \(id 'x'\) has 0 '<image>'.*1 image"),
    ({"id": "x", "image": ["img/a.png", "img/b.jpg"], "conversations": _turns("<image>\nQ")},
     r"entry 0 \(id 'x'\) has 1 '<image>'.*2 image"),
    ({"id": "x", "conversations": _turns("<image>\nQ")}, r"entry 0 \(id 'x'\).*no 'image'"),
    ({"id": "x", "video": "vid/clip", "conversations": _turns("<image><video>Q")},
     r"entry 0 \(id 'x'\).*one video"),
    ({"id": "x", "conversations": [{"from": "bot", "value": "hi"}]},
     r"entry 0 \(id 'x'\) conversations\[0\] has 'from' 'bot'"),
    ({"id": "x", "conversations": [{"from": "human"}]},
     r"conversations\[0\] needs a string 'value'"),
    ({"id": "x"}, r"entry 0 \(id 'x'\) has no 'conversations'"),
    ({"id": "x", "image": "img/a.png", "video": "vid/clip", "conversations": _turns("<image>")},
     "both 'image' and 'video'"),
    (["not", "an", "object"], r"entry 0 \(id 0\) is a list"),
])
def test_validation_errors_name_the_entry(root, entry, message):
  with pytest.raises(ValueError, match=message):
    LlavaJsonSource(_write(root, [entry]))


def test_all_problems_are_reported_together(root):
  good = ENTRIES[0]
  bad = {"id": "b", "conversations": _turns("<image>")}
  message = r"(?s)2 problem.*entry 1 \(id 'b'\).*entry 3 \(id 'b'\)"
  with pytest.raises(ValueError, match=message) as e:
    LlavaJsonSource(_write(root, [good, bad, good, bad]))
  assert "entry 0" not in str(e.value)


def test_missing_files_are_listed(root):
  entries = [{"id": "m", "image": ["img/a.png", "img/gone.png"],
              "conversations": _turns("<image><image>")},
             {"id": "v", "video": "vid/nothing", "conversations": _turns("<video>")}]
  with pytest.raises(FileNotFoundError, match=r"(?s)2 missing.*id 'm'.*gone.png.*id 'v'.*nothing"):
    LlavaJsonSource(_write(root, entries))


def test_unsupported_video_format_lists_supported_ones(root):
  (root / "vid" / "clip.mp4").write_bytes(b"\0" * 8)
  entry = {"id": "mp4", "video": "vid/clip.mp4", "conversations": _turns("<video>")}
  with pytest.raises(ValueError, match=r"id 'mp4'.*clip.mp4.*directory of frame images.*\.npy"):
    LlavaJsonSource(_write(root, [entry]))


def test_bad_npy_video_is_named(root):
  np.save(root / "vid" / "gray.npy", np.zeros((2, 4, 4), np.uint8))
  source = LlavaJsonSource(_write(root, [{"id": "g", "video": "vid/gray.npy",
                                          "conversations": _turns("<video>")}]))
  with pytest.raises(ValueError, match=r"entry 0 \(id 'g'\): .*gray.npy is uint8 \[2, 4, 4\]"):
    source[0]


def test_corrupt_image_names_the_file(root):
  (root / "img" / "bad.png").write_bytes(b"not a png")
  source = LlavaJsonSource(_write(root, [{"id": "c", "image": "img/bad.png",
                                          "conversations": _turns("<image>")}]))
  with pytest.raises(ImageReadError, match=r"entry 0 \(id 'c'\).*bad.png") as e:
    source[0]
  assert e.value.paths == [root / "img" / "bad.png"]


def test_file_level_errors(root):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    LlavaJsonSource(root / "nope.json")
  (root / "d.json").write_text('{"id": 1}')
  with pytest.raises(ValueError, match="d.json: expected a JSON list"):
    LlavaJsonSource(root / "d.json")
  (root / "d.jsonl").write_text('{"id": 1}\n{oops\n')
  with pytest.raises(ValueError, match="d.jsonl: line 2 is not valid JSON"):
    LlavaJsonSource(root / "d.jsonl")
  (root / "d.csv").write_text("")
  with pytest.raises(ValueError, match="unsupported file type '.csv'"):
    LlavaJsonSource(root / "d.csv")
  with pytest.raises(IndexError, match="out of range"):
    LlavaJsonSource(_write(root, ENTRIES[:1]))[1]
