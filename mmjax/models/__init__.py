"""mmjax.models: architectures shared by several experiments."""
from mmjax.models.clip import (
  CLIPTextConfig,
  CLIPTextModel,
  CLIPTextModelWithProjection,
  CLIPVisionConfig,
  CLIPVisionModel,
  CLIPVisionModelWithProjection,
)
from mmjax.models.dit import DiT, DiTConfig
from mmjax.models.kv_cache import KVCache, init_cache
from mmjax.models.llama import LlamaConfig, LlamaForCausalLM
from mmjax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from mmjax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from mmjax.models.llava_processor import LlavaOnevisionProcessor
from mmjax.models.qwen2 import CausalLMOutput, Qwen2Config, Qwen2ForCausalLM
from mmjax.models.siglip import SiglipVisionConfig, SiglipVisionModel
from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.models.vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian

__all__ = ['AutoencoderKL', 'AutoencoderKLConfig', 'CLIPTextConfig', 'CLIPTextModel', 'CLIPTextModelWithProjection',
           'CLIPVisionConfig', 'CLIPVisionModel', 'CLIPVisionModelWithProjection', 'CausalLMOutput', 'DiT', 'DiTConfig',
           'DiagonalGaussian', 'KVCache', 'LlamaConfig', 'LlamaForCausalLM', 'LlavaConfig',
           'LlavaForConditionalGeneration', 'LlavaOnevisionConfig', 'LlavaOnevisionForConditionalGeneration',
           'LlavaOnevisionProcessor', 'Qwen2Config', 'Qwen2ForCausalLM', 'SiglipVisionConfig', 'SiglipVisionModel',
           'UNet2DConditionConfig', 'UNet2DConditionModel', 'init_cache']
