"""The model directory: what training writes and evaluation/export read.

  MODEL_DIR/config.json        model kwargs, class names, preprocessing, dataset
  MODEL_DIR/mean_image.npy     optional per-pixel mean (when config says so)
  MODEL_DIR/checkpoints/ckpt-N tf.train.Checkpoint(model=..., optimizer=..., ...)

`config.json` makes the directory self-describing, so `evaluate.py` and the
exporter need no model flags: `restore_model(model_dir)` rebuilds the exact
architecture and loads the latest (or a given) checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, check_tf_can_read_back
from alexnet_tf.files import write_whole
from alexnet_tf.model import AlexNet

CONFIG_FILE = "config.json"
MEAN_IMAGE_FILE = "mean_image.npy"
CHECKPOINT_SUBDIR = "checkpoints"
# Model kwargs that define the architecture (and so must match a checkpoint).
ARCHITECTURE_KEYS = ("classes", "towers", "activation", "lrn", "lrn_scope", "pooling_mode",
                     "image_size", "input_scale")


def default_model_config(**overrides: Any) -> dict[str, Any]:
  """The model section of config.json: `AlexNet` kwargs plus `image_size`."""
  config = dict(classes=1000, towers=2, activation="relu", lrn="paper", lrn_scope="tower",
                lrn_implementation="fused", pooling_mode="overlapping", dropout=0.5,
                initialization="paper", mean="imagenet", input_scale=1.0, image_size=227)
  config.update(overrides)
  return config


def build_model(model_config: dict[str, Any], model_dir: str | None = None,
                **overrides: Any) -> keras.Model:
  """Builds `AlexNet` from a config.json model section.

  Args:
    model_config: as written by training (see `default_model_config`).
    model_dir: where to find `mean_image.npy` if the config's mean is "mean_image".
    **overrides: extra `AlexNet` kwargs (e.g. `classifier_activation=None`, `seed`).
  """
  kwargs = dict(model_config)
  size = int(kwargs.pop("image_size", 227))
  if kwargs.get("mean") == "mean_image" and "mean" not in overrides:
    if model_dir is None:
      raise UserError("this model subtracts a mean image; pass its model dir.")
    kwargs["mean"] = load_mean_image(model_dir, size)
  kwargs.update(overrides)
  return AlexNet(input_shape=(size, size, 3), **kwargs)


def load_mean_image(model_dir: str, image_size: int = 227) -> np.ndarray:
  """MODEL_DIR/mean_image.npy, the per-pixel mean that train.py copied from --stats."""
  path = os.path.join(model_dir, MEAN_IMAGE_FILE)
  return data_flags.load_mean_image(path, image_size, what=(
      f"--model_dir {model_dir!r} trained with a mean image, but its {MEAN_IMAGE_FILE}"))


def config_path(model_dir: str) -> str:
  return os.path.join(model_dir, CONFIG_FILE)


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def write_config(model_dir: str, config: dict[str, Any]) -> None:
  """Writes config.json atomically (a crash never leaves half a file)."""
  write_whole(config_path(model_dir),
              lambda f: f.write(json.dumps(config, indent=2, sort_keys=True) + "\n"))


def read_config(model_dir: str) -> dict[str, Any]:
  """Reads config.json; UserError if the directory or file is missing or invalid."""
  if not os.path.isdir(model_dir):
    raise UserError(f"--model_dir {model_dir!r} does not exist.")
  path = config_path(model_dir)
  if not os.path.isfile(path):
    raise UserError(f"--model_dir {model_dir!r} has no {CONFIG_FILE}; it is not a model "
                    "directory written by train.py.")
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
    raise UserError(f"{path} has no 'model' section; it was not written by train.py.")
  return config


def latest_checkpoint(model_dir: str) -> str | None:
  """Path prefix of the newest complete checkpoint in MODEL_DIR/checkpoints, or None.

  TF writes a checkpoint's files under a temporary name, renames them, and only then
  updates the `checkpoint` index, so a crash mid-write leaves the index on the previous
  checkpoint. Should the files of the newest listed checkpoint still be missing or
  unreadable (a damaged disk, a partial copy), the newest readable one is returned.
  """
  directory = checkpoint_dir(model_dir)
  if "://" not in directory:
    # TF joins the directory onto the index's relative entries, so a relative directory would
    # give paths relative to the working directory; an absolute one gives usable paths.
    directory = os.path.abspath(directory)
  state = tf.train.get_checkpoint_state(directory)
  if state is None or not state.model_checkpoint_path:
    return None
  listed = [p for p in state.all_model_checkpoint_paths if p != state.model_checkpoint_path]
  for path in [state.model_checkpoint_path, *reversed(listed)]:
    if _readable_checkpoint(path):
      return path
  return None


def _readable_checkpoint(prefix: str) -> bool:
  """The index reads and every data shard it names exists."""
  try:
    tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError):
    return False
  # Escaped: with --model_dir=run* the pattern also counted run-a's shards, the count came out
  # wrong, and a rerun started over instead of resuming.
  shards = tf.io.gfile.glob(glob.escape(prefix) + ".data-*-of-*")
  if not shards:
    return False
  total = int(shards[0].rsplit("-of-", 1)[1])
  return len(shards) == total


def remove_incomplete_checkpoints(model_dir: str) -> list[str]:
  """Deletes the temporary files a checkpoint write killed midway left behind."""
  removed = []
  for path in tf.io.gfile.glob(os.path.join(glob.escape(checkpoint_dir(model_dir)), "*_temp*")):
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
    removed.append(path)
  return removed


def restore_model(model_dir: str, checkpoint: str | None = None,
                  **overrides: Any) -> tuple[keras.Model, dict[str, Any]]:
  """Rebuilds the model of `model_dir` and loads a checkpoint's weights.

  Args:
    model_dir: a directory written by train.py.
    checkpoint: a checkpoint path prefix (e.g. MODEL_DIR/checkpoints/ckpt-12);
      the latest in `model_dir` if None.
    **overrides: extra `AlexNet` kwargs.

  Returns:
    (model, config).

  Raises:
    UserError: no config, no checkpoint, or a checkpoint of another architecture.
  """
  config = read_config(model_dir)
  check_tf_can_read_back("--model_dir", model_dir)  # Else: "has no checkpoint", misleadingly.
  if checkpoint is None:
    checkpoint = latest_checkpoint(model_dir)
    if checkpoint is None:
      raise UserError(f"--model_dir {model_dir!r} has no checkpoint in "
                      f"{checkpoint_dir(model_dir)}; train first or pass --checkpoint.")
  model = build_model(config["model"], model_dir, **overrides)
  load_checkpoint_weights(model, checkpoint)
  return model, config


def load_checkpoint_weights(model: keras.Model, checkpoint: str) -> None:
  """Loads only the model's weights from a training checkpoint; UserError on mismatch."""
  check_tf_can_read_back("checkpoint", checkpoint)
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise UserError(f"checkpoint {checkpoint!r} does not exist (no {checkpoint}.index).")
  try:
    tf.train.load_checkpoint(checkpoint)
  except (tf.errors.OpError, ValueError) as e:
    raise UserError(f"checkpoint {checkpoint!r} cannot be read: {e}") from e
  status = tf.train.Checkpoint(model=model).read(checkpoint)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise UserError(f"checkpoint {checkpoint!r} is not a checkpoint of this model "
                    f"({model.count_params():,} parameters).") from e
  except (ValueError, tf.errors.OpError) as e:
    raise UserError(f"checkpoint {checkpoint!r} does not match this model: "
                    f"{str(e).splitlines()[0][:300]}") from e
