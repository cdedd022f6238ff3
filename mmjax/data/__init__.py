"""mmjax.data: Grain pipelines sharded per process, global batch assembly, and data sources."""
from mmjax.data.digits import DigitsSource, split_indices, write_image_folder
from mmjax.data.global_batch import make_global_batch
from mmjax.data.image_folder import ImageFolderSource, ImageReadError
from mmjax.data.iterator import iterator_state_to_json, make_iterator
from mmjax.data.pipeline import make_eval_pipeline, make_pipeline, stack_examples

__all__ = [
    "DigitsSource",
    "ImageFolderSource",
    "ImageReadError",
    "iterator_state_to_json",
    "make_eval_pipeline",
    "make_global_batch",
    "make_iterator",
    "make_pipeline",
    "split_indices",
    "stack_examples",
    "write_image_folder",
]
