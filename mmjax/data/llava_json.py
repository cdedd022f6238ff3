"""Random-access source over a LLaVA conversation dataset (`.json` list or `.jsonl` lines).

Entry layout (LLaVA / LLaVA-NeXT): {'id', 'conversations': [{'from': 'human'|'gpt'|'system',
'value': str}, ...]} plus at most one of 'image' (a path, or a list of paths for multi-image
entries) and 'video' (a path). Other keys are ignored, as the original trainer ignores them.
"""
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mmjax.data.image_folder import DEFAULT_EXTENSIONS, ImageReadError, read_image_8bit

ROLES = ("human", "gpt", "system")
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
VIDEO_FORMATS = ("a directory of frame images (" + ", ".join(DEFAULT_EXTENSIONS) + ")",
                 "a .npy array uint8 [F, H, W, 3]")
_MAX_LISTED = 20


def read_json_entries(path: str | os.PathLike) -> list:
  """Parses a `.json` file holding a list, or a `.jsonl` file with one entry per non-blank line."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"LLaVA JSON file {path} does not exist")
  if path.suffix == ".jsonl":
    entries = []
    with path.open() as f:
      for line_no, line in enumerate(f, 1):
        if line.strip():
          try:
            entries.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {line_no} is not valid JSON: {e}") from None
    return entries
  if path.suffix == ".json":
    try:
      entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(entries, list):
      raise ValueError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries
  raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .json or .jsonl")


def _entry_problems(entry) -> list[str]:
  """What is wrong with one entry's structure and placeholders (empty when it is valid)."""
  if not isinstance(entry, dict):
    return [f"is a {type(entry).__name__}, not an object"]
  conv = entry.get("conversations")
  if not isinstance(conv, list) or not conv:
    return ["has no 'conversations' list (or it is empty)"]
  problems = []
  for t, turn in enumerate(conv):
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
      problems.append(f"conversations[{t}] needs a string 'value'")
    elif turn.get("from") not in ROLES:
      problems.append(f"conversations[{t}] has 'from' {turn.get('from')!r}; "
                      f"expected one of {ROLES}")
  if problems:
    return problems
  if "image" in entry and "video" in entry:
    return ["has both 'image' and 'video'; an entry holds one or the other"]
  n_image = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conv)
  n_video = sum(turn["value"].count(VIDEO_PLACEHOLDER) for turn in conv)
  if "image" in entry:
    image = entry["image"]
    if isinstance(image, str):
      image = [image]
    if not isinstance(image, list) or not image or not all(isinstance(p, str) for p in image):
      return ["'image' must be a path or a non-empty list of paths"]
    if n_image != len(image) or n_video:
      problems.append(f"has {n_image} '{IMAGE_PLACEHOLDER}' and {n_video} '{VIDEO_PLACEHOLDER}' "
                      f"placeholders for {len(image)} image(s); need one '{IMAGE_PLACEHOLDER}' "
                      "per image")
  elif "video" in entry:
    if not isinstance(entry["video"], str):
      return ["'video' must be a path"]
    if n_image + n_video != 1:
      problems.append(f"has {n_image} '{IMAGE_PLACEHOLDER}' and {n_video} '{VIDEO_PLACEHOLDER}' "
                      "placeholders for one video; need exactly one of either")
  elif n_image or n_video:
    problems.append(f"has {n_image} '{IMAGE_PLACEHOLDER}' and {n_video} '{VIDEO_PLACEHOLDER}' "
                    "placeholders but no 'image' or 'video'")
  return problems


def _entry_id(entry, index: int):
  return entry.get("id", index) if isinstance(entry, dict) else index


def _listing(items: list[str]) -> str:
  more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return "\n  " + "\n  ".join(items[:_MAX_LISTED]) + more


def load_image(path: Path) -> np.ndarray:
  """Decodes an image file to uint8 [H, W, 3] RGB (`read_image_8bit`: 16-bit values are rounded to 8 bits, never
  clipped); raises ImageReadError naming the file."""
  return np.asarray(read_image_8bit(path), dtype=np.uint8)


def _frame_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                and p.suffix.lower() in DEFAULT_EXTENSIONS)


