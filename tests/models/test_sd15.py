"""The Stable Diffusion pipeline folder: our CLIP tokenizer against transformers' CLIPTokenizer (and, where
open-clip-torch's wheel is installed, on OpenAI's real vocabulary too), the whole pipeline
against diffusers' StableDiffusionPipeline on one tiny random pipeline (DDIM, 3 steps, simple CFG), seeded
generation, the save_pipeline round trip through diffusers, and the errors for a folder missing a component."""
import gzip
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers

from mmjax.data.clip_tokenizer import BOS, EOS, CLIPTokenizer
from mmjax.models.clip import CLIPVisionModelWithProjection
from mmjax.models.sd15 import load_pipeline, save_pipeline
from tests.hf_models import CLIP_TEXT, CLIP_VISION, perturb
from tests.models.test_unet import UNET
from tests.models.test_vae import VAE
from tests.numerics import assert_close_torch, assert_same_program

# A tiny BPE vocabulary: a few letters, each also as a word end, '1' and '!' only as word ends, and merges that
# spell "the", "cat" and "dog"; everything else is unknown (<|endoftext|>).
LETTERS = 'acdeghiostw'
MERGES = [('t', 'h'), ('th', 'e</w>'), ('c', 'a'), ('ca', 't</w>'), ('d', 'o'), ('do', 'g</w>')]
TOKENS = [*LETTERS, *(c + '</w>' for c in LETTERS), '1</w>', '!</w>', *(a + b for a, b in MERGES), BOS, EOS]
VOCAB = {token: i for i, token in enumerate(TOKENS)}
# Lowercasing, whitespace runs and newlines, digits, punctuation runs, a contraction, a typed special token,
# unknown characters, the empty prompt and one past 77 tokens (truncated, its end token kept).
PROMPTS = ['The  cat\n', 'a DOG!! 11', "it's the <|endoftext|> cat", '', 'the cat ' * 50, 'café qx', '\tdog ']
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)
HEIGHT = WIDTH = 16  # latents 8 x 8 (the tiny VAE halves)


