"""torchvision ResNet state dicts (e.g. ResNet50_Weights.IMAGENET1K_V1, resnet50-0676ba61.pth) -> mmjax.models.resnet
variables {'params', 'batch_stats'}.

conv1 / bn1 / layer{i}.{j}.{conv1-3, bn1-3, downsample.0, downsample.1} / fc -> conv1 / bn1 / layer{i}_{j}/{conv1-3,
bn1-3, downsample_conv, downsample_bn} / fc. A BatchNorm's weight and bias go to params {scale, bias}, its
running_mean and running_var to batch_stats {mean, var}; num_batches_tracked is read past, and so is the fc head
when the config has no classes.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.resnet import ResNet, ResNetConfig
from mmjax.weights.key_map import CONV, LINEAR, SAME, KeyMap, Target
from mmjax.weights.state_dict import StateDict, load_state_dict, read_state_dict


def _bn(torch_name: str, path: tuple[str, ...]) -> dict[str, Target]:
  return {f'{torch_name}.weight': Target(('params', *path, 'scale'), SAME),
          f'{torch_name}.bias': Target(('params', *path, 'bias'), SAME),
          f'{torch_name}.running_mean': Target(('batch_stats', *path, 'mean'), SAME),
          f'{torch_name}.running_var': Target(('batch_stats', *path, 'var'), SAME)}


def key_map(config: ResNetConfig) -> KeyMap:
  """torchvision names -> paths in the variables tree ('params' or 'batch_stats' first)."""
  targets = {'conv1.weight': Target(('params', 'conv1', 'kernel'), CONV), **_bn('bn1', ('bn1',))}
  for i, depth in enumerate(config.depths):
    for j in range(depth):
      name, block = f'layer{i + 1}.{j}', f'layer{i + 1}_{j}'
      for k in (1, 2, 3):
        targets[f'{name}.conv{k}.weight'] = Target(('params', block, f'conv{k}', 'kernel'), CONV)
        targets.update(_bn(f'{name}.bn{k}', (block, f'bn{k}')))
      if j == 0 and (i > 0 or config.stem_width != config.widths[0] * config.expansion):
        targets[f'{name}.downsample.0.weight'] = Target(('params', block, 'downsample_conv', 'kernel'), CONV)
        targets.update(_bn(f'{name}.downsample.1', (block, 'downsample_bn')))
  ignore = [r'.*num_batches_tracked']
  if config.num_classes is None:
    ignore.append(r'fc\.(weight|bias)')
  else:
    targets['fc.weight'] = Target(('params', 'fc', 'kernel'), LINEAR)
    targets['fc.bias'] = Target(('params', 'fc', 'bias'), SAME)
  return KeyMap(targets, ignore=tuple(ignore))


def load_torchvision(source: str | os.PathLike | StateDict, config: ResNetConfig | None = None,
                     dtype: DTypeLike = jnp.float32) -> tuple[ResNet, dict]:
  """(module, variables) from a torchvision ResNet state dict: a .pth (torch.load weights_only) or .safetensors
  path, or the dict itself. WeightsMismatchError names every missing, unexpected or misshapen tensor."""
  config = config or ResNetConfig()
  where = str(source) if isinstance(source, (str, os.PathLike)) else 'torchvision state dict'
  state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
  module = ResNet(config, dtype=dtype, param_dtype=dtype)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), dtype))
  return module, load_state_dict(abstract, state, key_map(config), where)
