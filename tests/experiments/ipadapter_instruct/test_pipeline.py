"""IPAdapter-Instruct inference (pipeline.py) and the generate program on the tiny random stack.

One pipeline folder and adapter file are written per module and loaded once; every sampling call uses one step
and two images, so the 2-branch and 4-branch sampling loops compile once each and the generate program reuses
them (its UNet module equals the fixture's)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from PIL import Image
from sklearn.datasets import load_sample_image

from configs import ipadapter_instruct as ipai_config
from experiments.ipadapter_instruct import checkpoint, generate, pipeline
from experiments.ipadapter_instruct.tiny import IMAGE_SIZE, SCHEDULER, TINY_RESAMPLER, WIDTH, tiny_pipeline
from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.models.sd15 import save_pipeline

PROMPT = 'a red boat'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """A tiny SD folder with image_encoder/, a random adapter for it and two condition images (PNG)."""
  root = tmp_path_factory.mktemp('ipai')
  sd = tiny_pipeline(0)
  save_pipeline(root / 'sd', sd)
  checkpoint.save_adapter(root / 'adapter.safetensors', pipeline.random_adapter(sd, TINY_RESAMPLER, seed=1),
                          sd.unet.config, TINY_RESAMPLER)
  rng = np.random.default_rng(0)
  for k, shape in enumerate([(40, 24, 3), (30, 45, 3)]):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f'cond{k}.png')
  return root


@pytest.fixture(scope='module')
def pipe(files):
  return pipeline.InstructPipeline.load(files / 'sd', files / 'adapter.safetensors', resampler_config=TINY_RESAMPLER)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(1).integers(0, 256, (2, 36, 48, 3), dtype=np.uint8)


def test_queries_pick_the_guidance_mode_and_scale():
  simple = {'use everything from the image', 'use the style', 'use the colour', 'use the face'}
  assert {q for q in pipeline.QUERIES if pipeline.guidance_mode(q) == 'simple'} == simple
  assert len(pipeline.QUERIES) == 9 and all(pipeline.guidance_mode(q) == 'three_way'
                                            for q in set(pipeline.QUERIES) - simple)
  assert pipeline.ip_scale('use the pose', 0.8, True) == pytest.approx(0.6)
  assert pipeline.ip_scale('use the composition', 0.9, True) == pytest.approx(0.7)
  assert pipeline.ip_scale('use the composition', 0.8, False) == 0.8
  assert pipeline.ip_scale('use the object', 0.8, True) == 0.8
  for call in (lambda: pipeline.guidance_mode('use the vibe'), lambda: pipeline.ip_scale('use the vibe', 0.8, True)):
    with pytest.raises(ValueError, match="unknown query 'use the vibe'") as error:
      call()
    assert all(repr(q) in str(error.value) for q in pipeline.QUERIES)


@pytest.mark.parametrize('size, transpose', [(224, False), (32, True)])
def test_preprocess_matches_clip_image_processor(size, transpose):
  image = load_sample_image('china.jpg')  # a real photograph, 427 x 640
  image = np.ascontiguousarray(image.transpose(1, 0, 2)) if transpose else image
  processor = getattr(transformers, 'CLIPImageProcessorPil', transformers.CLIPImageProcessor)(
      size={'shortest_edge': size}, crop_size={'height': size, 'width': size})
  expected = processor(images=Image.fromarray(image), return_tensors='np')['pixel_values'].transpose(0, 2, 3, 1)
  got = pipeline.preprocess(image, size)
  assert got.shape == expected.shape == (1, size, size, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(pipeline.preprocess([Image.fromarray(image)], size), got)
  with pytest.raises(ValueError, match='uint8'):
    pipeline.preprocess(image.astype(np.float32), size)


def test_three_way_reduces_to_simple_when_scales_are_equal(pipe, images):
  kw = dict(num_inference_steps=1, guidance_scale=4.0, instruct_scale=4.0, image_scale=4.0, seed=3)
  simple = pipe.sample_latents(images, 'use the object', PROMPT, mode='simple', **kw)
  three_way = pipe.sample_latents(images, 'use the object', PROMPT, mode='three_way', **kw)
  np.testing.assert_allclose(three_way, simple, atol=1e-5, rtol=1e-5)
  unequal = pipe.sample_latents(images, 'use the object', PROMPT, mode='three_way', **{**kw, 'image_scale': 1.0})
  assert float(jnp.max(jnp.abs(unequal - simple))) > 1e-3
  with pytest.raises(ValueError, match='mode must be one of'):
    pipe.sample_latents(images, 'use the object', mode='four_way', **kw)


def test_three_way_step_equals_hand_computation(pipe, images):
  """One guided DDIM step for a pose query (λ = 0.7 − 0.2) against its four branches built here from their
  definitions. Each branch's step x_b = DDIM(x, ε_b) is the pipeline's UNet call in sample() with that branch alone
  (the 2-branch loop at guidance scale 0 or 1, a program already compiled); a DDIM step is affine in ε and the 3-way
  weights on (ε_U, ε_I, ε_E, ε_full) sum to 1, so the guided step is the same weighted sum of the x_b."""
  s_img, s_text, s_instr = 0.5, 3.0, 2.0
  x = jax.random.normal(jax.random.key(5), (2, IMAGE_SIZE // 2, IMAGE_SIZE // 2, 4))
  got = pipe.sample_latents(images, 'use the pose', PROMPT, num_inference_steps=1, latents=x, scale=0.7,
                            image_scale=s_img, guidance_scale=s_text, instruct_scale=s_instr)

  # Texts and batch sizes as the pipeline's own calls have them, so that no encoder compiles anew.
  pixels = jnp.asarray(pipeline.preprocess(images, IMAGE_SIZE))
  prompt, negative = (jnp.broadcast_to(pipe.sd.encode_prompt([text]), (2, 77, WIDTH))
                      for text in (PROMPT, pipeline.DEFAULT_NEGATIVE))
  neg = pipeline.DEFAULT_NEGATIVE
  ip_u, ip_i = jnp.split(pipe.ip_tokens(jnp.concatenate([jnp.zeros_like(pixels), pixels]), ['', '', neg, neg], neg),
                         2)
  ip_e, ip_full = jnp.split(pipe.ip_tokens(jnp.concatenate([pixels, pixels]),
                                           ['everything'] * 2 + ['use the pose'] * 2, PROMPT), 2)
  u, i, e, full = (negative, ip_u), (negative, ip_i), (negative, ip_e), (prompt, ip_full)
  scheduler = from_diffusers_config(SCHEDULER, 1)

  def step(low, high, s):  # DDIM(x, ε_low + s·(ε_high − ε_low)), the IP tokens at λ = 0.5
    cond = {'text': jnp.stack([low[0], high[0]]), 'ip': jnp.stack([low[1], high[1]]),
            'scale': jnp.full((2, 2), 0.5, jnp.float32)}
    return sample(pipe._denoise, pipe.sd.params['unet'], scheduler, x, cond=cond, guidance=cfg(s))

  x_u, x_i, x_e, x_full = step(u, i, 0.0), step(u, i, 1.0), step(e, full, 0.0), step(e, full, 1.0)
  for a, b in [(x_u, x_i), (x_i, x_e), (x_e, x_full)]:
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # every branch counts

  def guided(s_img, s_text, s_instr):
    return (1 - s_img) * x_u + (s_img - s_text) * x_i + (s_text - s_instr) * x_e + s_instr * x_full

  np.testing.assert_allclose(got, guided(s_img, s_text, s_instr), atol=1e-5, rtol=1e-5)
  assert float(jnp.max(jnp.abs(got - guided(s_instr, s_text, s_img)))) > 1e-3  # the scales' order matters


def test_generate_program_writes_images_grid_and_settings(files, pipe, tmp_path):
  config = ipai_config.get_config('variant=smoke')
  config.pipeline, config.adapter = str(files / 'sd'), str(files / 'adapter.safetensors')
  config.image = f'{files / "cond0.png"}, {files / "cond1.png"}'
  config.query, config.prompt = 'use the style', PROMPT
  g = config.generate
  g.num_steps, g.num_images, g.height, g.width, g.seed = 1, 2, 0, 0, 4
  settings = generate.generate_program(config, str(tmp_path))

  out = tmp_path / 'generate'
  saved = json.loads((out / 'settings.json').read_text())
  assert saved == json.loads(json.dumps(settings))
  assert (saved['query'], saved['prompt'], saved['guidance_mode'], saved['ip_scale'], saved['num_images']) == (
      'use the style', PROMPT, 'simple', 0.8, 2)
  read = lambda name: np.asarray(Image.open(out / name))  # noqa: E731
  rows = [np.stack([read(f'image_{k}_{n}.png') for n in range(2)]) for k in range(2)]
  condition = Image.open(files / 'cond0.png').convert('RGB')
  expected = pipe.generate([condition] * 2, 'use the style', PROMPT, num_inference_steps=1, seed=4)
  expected = np.round(np.asarray(expected) * 255)
  assert rows[0].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
  np.testing.assert_allclose(rows[0], expected, atol=1)
  assert np.any(rows[0] != rows[1])  # the same noise, another condition
  grid, cell = read('grid.png'), IMAGE_SIZE + generate._GAP
  assert grid.shape == (2 * cell - generate._GAP, 3 * cell - generate._GAP, 3)
  np.testing.assert_array_equal(grid[cell:cell + IMAGE_SIZE, 2 * cell:], rows[1][1])


def test_smoke_generate_puts_an_adapter_file_on_the_tiny_stack(files):
  config = ipai_config.get_config('variant=smoke')
  config.adapter = str(files / 'adapter.safetensors')
  pipe, source = generate.load_instruct_pipeline(config)
  expected = checkpoint.load_adapter(files / 'adapter.safetensors', pipe.sd.unet.config, TINY_RESAMPLER)
  assert config.adapter in source and pipe.sd.unet.extra_token_sets == 1
  jax.tree.map(np.testing.assert_array_equal, pipe.image_proj, expected.image_proj)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.split_unet(pipe.sd.params['unet'])[1], expected.unet_ip)


def test_generate_program_errors(files, tmp_path):
  config = ipai_config.get_config('variant=smoke')
  config.pipeline, config.adapter = str(files / 'sd'), str(files / 'adapter.safetensors')
  config.image = str(files / 'cond0.png')

  def fails(match, **changes):
    bad = config.copy_and_resolve_references()
    for key, value in changes.items():
      bad[key] = value
    with pytest.raises(ValueError, match=match):
      generate.generate_program(bad, str(tmp_path))

  fails('cond9.png does not exist', image=str(files / 'cond9.png'))
  fails('is a folder', image=str(files))
  fails('config.image is empty', image='')
  fails("unknown query 'use the mood'.*'use the style'", query='use the mood')
  fails('config.adapter is empty', adapter='')
  default = ipai_config.get_config()
  default.image = config.image
  with pytest.raises(ValueError, match='config.pipeline is empty'):
    generate.generate_program(default, str(tmp_path))
  no_encoder = tmp_path / 'no_encoder'
  shutil.copytree(files / 'sd', no_encoder, ignore=shutil.ignore_patterns('image_encoder'))
  fails(f'{no_encoder}: the pipeline has no image_encoder/ folder', pipeline=str(no_encoder))
  assert not (tmp_path / 'generate').exists()