def write_tokenizer(directory: Path, **settings) -> None:
  """vocab.json, merges.txt and tokenizer_config.json (model_max_length 77 and `settings`) as the hub holds them."""
  directory.mkdir(parents=True)
  (directory / 'vocab.json').write_text(json.dumps(VOCAB))
  (directory / 'merges.txt').write_text('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in MERGES))
  (directory / 'tokenizer_config.json').write_text(json.dumps({'model_max_length': 77, **settings}))


def reference_ids(directory: Path, prompts: list[str]) -> np.ndarray:
  tokenizer = transformers.CLIPTokenizer.from_pretrained(directory)
  return tokenizer(prompts, padding='max_length', max_length=tokenizer.model_max_length, truncation=True,
                   return_tensors='np').input_ids


@pytest.mark.parametrize('pad_token', [EOS, '!</w>'])
def test_tokenizer_matches_transformers(tmp_path, pad_token):
  write_tokenizer(tmp_path / 'tokenizer', pad_token=pad_token)
  ours = CLIPTokenizer.from_folder(tmp_path / 'tokenizer')
  ids = ours(PROMPTS)
  np.testing.assert_array_equal(ids, reference_ids(tmp_path / 'tokenizer', PROMPTS))
  assert ids.shape == (len(PROMPTS), 77) and (ids[:, 0] == VOCAB[BOS]).all()
  assert ids[4, -1] == VOCAB[EOS] and (ids[3, 2:] == VOCAB[pad_token]).all()
  np.testing.assert_array_equal(ours('The  CAT'), ours(['the cat']))
  ours.save(tmp_path / 'saved')
  np.testing.assert_array_equal(CLIPTokenizer.from_folder(tmp_path / 'saved')(PROMPTS), ids)
  np.testing.assert_array_equal(reference_ids(tmp_path / 'saved', PROMPTS), ids)


def byte_alphabet() -> list[str]:
  """GPT-2's printable stand-ins for the 256 bytes, in OpenAI CLIP's vocabulary order (printable bytes first)."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  rest = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def _real_clip_vocabulary() -> Path:
  """OpenAI's CLIP BPE merges as the open-clip-torch wheel ships them, found without importing open_clip (its
  import needs torchvision, which no build pairs with our torch; `make test` installs the wheel with --no-deps)."""
  try:
    path = Path(importlib.metadata.distribution('open-clip-torch').locate_file(
        'open_clip/bpe_simple_vocab_16e6.txt.gz'))
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('open-clip-torch (which ships the real CLIP BPE vocabulary) is not installed; make test installs it')
  assert path.is_file(), f'open-clip-torch is installed but {path} is missing'
  return path


def test_tokenizer_with_the_real_clip_vocabulary(tmp_path):
  # OpenAI's vocabulary: the bytes, the bytes ending a word, one token per merge (49152 in all), the two markers.
  lines = gzip.open(_real_clip_vocabulary()).read().decode('utf-8').split('\n')
  merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
  alphabet = byte_alphabet()
  tokens = [*alphabet, *(c + '</w>' for c in alphabet), *(a + b for a, b in merges), BOS, EOS]
  directory = tmp_path / 'tokenizer'
  directory.mkdir()
  (directory / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (directory / 'merges.txt').write_text('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges))
  (directory / 'tokenizer_config.json').write_text(json.dumps({'model_max_length': 77}))
  prompts = [*PROMPTS, 'A photograph of an astronaut riding a horse, 4k, trending on ArtStation',
             "Don't panic: it's 42 (ok?)", 'naïve café — über']
  ours = CLIPTokenizer.from_folder(directory)
  ids = ours(prompts)
  np.testing.assert_array_equal(ids, reference_ids(directory, prompts))
  assert len(tokens) == 49408 and len(set(ids[-3:].ravel())) > 20  # real words, not unknown tokens


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """A tiny random diffusers StableDiffusionPipeline with DDIM and an IP-Adapter image encoder, saved;
  (folder, pipeline)."""
  directory = tmp_path_factory.mktemp('sd15')
  write_tokenizer(directory / 'source_tokenizer')
  tokenizer = transformers.CLIPTokenizer.from_pretrained(directory / 'source_tokenizer')
  torch.manual_seed(0)
  text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{
      **CLIP_TEXT, 'max_position_embeddings': 77, 'bos_token_id': VOCAB[BOS], 'eos_token_id': VOCAB[EOS],
      'pad_token_id': VOCAB[EOS]})).eval()
  unet, vae = diffusers.UNet2DConditionModel(**UNET).eval(), diffusers.AutoencoderKL(**VAE).eval()
  image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VISION)).eval()
  for seed, model in enumerate((text_encoder, unet, vae, image_encoder)):
    perturb(model, seed)
  pipe = diffusers.StableDiffusionPipeline(
      vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
      scheduler=diffusers.DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
      image_encoder=image_encoder, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(directory / 'pipeline')
  # The tokenizer folder as the hub's SD1.5 has it (vocab.json + merges.txt), whatever transformers wrote.
  shutil.rmtree(directory / 'pipeline' / 'tokenizer')
  shutil.copytree(directory / 'source_tokenizer', directory / 'pipeline' / 'tokenizer')
  return directory / 'pipeline', pipe


def diffusers_latents(pipe, prompts: list[str], latents: np.ndarray, steps: int, scale: float) -> np.ndarray:
  with torch.no_grad():
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=scale, latents=torch.from_numpy(latents),
               height=HEIGHT, width=WIDTH, output_type='latent')
  return out.images.numpy()


@pytest.fixture(scope='module')
def ours(reference):
  """Our pipeline from the reference folder, loaded once so that the tests share its compiled programs."""
  return load_pipeline(reference[0])


PROMPT_PAIR = ['the cat', 'a dog 1!']


def test_pipeline_matches_diffusers(reference, ours):
  _, pipe = reference
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((2, 4, HEIGHT // 2, WIDTH // 2)).astype(np.float32)

  with torch.no_grad():
    ids = pipe.tokenizer(PROMPT_PAIR, padding='max_length', max_length=77, truncation=True, return_tensors='pt')
    states = pipe.text_encoder(ids.input_ids).last_hidden_state.numpy()
  assert_close_torch(ours.encode_prompt(PROMPT_PAIR), states, msg='prompt embeddings')

  expected = diffusers_latents(pipe, PROMPT_PAIR, latents, 3, 7.5)
  got = ours.sample_latents(PROMPT_PAIR, num_inference_steps=3, guidance_scale=7.5,
                            latents=latents.transpose(0, 2, 3, 1), height=HEIGHT, width=WIDTH)
  assert_close_torch(np.asarray(got).transpose(0, 3, 1, 2), expected, msg='DDIM latents')
  assert np.abs(expected - latents).max() > 0.1  # the three steps moved the latents

  with torch.no_grad():
    decoded = pipe.vae.decode(torch.from_numpy(expected) / pipe.vae.config.scaling_factor).sample
  images = (decoded / 2 + 0.5).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
  assert_close_torch(ours.decode(got), images, msg='decoded images')


def test_seeded_generation(ours):
  """generate = decode(sample_latents) from seeded noise; the same seed gives the same images, another seed others."""
  kwargs = dict(num_inference_steps=3, guidance_scale=7.5, height=HEIGHT, width=WIDTH)
  first = ours.generate(PROMPT_PAIR, seed=1, **kwargs)
  assert first.shape == (2, HEIGHT, WIDTH, 3)
  assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
  assert_same_program(ours.generate(PROMPT_PAIR, seed=1, **kwargs), first)
  assert_same_program(ours.decode(ours.sample_latents(PROMPT_PAIR, seed=1, **kwargs)), first)
  assert float(np.abs(ours.generate(PROMPT_PAIR, seed=2, **kwargs) - first).max()) > 1e-3
  with pytest.raises(ValueError, match='exactly one of seed= .* and latents='):
    ours.generate(PROMPT_PAIR, **kwargs)


def test_save_pipeline_round_trip(reference, ours, tmp_path):
  """save_pipeline writes a folder that load_pipeline reads back bitwise and diffusers loads with the same weights."""
  _, pipe = reference
  save_pipeline(tmp_path / 'saved', ours)
  reloaded = load_pipeline(tmp_path / 'saved')
  assert_same_program(reloaded.params, ours.params)
  assert reloaded.scheduler_config == ours.scheduler_config
  np.testing.assert_array_equal(reloaded.tokenizer(PROMPTS), ours.tokenizer(PROMPTS))
  back = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / 'saved', safety_checker=None)
  assert isinstance(back.scheduler, diffusers.DDIMScheduler)
  np.testing.assert_array_equal(reference_ids(tmp_path / 'saved' / 'tokenizer', PROMPTS), ours.tokenizer(PROMPTS))
  assert isinstance(ours.image_encoder, CLIPVisionModelWithProjection)
  for name in ('unet', 'vae', 'text_encoder', 'image_encoder'):
    saved, original = getattr(back, name).state_dict(), getattr(pipe, name).state_dict()
    assert saved.keys() == original.keys(), name
    for key, value in original.items():
      np.testing.assert_array_equal(saved[key].numpy(), value.numpy(), err_msg=f'{name}: {key}')


@pytest.mark.parametrize('component', ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'])
def test_missing_component_is_named(reference, tmp_path, component):
  shutil.copytree(reference[0], tmp_path / 'pipe')
  shutil.rmtree(tmp_path / 'pipe' / component)
  with pytest.raises(ValueError, match=rf'{re.escape(str(tmp_path / "pipe"))}: .*no {component}/ folder'):
    load_pipeline(tmp_path / 'pipe')


def test_incomplete_or_wrong_components_are_named(reference, tmp_path):
  shutil.copytree(reference[0], tmp_path / 'pipe')
  # The hub's SD1.5 ships a PNDMScheduler: refused with the way out, which reads its config as DDIM.
  scheduler_file = tmp_path / 'pipe' / 'scheduler' / 'scheduler_config.json'
  scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()), '_class_name': 'PNDMScheduler',
                                        'skip_prk_steps': True}))
  with pytest.raises(ValueError, match=r"scheduler_config\.json: .*PNDMScheduler.*scheduler='DDIMScheduler'"):
    load_pipeline(tmp_path / 'pipe')
  as_ddim = load_pipeline(tmp_path / 'pipe', scheduler='DDIMScheduler').scheduler_config
  assert as_ddim['_class_name'] == 'DDIMScheduler' and as_ddim['steps_offset'] == SCHEDULER['steps_offset']
  (tmp_path / 'pipe' / 'tokenizer' / 'merges.txt').unlink()
  with pytest.raises(ValueError, match=r'tokenizer: the CLIP tokenizer needs merges\.txt'):
    load_pipeline(tmp_path / 'pipe', scheduler='DDIMScheduler')
  shutil.rmtree(tmp_path / 'pipe' / 'vae')
  shutil.copytree(tmp_path / 'pipe' / 'unet', tmp_path / 'pipe' / 'vae')
  with pytest.raises(ValueError, match=r'vae: the vae component must be the AutoencoderKL'):
    load_pipeline(tmp_path / 'pipe', scheduler='DDIMScheduler')
