"""Dataset flags shared by train.py, evaluate.py and the tools, and the `--stats` file reader.

`define_dataset_flags()` defines (once per process; calling it again is a no-op):
  --dataset      shapes (default, built-in), folder, tfrecord, or a TFDS name (imagenet2012, ...)
  --data_dir     folder / TFRecord dir or glob / TFDS data dir / shapes cache dir
  --manual_dir   TFDS manual downloads (imagenet2012: ILSVRC2012_img_{train,val}.tar)
  --strict_data  corrupt images are an error naming the file instead of being skipped
  --stats        JSON from `python -m alexnet_tf.tools.dataset_stats` (mean + eigen-pairs)
See `alexnet_tf.datasets` for the layout each --dataset expects.
"""

from __future__ import annotations

import json
import math
import os

from absl import flags

from alexnet_tf.errors import UserError

_DATASET_HELP = ("Dataset: 'shapes' (built-in, generated on first use), 'folder' "
                 "(--data_dir=ROOT with ROOT/<split>/<label>/*.jpg), 'tfrecord' (--data_dir=DIR or "
                 "GLOB of tf.train.Example shards), or any TFDS name, e.g. imagenet2012.")


def define_dataset_flags(training: bool = True) -> None:
  """Defines --dataset, --data_dir, --manual_dir and, with `training`, --strict_data, --stats."""
  fv = flags.FLAGS
  if "dataset" not in fv:
    flags.DEFINE_string("dataset", "shapes", _DATASET_HELP)
  if "data_dir" not in fv:
    flags.DEFINE_string("data_dir", None, "Data location: ROOT of a folder dataset, TFRecord "
                        "directory or glob ({split} is replaced by the split), TFDS data dir, "
                        "or the shapes cache dir (default $ALEXNET_TF_CACHE/shapes or "
                        "~/.cache/alexnet_tf/shapes).")
  if "manual_dir" not in fv:
    flags.DEFINE_string("manual_dir", None, "TFDS manual download dir (imagenet2012: put "
                        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there). Default "
                        "DATA_DIR/downloads/manual.")
  if not training:
    return
  if "strict_data" not in fv:
    flags.DEFINE_bool("strict_data", False, "Fail on a corrupt/truncated/non-image file, naming "
                      "it (default: skip it and count it in the epoch log).")
  if "stats" not in fv:
    flags.DEFINE_string("stats", None, "JSON written by `python -m alexnet_tf.tools.dataset_stats`"
                        ": per-channel mean (mean subtraction) and RGB eigen-pairs (PCA lighting). "
                        "Default: ImageNet's values.")


def _floats(value, shape: tuple[int, ...], key: str, path: str) -> list:
  def bad() -> UserError:
    return UserError(f"--stats={path}: {key!r} must be "
                     + ("3 numbers" if len(shape) == 1 else "a 3x3 list of numbers")
                     + f", got {value!r:.80}")
  if len(shape) == 1:
    if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
      raise bad()
    try:
      out = [float(v) for v in value]
    except (TypeError, ValueError):
      raise bad() from None
    if not all(math.isfinite(v) for v in out) or any(isinstance(v, bool) for v in value):
      raise bad()
    return out
  if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
    raise bad()
  return [_floats(row, shape[1:], key, path) for row in value]


def load_stats(path: str) -> dict:
  """Reads and validates a dataset statistics JSON (see `alexnet_tf.tools.dataset_stats`).

  Returns:
    {"mean": [3 floats, RGB, 0..255], "eigenvalues": [3 floats, descending, covariance of
    0..255 values], "eigenvectors": 3x3 (one unit eigenvector per column), plus the file's
    other keys (num_images, ...)}; "mean_image" (a .npy path), when present, is made absolute.

  Raises:
    UserError: missing/unreadable file, bad JSON, missing or malformed keys.
  """
  try:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise UserError(f"--stats={path}: no such file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"--stats={path}: cannot read it ({e})") from None
  except ValueError as e:
    raise UserError(f"--stats={path} is not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise UserError(f"--stats={path} must hold a JSON object with mean, eigenvalues, "
                    "eigenvectors")
  missing = [k for k in ("mean", "eigenvalues", "eigenvectors") if k not in data]
  if missing:
    raise UserError(f"--stats={path} lacks {', '.join(missing)} (write it with "
                    "python -m alexnet_tf.tools.dataset_stats)")
  out = dict(data)
  out["mean"] = _floats(data["mean"], (3,), "mean", path)
  out["eigenvalues"] = _floats(data["eigenvalues"], (3,), "eigenvalues", path)
  out["eigenvectors"] = _floats(data["eigenvectors"], (3, 3), "eigenvectors", path)
  if not all(0.0 <= m <= 255.0 for m in out["mean"]):
    raise UserError(f"--stats={path}: mean must be RGB values in 0..255, got {out['mean']}")
  if all(m <= 1.0 for m in out["mean"]) and "num_images" not in data:
    # A hand-written file with torchvision's [0.485, 0.456, 0.406] would subtract almost nothing
    # from 0..255 pixels. dataset_stats' own files (num_images) of a dark dataset stay allowed.
    raise UserError(f"--stats={path}: mean {out['mean']} is on the [0, 1] scale; this file "
                    "takes 0..255 values (multiply by 255)")
  if any(v < 0 for v in out["eigenvalues"]):
    raise UserError(f"--stats={path}: eigenvalues must be >= 0, got {out['eigenvalues']}")
  for j in range(3):
    norm = math.sqrt(sum(out["eigenvectors"][i][j] ** 2 for i in range(3)))
    if abs(norm - 1.0) > 1e-3:
      raise UserError(f"--stats={path}: eigenvector column {j} must have unit length "
                      f"(has {norm:.4f})")
  if data.get("mean_image") is not None:
    mean_image = os.path.expanduser(str(data["mean_image"]))
    if not os.path.isabs(mean_image):
      mean_image = os.path.join(os.path.dirname(os.path.abspath(path)), mean_image)
    out["mean_image"] = mean_image
  return out
