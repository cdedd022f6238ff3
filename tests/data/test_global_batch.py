"""make_global_batch on a mesh of the 8 CPU devices from conftest."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax.data import make_global_batch


@pytest.fixture
def mesh():
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def _local_batch():
  return {"image": np.arange(16 * 4 * 4, dtype=np.float32).reshape(16, 4, 4, 1),
          "label": np.arange(16, dtype=np.int32)}


def test_one_sharding_shards_the_batch_dim_of_every_leaf(mesh):
  local = _local_batch()
  batch = make_global_batch(local, NamedSharding(mesh, P("data")))
  assert batch["image"].shape == (16 * jax.process_count(), 4, 4, 1)
  assert batch["label"].shape == (16 * jax.process_count(),)
  for key, array in batch.items():
    assert array.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), array.ndim)
    assert array.dtype == local[key].dtype
    np.testing.assert_array_equal(np.asarray(array), local[key])
    for shard in array.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])


def test_dict_of_shardings(mesh):
  local = _local_batch()
  shardings = {"image": NamedSharding(mesh, P("data")), "label": NamedSharding(mesh, P())}
  batch = make_global_batch(local, shardings)
  assert batch["label"].sharding.is_fully_replicated
  assert not batch["image"].sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])
  with pytest.raises(ValueError, match="sharding keys"):
    make_global_batch(local, {"image": shardings["image"]})


def test_errors_name_the_leaf(mesh):
  with pytest.raises(ValueError, match="'step' is a scalar"):
    make_global_batch({"step": np.int32(3)}, NamedSharding(mesh, P("data")))
  with pytest.raises(ValueError, match="'label'"):
    make_global_batch({"label": np.arange(12)}, NamedSharding(mesh, P("data")))
