"""mmjax.data: Grain pipelines sharded per process, global batch assembly, and data sources."""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'chat_masking': ('IGNORE_INDEX', 'QWEN2_TOKEN_IDS', 'ChatTokenIds', 'render_chatml', 'tokenize_conversation'),
  'digits': ('DigitsSource', 'split_indices', 'write_image_folder'),
  'global_batch': ('make_global_batch',),
  'image_check': ('check_images',),
  'image_folder': ('ImageFolderSource', 'ImageReadError', 'verify_image_folders'),
  'iterator': ('iterator_state_to_json', 'make_iterator'),
  'llava_json': ('LlavaJsonSource',),
  'mixture': ('MixturePart', 'MixtureSource', 'load_mixture', 'sample_indices'),
  'pipeline': ('make_eval_pipeline', 'make_pipeline', 'stack_examples'),
  'shapes': ('SceneSpec', 'Shape', 'caption', 'draw_scene', 'make_examples', 'random_scene', 'write_llava_dataset'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
