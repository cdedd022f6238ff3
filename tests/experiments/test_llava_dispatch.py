"""Which attention implementation the real LLaVA-OneVision training step runs on GPU and TPU.

The 0.5B model of configs/llava_onevision.py (SigLIP-so400m tower, Qwen2-0.5B decoder, the paper's dtypes and
remat), its loss and gradient traced abstractly with the backend mocked: right padding reaches attention as segment
ids, so every attention call of the tower and the decoder, forward and backward, resolves to the Pallas flash kernel
(an explicit mask array would have sent the decoder to XLA).
"""
import jax
import jax.numpy as jnp
import pytest

from configs import llava_onevision as llava_config
from experiments.llava_onevision import model as model_lib
from experiments.llava_onevision.experiment import token_loss
from mmjax.models import llava
from mmjax.nn import attention


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_the_training_step_runs_the_flash_kernel(backend, monkeypatch):
  config = llava_config.get_config('size=0.5b,stage=ov')
  config.model.text.scan_layers = True  # one traced layer: the same attention calls, a faster trace
  cfg = model_lib.model_config(config, image_token_id=151646, video_token_id=151647)
  module = model_lib.make_module(cfg, config)
  params = jax.eval_shape(lambda: model_lib.random_init(module)(jax.random.key(0)))
  batch, length, crops, size = 2, 256, 2, cfg.vision_config.image_size
  batch_shapes = {
      'input_ids': jax.ShapeDtypeStruct((batch, length), jnp.int32),
      'labels': jax.ShapeDtypeStruct((batch, length), jnp.int32),
      'attention_mask': jax.ShapeDtypeStruct((batch, length), jnp.int32),
      'pixel_values': jax.ShapeDtypeStruct((batch, crops, size, size, 3), jnp.float32),
      'tap_index': jax.ShapeDtypeStruct((batch, length, 4), jnp.int32),
      'tap_weight': jax.ShapeDtypeStruct((batch, length, 4), jnp.float32)}
  logits_fn = llava.logits_fn(module)

  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  calls = []
  for name in ('pallas', 'xla', 'cudnn'):  # record each choice, compute with XLA (no accelerator here)
    monkeypatch.setitem(attention.ATTENTION_IMPLS, name, attention.ATTENTION_IMPLS[name]._replace(
        fn=lambda *a, name=name, **kw: calls.append((name, kw['q_segment_ids'] is not None))
        or attention.xla_attention(*a, **kw)))
  grads = jax.eval_shape(jax.grad(lambda p, b: token_loss(logits_fn(p, b), b['labels'])[0]), params, batch_shapes)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  # The tower's layers (unrolled) and the decoder's scanned layer; the decoder's calls carry the padding.
  tower, decoder = cfg.vision_config.num_hidden_layers, 1
  assert {name for name, _ in calls} == {'pallas'}, calls
  assert sum(with_segments for _, with_segments in calls) >= decoder
  assert len(calls) >= tower + decoder