def load_video(path: Path, max_frames: int | None = None) -> np.ndarray:
  """Reads a video as uint8 [F, H, W, 3] from a folder of frames or a `.npy` array.

  Frames of a folder are its image files sorted by name (as the original trainer does; pad frame
  numbers with zeros). With `max_frames`, a longer video keeps the frames at
  int(linspace(0, F - 1, max_frames)), the original trainer's uniform sampling.
  """
  if path.is_dir():
    files = _frame_files(path)
    if not files:
      raise ValueError(f"video folder {path} holds no frame images "
                       f"({', '.join(DEFAULT_EXTENSIONS)})")
    if max_frames is not None and len(files) > max_frames:
      files = [files[k] for k in np.linspace(0, len(files) - 1, max_frames, dtype=int)]
    frames = [load_image(f) for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
      raise ValueError(f"video folder {path}: frames differ in size {sorted(shapes)}")
    return np.stack(frames)
  if path.suffix == ".npy":
    try:
      video = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read video array {path}: {e}") from None
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
      raise ValueError(f"video array {path} is {video.dtype} {list(video.shape)}; "
                       "expected uint8 [F, H, W, 3]")
    if max_frames is not None and len(video) > max_frames:
      video = video[np.linspace(0, len(video) - 1, max_frames, dtype=int)]
    return video
  raise ValueError(f"unsupported video {path}: supported formats are {' or '.join(VIDEO_FORMATS)}; "
                   "decode other videos to frames first (e.g. ffmpeg -i in.mp4 dir/%06d.png)")


class LlavaJsonSource:
  """Examples of a LLaVA conversation dataset, for grain (`__len__`, `__getitem__`).

  Each example is {'id': str, 'conversations': list of {'from', 'value'},
  'images': list of uint8 [H, W, 3] (empty for video and text-only entries),
  'video': uint8 [F, H, W, 3] or None}. In video entries an '<image>' placeholder (the original
  trainer's convention) is rewritten to '<video>', so the processor expands it as a video.

  Every entry is validated when the source is built: structure, roles, one '<image>' per image
  (one placeholder per video), existing image/video files, supported video formats; all problems
  are reported at once, each naming the entry index and id. Images are decoded when an example
  is read; a corrupt file raises ImageReadError naming it. To find every corrupt file before a run,
  decode `image_files()` up front with `mmjax.data.image_check.check_images(..., decode=load_image)`.
  """

  def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
               video_root: str | os.PathLike | None = None, max_frames: int | None = None):
    """Reads and validates the dataset.

    Args:
      path: the `.json` / `.jsonl` file.
      image_root: folder that image paths are relative to; default: the JSON file's folder.
      video_root: folder that video paths are relative to; default: `image_root`.
      max_frames: uniformly subsample longer videos to this many frames; None keeps all.

    Raises:
      FileNotFoundError: the JSON file, or image/video files it names, do not exist (all listed).
      ValueError: malformed entries or placeholder counts (all listed), bad video formats.
    """
    self.path = Path(path)
    self.image_root = Path(image_root) if image_root is not None else self.path.parent
    self.video_root = Path(video_root) if video_root is not None else self.image_root
    if max_frames is not None and max_frames < 1:
      raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    self.max_frames = max_frames
    self._entries = []
    problems, missing = [], []
    for i, entry in enumerate(read_json_entries(self.path)):
      name = f"entry {i} (id {_entry_id(entry, i)!r})"
      entry_problems = _entry_problems(entry)
      problems += [f"{name} {p}" for p in entry_problems]
      if entry_problems:
        continue
      images = entry.get("image", ())
      images = (images,) if isinstance(images, str) else tuple(images)
      missing += [f"{name}: {p}" for p in images if not (self.image_root / p).is_file()]
      video = entry.get("video")
      if video is not None:
        video_path = self.video_root / video
        if not video_path.exists():
          missing.append(f"{name}: {video_path}")
        elif not (video_path.is_dir() or video_path.suffix == ".npy"):
          problems.append(f"{name} has video {video_path} in an unsupported format; supported: "
                          + " or ".join(VIDEO_FORMATS))
      # Paths stay relative strings: large mixtures hold millions of entries.
      self._entries.append((str(entry.get("id", i)), entry["conversations"], images, video))
    if problems:
      raise ValueError(f"{self.path}: {len(problems)} problem(s) in entries:" + _listing(problems))
    if missing:
      raise FileNotFoundError(f"{self.path}: {len(missing)} missing image/video file(s):"
                              + _listing(missing))

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> dict:
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.path}: index {index} out of range for {len(self)} entries")
    entry_id, turns, images, video = self._entries[index]
    conversations = [{"from": t["from"], "value": t["value"]} for t in turns]
    if video is not None:
      for turn in conversations:
        turn["value"] = turn["value"].replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)
    where = f"{self.path}: entry {index} (id {entry_id!r})"
    try:
      return {"id": entry_id, "conversations": conversations,
              "images": [load_image(self.image_root / p) for p in images],
              "video": None if video is None else load_video(self.video_root / video,
                                                             self.max_frames)}
    except ImageReadError as e:
      raise ImageReadError(f"{where}: {e}", e.paths) from None
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None

  def image_files(self, indices: Iterable[int] | None = None) -> list[Path]:
    """The image files of the entries at `indices` (default: all), in order, with the frame images of their video
    folders (all frames, not only the `max_frames` read; `.npy` videos are arrays, checked when read)."""
    files = []
    for index in range(len(self)) if indices is None else indices:
      _, _, images, video = self._entries[int(index)]
      files += [self.image_root / p for p in images]
      if video is not None and (self.video_root / video).is_dir():
        files += _frame_files(self.video_root / video)
    return files

  def __repr__(self) -> str:
    return f"LlavaJsonSource({str(self.path)!r}, {len(self)} entries)"
