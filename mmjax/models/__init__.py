"""mmjax.models: architectures shared by several experiments."""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'clip': ('CLIPTextConfig', 'CLIPTextModel', 'CLIPTextModelWithProjection', 'CLIPVisionConfig', 'CLIPVisionModel',
           'CLIPVisionModelWithProjection'),
  'dit': ('DiT', 'DiTConfig'),
  'kv_cache': ('KVCache', 'init_cache'),
  'llama': ('LlamaConfig', 'LlamaForCausalLM'),
  'llava': ('LlavaConfig', 'LlavaForConditionalGeneration'),
  'llava_onevision': ('LlavaOnevisionConfig', 'LlavaOnevisionForConditionalGeneration'),
  'llava_processor': ('LlavaOnevisionProcessor',),
  'prm': ('RewardModel', 'from_decoder', 'from_decoder_params', 'step_scores'),
  'pvt_v2': ('PvtV2Config', 'PvtV2Model'),
  'qwen2': ('CausalLMOutput', 'Qwen2Config', 'Qwen2ForCausalLM'),
  'resnet': ('ResNet', 'ResNetConfig'),
  'siglip': ('SiglipVisionConfig', 'SiglipVisionModel'),
  'unet': ('UNet2DConditionConfig', 'UNet2DConditionModel'),
  'vae': ('AutoencoderKL', 'AutoencoderKLConfig', 'DiagonalGaussian'),
  'vggish': ('VGGish', 'int16_to_float', 'log_mel_examples'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
