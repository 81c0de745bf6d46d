"""Dataset flags shared by train.py, evaluate.py and the tools, and the `--stats` file reader.

`define_dataset_flags()` defines (once per process; calling it again is a no-op):
  --dataset      shapes (default, built-in), folder, tfrecord, or a TFDS name (imagenet2012, ...)
  --data_dir     folder / TFRecord dir or glob / TFDS data dir / shapes cache dir
  --manual_dir   TFDS manual downloads (imagenet2012: ILSVRC2012_img_{train,val}.tar)
  --strict_data  corrupt images are an error naming the file instead of being skipped
  --stats        JSON from `python -m alexnet_tf.tools.dataset_stats` (mean + eigen-pairs)
  --stats_mean   which mean of --stats the model subtracts: its mean image or per-channel mean
See `alexnet_tf.datasets` for the layout each --dataset expects.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import flags

from alexnet_tf.errors import UserError

# --stats_mean: which mean of a --stats file the model subtracts.
STATS_MEANS = ("auto", "image", "channel")
_DATASET_HELP = ("Dataset: 'shapes' (built-in, generated on first use), 'folder' "
                 "(--data_dir=ROOT with ROOT/<split>/<label>/*.jpg), 'tfrecord' (--data_dir=DIR or "
                 "GLOB of tf.train.Example shards), or any TFDS name, e.g. imagenet2012.")


def expand_path(path: str) -> str:
  """`~` and `~user` expanded, as a shell does for a bare word but not inside `--flag=~/x`;
  URLs (gs://...) as given."""
  return path if "://" in path else os.path.expanduser(path)


class _PathParser(flags.ArgumentParser):
  """A string flag holding a path (`expand_path` applied)."""

  syntactic_help = "a path"

  def parse(self, argument: str) -> str:
    return expand_path(str(argument))

  def flag_type(self) -> str:
    return "string"


def define_path(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """`flags.DEFINE_string` for a file or folder path: `--model_dir=~/runs/a` means what it
  would mean to the shell."""
  return flags.DEFINE(_PathParser(), name, default, help_text, flags.FLAGS,
                      flags.ArgumentSerializer())


def define_dataset_flags(training: bool = True) -> None:
  """Defines --dataset, --data_dir, --manual_dir and, with `training`, --strict_data, --stats,
  --stats_mean."""
  fv = flags.FLAGS
  if "dataset" not in fv:
    flags.DEFINE_string("dataset", "shapes", _DATASET_HELP)
  if "data_dir" not in fv:
    define_path("data_dir", None, "Data location: ROOT of a folder dataset, TFRecord "
                "directory or glob ({split} is replaced by the split), TFDS data dir, "
                "or the shapes cache dir (default $ALEXNET_TF_CACHE/shapes or "
                "~/.cache/alexnet_tf/shapes).")
  if "manual_dir" not in fv:
    define_path("manual_dir", None, "TFDS manual download dir (imagenet2012: put "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there). Default "
                "DATA_DIR/downloads/manual.")
  if not training:
    return
  if "strict_data" not in fv:
    flags.DEFINE_bool("strict_data", False, "Fail on a corrupt/truncated/non-image file, naming "
                      "it (default: skip it and count it in the epoch log).")
  if "stats" not in fv:
    define_path("stats", None, "JSON written by `python -m alexnet_tf.tools.dataset_stats`"
                ": the mean to subtract and the RGB eigen-pairs (PCA lighting). Default: "
                "ImageNet's values.")
  if "stats_mean" not in fv:
    flags.DEFINE_enum("stats_mean", "auto", STATS_MEANS, "The mean of --stats that the model "
                      "subtracts: 'image', its per-pixel mean image (the paper's; written by "
                      "dataset_stats --mean_image), 'channel', its per-channel RGB mean, or "
                      "'auto', the mean image when the file names one.")


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


def load_stats(path: str, stats_mean: str = "auto", image_size: int = 227) -> dict:
  """Reads and validates a dataset statistics JSON (see `alexnet_tf.tools.dataset_stats`).

  Args:
    path: the JSON file (--stats).
    stats_mean: "auto" keeps the file's mean image, if it names one; "image" requires one;
      "channel" drops it, so that the per-channel mean is subtracted (--stats_mean).
    image_size: the model's input side; a mean image must be at least that large.

  Returns:
    {"mean": [3 floats, RGB, 0..255], "eigenvalues": [3 floats, descending, covariance of
    0..255 values], "eigenvectors": 3x3 (one unit eigenvector per column), plus the file's
    other keys (num_images, ...)}; "mean_image" (the absolute path of a checked .npy) only where
    the model is to subtract it.

  Raises:
    UserError: missing/unreadable file, bad JSON, missing or malformed keys, a mean image that
    is missing or malformed, or none where `stats_mean` is "image".
  """
  if stats_mean not in STATS_MEANS:
    raise ValueError(f"stats_mean must be one of {STATS_MEANS}, got {stats_mean!r}")
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
  out.pop("mean_image", None)
  if data.get("mean_image") is not None and stats_mean != "channel":
    mean_image = os.path.expanduser(str(data["mean_image"]))
    if not os.path.isabs(mean_image):
      mean_image = os.path.join(os.path.dirname(os.path.abspath(path)), mean_image)
    load_mean_image(mean_image, image_size, from_the_tool="num_images" in data,
                    what=f"--stats={path}: its mean image {mean_image}")
    out["mean_image"] = mean_image
  elif stats_mean == "image":
    raise UserError(f"--stats_mean=image: --stats={path} names no mean image (write one with "
                    "python -m alexnet_tf.tools.dataset_stats --mean_image=FILE.npy)")
  return out


def load_mean_image(path: str, image_size: int = 227, *, from_the_tool: bool = True,
                    what: str | None = None) -> np.ndarray:
  """Reads a mean image .npy: float32 [H, W, 3], RGB, 0..255, H and W at least `image_size`.

  Args:
    path: the .npy file (as `dataset_stats --mean_image` writes it).
    image_size: the model's input side.
    from_the_tool: False for a file not written by dataset_stats: [0, 1]-scale values are then
      refused (see `load_stats`).
    what: how errors name the file (default "the mean image PATH").

  Raises:
    UserError: a missing or unreadable file, or one that is not such an array.
  """
  where = what or f"the mean image {path}"
  try:
    image = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise UserError(f"{where} does not exist") from None
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"{where} is not a .npy array ({e})") from None
  if (not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3
      or min(image.shape[:2]) < image_size or image.dtype.kind not in "uif"):
    raise UserError(f"{where} must be a numeric [H, W, 3] RGB array with H and W at least "
                    f"{image_size}; it is {getattr(image, 'dtype', '?')} "
                    f"{list(getattr(image, 'shape', []))}")
  image = image.astype(np.float32)
  if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 255:
    raise UserError(f"{where} must hold finite RGB values in 0..255")
  if image.max() <= 1.0 and not from_the_tool:
    raise UserError(f"{where} is on the [0, 1] scale; it must hold 0..255 values (multiply "
                    "by 255)")
  return image
