"""mmjax.data: Grain pipelines sharded per process, global batch assembly, and data sources."""
from mmjax.data.chat_masking import IGNORE_INDEX, QWEN2_TOKEN_IDS, ChatTokenIds, render_chatml, tokenize_conversation
from mmjax.data.digits import DigitsSource, split_indices, write_image_folder
from mmjax.data.global_batch import make_global_batch
from mmjax.data.image_check import check_images
from mmjax.data.image_folder import ImageFolderSource, ImageReadError, verify_image_folders
from mmjax.data.iterator import iterator_state_to_json, make_iterator
from mmjax.data.llava_json import LlavaJsonSource
from mmjax.data.mixture import MixturePart, MixtureSource, load_mixture, sample_indices
from mmjax.data.pipeline import make_eval_pipeline, make_pipeline, stack_examples
from mmjax.data.shapes import SceneSpec, Shape, caption, draw_scene, make_examples, random_scene, write_llava_dataset

__all__ = [
    "IGNORE_INDEX",
    "QWEN2_TOKEN_IDS",
    "ChatTokenIds",
    "LlavaJsonSource",
    "MixturePart",
    "MixtureSource",
    "SceneSpec",
    "Shape",
    "caption",
    "draw_scene",
    "load_mixture",
    "make_examples",
    "random_scene",
    "render_chatml",
    "sample_indices",
    "tokenize_conversation",
    "write_llava_dataset",
    "DigitsSource",
    "ImageFolderSource",
    "ImageReadError",
    "check_images",
    "iterator_state_to_json",
    "make_eval_pipeline",
    "make_global_batch",
    "make_iterator",
    "make_pipeline",
    "split_indices",
    "stack_examples",
    "verify_image_folders",
    "write_image_folder",
]
