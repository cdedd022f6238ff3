"""IPAdapter-Instruct training smoke: the tiny stack learns the synthetic tasks (the loss falls), only the adapter
changes, checkpoints hold only the adapter, and the exported tencent-layout file holds the trained weights."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs import ipadapter_instruct
from experiments.ipadapter_instruct import experiment, tiny
from experiments.ipadapter_instruct.checkpoint import AdapterWeights, load_adapter, save_adapter
from experiments.ipadapter_instruct.pipeline import random_adapter, sd15_resampler_config
from mmjax.models.sd15 import save_pipeline
from mmjax.train import train_and_evaluate
from mmjax.weights import read_workdir_params
from mmjax.weights.unet import attn_processor_paths
from tests.train.metrics_io import read_metrics


def _config(tmp_path):
  config = ipadapter_instruct.get_config('variant=smoke')
  config.total_steps = 25
  config.ckpt_every = 25
  config.log_every = 1
  config.progress_bar = False
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}  # one device: the step is the same program on any mesh
  config.data.smoke_dir = str(tmp_path / 'data')
  config.data.smoke_per_task = 16
  return config


def test_smoke_trains_only_the_adapter(tmp_path):
  config = _config(tmp_path)
  stack = experiment.make_stack(config)
  start = flatten_dict(experiment._smoke_adapter(stack, config.seed)._asdict())
  workdir = str(tmp_path / 'run')
  out = train_and_evaluate(config, workdir)

  losses = [row['loss'] for _, row in sorted(read_metrics(workdir).items())]
  assert len(losses) == config.total_steps and np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses

  # The whole model the loss saw: the trained adapter and SD's frozen parts, which equal the tiny stack leaf by leaf.
  state = out['state']
  model = state.model_params()
  assert sorted(model) == ['image_encoder', 'image_proj', 'text_encoder', 'unet', 'vae']
  sd = tiny.tiny_pipeline(config.seed).params
  frozen = flatten_dict(state.frozen)
  assert sorted({path[0] for path in frozen}) == sorted(experiment.FROZEN)
  for path, value in flatten_dict(sd).items():
    np.testing.assert_array_equal(np.asarray(frozen[path]), value, err_msg='/'.join(path))
  # Every adapter leaf moved: the resampler's and every attn2's to_k_ip_0 / to_v_ip_0.
  trained = flatten_dict({'image_proj': state.params['image_proj'], 'unet_ip': state.params['unet']})
  assert trained.keys() == start.keys()
  attn2 = [path for _, path in attn_processor_paths(tiny.UNET) if path[-1] == 'attn2']
  assert {path[1:-2] for path in trained if path[0] == 'unet_ip'} == set(attn2)
  for path, value in trained.items():
    assert not np.array_equal(np.asarray(value), np.asarray(start[path])), f'{"/".join(path)} did not train'

  # The checkpoint holds the adapter only; the exported file loads back to the trained weights.
  saved, info = read_workdir_params(workdir)
  assert info.step == config.total_steps
  jax.tree.map(np.testing.assert_array_equal, saved, jax.device_get(state.params))
  assert out['report'] == {'adapter': f'{workdir}/{experiment.ADAPTER_FILE}'}
  exported = load_adapter(out['report']['adapter'], stack.unet.config, stack.resampler.config)
  jax.tree.map(np.testing.assert_array_equal, exported._asdict(),
               {'image_proj': jax.device_get(state.params['image_proj']), 'unet_ip': jax.device_get(
                   state.params['unet'])})


def test_pipeline_folder_stack_and_adapter_init(tmp_path):
  """The default variant: modules from a diffusers folder's configs, and the adapter from an instruct file as it is
  or from an IP-Adapter+ file through instruct_from_plus."""
  config = ipadapter_instruct.get_config()
  with pytest.raises(ValueError, match='config.pipeline is empty'):
    experiment.make_experiment(config)
  sd = tiny.tiny_pipeline(0)
  save_pipeline(tmp_path / 'sd', sd)
  config.pipeline = str(tmp_path / 'sd')
  stack = experiment.make_stack(config)
  assert stack.unet.config.block_out_channels == tiny.UNET.block_out_channels and stack.unet.extra_token_sets == 1
  assert stack.condition_size == tiny.VISION.image_size and stack.unet.dtype == jnp.bfloat16
  assert stack.resampler.config == sd15_resampler_config(sd)
  with pytest.raises(ValueError, match='config.adapter is empty'):
    experiment._adapter(config, stack)

  plus_config = dataclasses.replace(stack.resampler.config, instruct=False)
  full = random_adapter(sd, stack.resampler.config, seed=1)
  text_paths = ('proj_new_input', 'proj_prompt_input', 'prompt_layers', 'instruct_layers')
  plus = AdapterWeights({k: v for k, v in full.image_proj.items() if not k.startswith(text_paths)}, full.unet_ip)
  save_adapter(tmp_path / 'plus.safetensors', plus, sd.unet.config, plus_config)
  config.adapter = str(tmp_path / 'plus.safetensors')
  started = experiment._adapter(config, stack)
  flat, given = flatten_dict(started.image_proj), flatten_dict(plus.image_proj)
  assert set(given) < set(flat) and any(path[0].startswith('instruct_layers') for path in flat)
  for path, value in given.items():
    np.testing.assert_array_equal(flat[path], value)
  jax.tree.map(np.testing.assert_array_equal, started.unet_ip, plus.unet_ip)

  save_adapter(tmp_path / 'instruct.safetensors', started, sd.unet.config, stack.resampler.config)
  config.adapter = str(tmp_path / 'instruct.safetensors')
  jax.tree.map(np.testing.assert_array_equal, experiment._adapter(config, stack), started)
  with pytest.raises(ValueError, match='config.data.train is empty'):
    experiment.make_experiment(config)
