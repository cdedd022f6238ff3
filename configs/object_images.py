"""Object Images ("An Object is Worth 64x64 Pixels", experiments/object_images/): meshes as 12-channel images.

Programs (launch.py --mode): encode (a folder of .glb files -> 64x64 omages, the released storage: uint16
<id>/omage_tensor.npz plus index.json; a corrupt file is listed in the report and the rest converted). The
generative stages (null2geo DiT-B/1, geo2mat U-Net) and their sample / eval programs are issue 15's next part.

  python launch.py --config configs/object_images.py --mode encode --workdir runs/abo_omages \
      --config.encode.glb_dir=/data/abo/3dmodels/original/0 --config.encode.workers=8
"""
import ml_collections

from experiments.object_images.encode import encode_config
from mmjax.train.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  c = ml_collections.ConfigDict()
  c.experiment = 'experiments.object_images.experiment'
  c.variant = arg.variant
  c.seed = 0
  c.encode = encode_config()  # the release's settings: 1024^2 bake, 64^2 sparse pooling, 64 patches, 2% margin
  if arg.variant == 'smoke':
    c.encode.resolution = 256
  return c
