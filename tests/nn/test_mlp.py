"""Activations vs torch/transformers, Mlp vs a torch fc1-act-fc2, SwiGLU vs HF Qwen2MLP with copied weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config
from transformers.activations import ACT2FN
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from mmjax.nn import Mlp, SwiGLU, get_activation
from tests.numerics import assert_close_torch

P = jax.sharding.PartitionSpec
X = np.linspace(-6.0, 6.0, 97, dtype=np.float32)


@pytest.mark.parametrize('name,torch_name', [('gelu', 'gelu'), ('gelu_tanh', 'gelu_pytorch_tanh'), ('relu', 'relu'),
                                             ('silu', 'silu'), ('quick_gelu', 'quick_gelu')])
def test_activation_matches_transformers(name, torch_name):
  expected = ACT2FN[torch_name](torch.from_numpy(X)).numpy()
  assert_close_torch(get_activation(name)(jnp.asarray(X)), expected)


def test_gelu_and_gelu_tanh_differ():
  exact, tanh = get_activation('gelu')(jnp.asarray(X)), get_activation('gelu_tanh')(jnp.asarray(X))
  assert float(jnp.abs(exact - tanh).max()) > 1e-4


def test_unknown_activation_lists_choices():
  with pytest.raises(ValueError, match='quick_gelu'):
    get_activation('swish')


def _linear_params(linear: torch.nn.Linear) -> dict:
  params = {'kernel': jnp.asarray(linear.weight.detach().numpy().T)}
  if linear.bias is not None:
    params['bias'] = jnp.asarray(linear.bias.detach().numpy())
  return params


def test_mlp_matches_torch_and_axes():
  torch.manual_seed(0)
  fc1, fc2 = torch.nn.Linear(8, 24), torch.nn.Linear(24, 5)
  x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
  expected = fc2(torch.nn.functional.gelu(fc1(torch.from_numpy(x)), approximate='tanh')).detach().numpy()
  layer = Mlp(24, out_features=5, activation='gelu_tanh')
  params = {'fc1': _linear_params(fc1), 'fc2': _linear_params(fc2)}
  out = layer.apply({'params': params}, jnp.asarray(x))
  assert_close_torch(out, expected)
  spec = nn.get_partition_spec(jax.eval_shape(layer.init, jax.random.key(0), x))['params']
  assert spec['fc1'] == {'kernel': P('embed', 'mlp'), 'bias': P('mlp')}
  assert spec['fc2'] == {'kernel': P('mlp', 'embed'), 'bias': P('embed')}
  assert layer.apply({'params': params}, jnp.asarray(x[:, 0])).shape == (2, 5)


def test_swiglu_matches_qwen2_mlp():
  torch.manual_seed(0)
  ref = Qwen2MLP(Qwen2Config(hidden_size=16, intermediate_size=40, hidden_act='silu'))
  x = np.random.default_rng(1).standard_normal((2, 7, 16)).astype(np.float32)
  expected = ref(torch.from_numpy(x)).detach().numpy()
  params = {name: _linear_params(getattr(ref, name)) for name in ('gate_proj', 'up_proj', 'down_proj')}
  layer = SwiGLU(40)
  assert_close_torch(layer.apply({'params': params}, jnp.asarray(x)), expected)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert jax.tree.map(np.shape, nn.unbox(variables)) == jax.tree.map(np.shape, {'params': params})
  spec = nn.get_partition_spec(variables)['params']
  assert spec == {'gate_proj': {'kernel': P('embed', 'mlp')}, 'up_proj': {'kernel': P('embed', 'mlp')},
                  'down_proj': {'kernel': P('mlp', 'embed')}}
