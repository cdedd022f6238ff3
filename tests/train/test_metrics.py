"""Metrics helpers."""
from mmjax.train.metrics import peak_flops


def test_peak_flops_table():
  assert peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert peak_flops('TPU v5 lite') == 197e12
  assert peak_flops('cpu') is None
