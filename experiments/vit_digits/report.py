"""A PNG grid of test images with predicted and true labels."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_prediction_grid(path: str, images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                          cols: int = 8) -> None:
  """images [N, H, W, C] in [0, 1]; a wrong prediction is titled in red."""
  rows = -(-len(images) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.4))
  for ax, img, y, p in zip(np.ravel(axes), images, labels, preds):
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=1)
    ax.set_title(f'{p} ({y})', fontsize=8, color='black' if p == y else 'red')
  for ax in np.ravel(axes):
    ax.axis('off')
  fig.suptitle('predicted (true)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
