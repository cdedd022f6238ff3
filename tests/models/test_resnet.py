"""ResNet vs a torch re-derivation of torchvision's ResNet (bottleneck v1.5) at tiny widths: C2..C5 and logits in
inference mode, batch-statistics normalisation and running-statistic updates in training mode; ResNet-50 shapes
and parameter count by eval_shape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from mmjax.models.resnet import ResNet, ResNetConfig
from mmjax.weights.resnet import load_torchvision
from mmjax.weights.source import WeightsMismatchError
from tests.numerics import assert_close_torch

TINY = ResNetConfig(depths=(2, 1, 1, 1), widths=(4, 8, 16, 32), stem_width=8, num_classes=10)


class TorchBottleneck(nn.Module):
  """torchvision.models.resnet.Bottleneck (v1.5: stride on conv2), with its module names."""

  def __init__(self, inplanes: int, width: int, stride: int, downsample: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width * 4)
    self.downsample = nn.Sequential(nn.Conv2d(inplanes, width * 4, 1, stride, bias=False),
                                    nn.BatchNorm2d(width * 4)) if downsample else None

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision.models.resnet.ResNet with Bottleneck blocks; forward returns (C2, C3, C4, C5, logits)."""

  def __init__(self, config: ResNetConfig):
    super().__init__()
    self.conv1 = nn.Conv2d(3, config.stem_width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(config.stem_width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = config.stem_width
    for i, (depth, width) in enumerate(zip(config.depths, config.widths)):
      blocks = []
      for j in range(depth):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(TorchBottleneck(inplanes, width, stride, stride != 1 or inplanes != width * 4))
        inplanes = width * 4
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(inplanes, config.num_classes)
    self.depth = len(config.depths)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    features = []
    for i in range(self.depth):
      x = getattr(self, f'layer{i + 1}')(x)
      features.append(x)
    return (*features, self.fc(x.mean((2, 3))))


@pytest.fixture(scope='module')
def reference():
  """(torch model with random weights and running statistics, its state dict as numpy, NCHW input [2, 3, 64, 48])."""
  torch.manual_seed(0)
  model = TorchResNet(TINY)
  with torch.no_grad():
    for name, buffer in model.named_buffers():
      if name.endswith('running_mean'):
        buffer.normal_(0, 0.1)
      elif name.endswith('running_var'):
        buffer.uniform_(0.5, 1.5)
    for name, p in model.named_parameters():
      if '.bn' in name or name.startswith('bn'):
        p.add_(0.1 * torch.randn(p.shape))
  state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)
  return model, state, pixels


def test_inference_matches_torch(reference, tmp_path):
  model, state, pixels = reference
  module, variables = load_torchvision(state, TINY)
  x = jnp.asarray(pixels.transpose(0, 2, 3, 1))
  out, logits = jax.jit(lambda v, x: (module.apply(v, x), module.apply(v, x, method='classify')))(variables, x)
  with torch.no_grad():
    expected = model.eval()(torch.from_numpy(pixels))
  assert [o.shape for o in out] == [(2, 16, 12, 16), (2, 8, 6, 32), (2, 4, 3, 64), (2, 2, 2, 128)]
  for ours, theirs in zip((*out, logits), expected):
    assert_close_torch(ours, theirs.numpy().transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs.numpy())
  # The same tensors from a .safetensors file; a torch .pth through torch.load(weights_only=True).
  save_file(state, tmp_path / 'r.safetensors')
  torch.save(model.state_dict(), tmp_path / 'r.pth')
  for name in ('r.safetensors', 'r.pth'):
    _, loaded = load_torchvision(tmp_path / name, TINY)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_training_mode_matches_torch(reference):
  """Batch statistics normalise; running mean/var move as torch's (momentum 0.1, unbiased variance)."""
  model, state, pixels = reference
  module, variables = load_torchvision(state, TINY)
  train_model = TorchResNet(TINY)
  train_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  train_model.train()
  with torch.no_grad():
    expected = train_model(torch.from_numpy(pixels))
  out, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  for ours, theirs in zip(out, expected):
    assert_close_torch(ours, theirs.numpy().transpose(0, 2, 3, 1))
  stats = updates['batch_stats']
  assert_close_torch(stats['layer2_0']['bn2']['var'], train_model.layer2[0].bn2.running_var.numpy())
  assert_close_torch(stats['layer4_0']['downsample_bn']['mean'],
                     train_model.layer4[0].downsample[1].running_mean.numpy())


def test_resnet50_shapes_and_parameter_count():
  """ResNet-50 at 224 px: C2..C5 of 256/512/1024/2048 channels at 56/28/14/7; 25,557,032 trainable parameters with
  the 1000-class fc head (torchvision's count; BatchNorm running statistics are buffers, not counted), 23,508,032
  without it."""
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(ResNet(ResNetConfig(num_classes=1000)).init, jax.random.key(0), x)
  count = sum(np.prod(v.shape) for v in jax.tree.leaves(variables['params']))
  assert count == 25_557_032
  assert count - sum(np.prod(v.shape) for v in jax.tree.leaves(variables['params']['fc'])) == 23_508_032
  out = jax.eval_shape(ResNet(ResNetConfig(num_classes=1000)).apply, variables, x)
  assert [o.shape for o in out] == [(1, 56, 56, 256), (1, 28, 28, 512), (1, 14, 14, 1024), (1, 7, 7, 2048)]


def test_errors(reference):
  _, state, _ = reference
  broken = {k: v for k, v in state.items() if k != 'layer3.0.bn1.running_var'}
  with pytest.raises(WeightsMismatchError, match='missing 1 parameters: batch_stats/layer3_0/bn1/var'):
    load_torchvision(broken, TINY)
  with pytest.raises(WeightsMismatchError, match=r'tensor fc.weight has shape \(10, 128\); the model needs'):
    load_torchvision(state, ResNetConfig(depths=(2, 1, 1, 1), widths=(4, 8, 16, 32), stem_width=8, num_classes=7))
  with pytest.raises(ValueError, match='no fc head'):
    module, variables = load_torchvision(state, ResNetConfig(depths=(2, 1, 1, 1), widths=(4, 8, 16, 32),
                                                             stem_width=8))
    module.apply(variables, jnp.zeros((1, 32, 32, 3)), method='classify')
