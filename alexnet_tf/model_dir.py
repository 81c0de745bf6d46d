"""The model directory: what training writes and evaluation/export read.

  MODEL_DIR/config.json        model kwargs, class names, preprocessing, dataset, training
                               (batch size, epoch length, loss scaling: what a resume keeps)
  MODEL_DIR/mean_image.npy     optional per-pixel mean (when config says so)
  MODEL_DIR/checkpoints/ckpt-N tf.train.Checkpoint(model=..., optimizer=..., ...)

`config.json` makes the directory self-describing, so `evaluate.py` and the
exporter need no model flags: `restore_model(model_dir)` rebuilds the exact
architecture and loads the latest (or a given) checkpoint.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import re
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, check_tf_can_read_back, first_line
from alexnet_tf.files import write_whole
from alexnet_tf.model import AlexNet

_log = logging.getLogger(__name__)

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


def _listed_checkpoints(model_dir: str) -> list[str]:
  """Checkpoint path prefixes of MODEL_DIR/checkpoints, newest first: those the `checkpoint`
  index lists, or, where the index is missing or unreadable, every ckpt-N*.index file by N."""
  directory = checkpoint_dir(model_dir)
  if "://" not in directory:
    # TF joins the directory onto the index's relative entries, so a relative directory would
    # give paths relative to the working directory; an absolute one gives usable paths.
    directory = os.path.abspath(directory)
  state = tf.train.get_checkpoint_state(directory)
  if state is not None and state.model_checkpoint_path:
    listed = [p for p in state.all_model_checkpoint_paths if p != state.model_checkpoint_path]
    return [state.model_checkpoint_path, *reversed(listed)]
  # TF writes the index last, so checkpoint files without a readable one mean that it was lost
  # (a damaged disk, a partial copy): starting over would silently drop the training done.
  numbered = []
  for index in tf.io.gfile.glob(os.path.join(glob.escape(directory), "*-*.index")):
    prefix = index[:-len(".index")]
    step = prefix.rsplit("-", 1)[1]
    if step.isdigit():
      numbered.append((int(step), prefix))
  return [prefix for _, prefix in sorted(numbered, reverse=True)]


def latest_checkpoint(model_dir: str) -> str | None:
  """Path prefix of the newest complete checkpoint in MODEL_DIR/checkpoints, or None.

  TF writes a checkpoint's files under a temporary name, renames them, and only then
  updates the `checkpoint` index, so a crash mid-write leaves the index on the previous
  checkpoint. Should the files of the newest listed checkpoint still be missing or
  unreadable (a damaged disk, a partial copy), the newest readable one is returned.
  """
  return next(iter(readable_checkpoints(model_dir)), None)


def readable_checkpoints(model_dir: str) -> list[str]:
  """The checkpoints of `model_dir` whose index reads and whose data files all exist, newest
  first. A data file cut short shows only when read (`load_checkpoint_weights`)."""
  return [path for path in _listed_checkpoints(model_dir) if _checkpoint_problem(path) is None]


def _checkpoint_problem(prefix: str) -> str | None:
  """Why the checkpoint at `prefix` cannot be read (its index does not read, a data file is
  missing), or None."""
  try:
    tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    return f"its index {prefix}.index does not read ({first_line(e)})"
  # Escaped: with --model_dir=run* the pattern also counted run-a's shards, the count came out
  # wrong, and a rerun started over instead of resuming.
  shards = tf.io.gfile.glob(glob.escape(prefix) + ".data-*-of-*")
  total = int(shards[0].rsplit("-of-", 1)[1]) if shards else 1
  if len(shards) != total:
    return f"{total - len(shards)} of its {total} data file(s) {prefix}.data-*-of-* are missing"
  return None


# What reading a checkpoint whose data file is cut short or missing raises (TF raises IndexError,
# "Read less bytes than requested", for a cut-short file).
CHECKPOINT_READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError,
                          tf.errors.OutOfRangeError, IndexError)


def holds_checkpoint_files(directory: str) -> bool:
  """Whether `directory` itself holds TF checkpoint files (a `checkpoint` index, *.index)."""
  return (tf.io.gfile.exists(os.path.join(directory, "checkpoint"))
          or bool(tf.io.gfile.glob(os.path.join(glob.escape(directory), "*.index"))))


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
  model, config, _ = restore_checkpoint(model_dir, checkpoint, **overrides)
  return model, config


def restore_checkpoint(model_dir: str, checkpoint: str | None = None, *,
                       log: Callable[[str], None] = _log.warning,
                       **overrides: Any) -> tuple[keras.Model, dict[str, Any], str]:
  """`restore_model`, also returning the checkpoint it loaded.

  Without `checkpoint`, the newest that reads: one whose data file turns out to be cut short
  is reported through `log` and the one before it is loaded.
  """
  config = read_config(model_dir)
  check_tf_can_read_back("--model_dir", model_dir)  # Else: "has no checkpoint", misleadingly.
  candidates = [checkpoint] if checkpoint is not None else readable_checkpoints(model_dir)
  if not candidates:
    raise UserError(f"--model_dir {model_dir!r} has no checkpoint in "
                    f"{checkpoint_dir(model_dir)}; train first or pass --checkpoint.")
  try:
    model = build_model(config["model"], model_dir, **overrides)
  except UserError:
    raise
  except (TypeError, ValueError) as e:  # An edited or foreign config.json.
    raise UserError(f"{config_path(model_dir)}: its 'model' section does not describe an "
                    f"AlexNet ({first_line(e).rstrip('.')}).") from e
  for path, before in zip(candidates, candidates[1:]):
    try:
      load_checkpoint_weights(model, path, config_path(model_dir))
      return model, config, path
    except CheckpointReadError as e:
      log(f"{e}; loading the checkpoint before it, {before}, instead.")
  load_checkpoint_weights(model, candidates[-1], config_path(model_dir))
  return model, config, candidates[-1]


class CheckpointReadError(UserError):
  """A checkpoint whose files cannot be read (missing, cut short, damaged)."""


def load_checkpoint_weights(model: keras.Model, checkpoint: str,
                            described_by: str | None = None) -> None:
  """Loads only the model's weights from a training checkpoint; UserError on mismatch.

  `described_by`: where the model's architecture comes from (a config.json), for the message.
  """
  check_tf_can_read_back("checkpoint", checkpoint)
  if not tf.io.gfile.exists(checkpoint + ".index"):
    hint = ""
    stem = re.sub(r"\.(index|data-\d+-of-\d+)$", "", checkpoint)
    if stem != checkpoint:
      hint = f"; pass the path prefix {stem}, without the file's ending"
    elif tf.io.gfile.isdir(checkpoint):
      hint = "; pass a checkpoint's path prefix, e.g. DIR/ckpt-N for DIR/ckpt-N.index"
    raise UserError(f"checkpoint {checkpoint!r} does not exist (no {checkpoint}.index){hint}.")
  problem = _checkpoint_problem(checkpoint)
  if problem:
    raise CheckpointReadError(f"checkpoint {checkpoint!r} cannot be read: {problem}")
  of = f"the model that {described_by} describes" if described_by else "this model"
  missing = _missing_weight(model, checkpoint)
  if missing is not None:  # Before reading: a failed read ends in dozens of TF warnings at exit.
    raise UserError(f"checkpoint {checkpoint!r} does not match {of}: it has no weight of shape "
                    f"{missing.shape} for {missing.path}.")
  try:
    status = tf.train.Checkpoint(model=model).read(checkpoint)
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise UserError(f"checkpoint {checkpoint!r} is not a checkpoint of this model "
                    f"({model.count_params():,} parameters).") from e
  except ValueError as e:  # A variable of another shape: another architecture.
    raise UserError(f"checkpoint {checkpoint!r} does not match {of}: {first_line(e)}") from e
  except CHECKPOINT_READ_ERRORS as e:
    raise CheckpointReadError(f"checkpoint {checkpoint!r} cannot be read: a data file is cut "
                              f"short or damaged ({first_line(e)})") from e
  except tf.errors.OpError as e:
    raise UserError(f"checkpoint {checkpoint!r} cannot be read: {first_line(e)}") from e


def _missing_weight(model: keras.Model, checkpoint: str) -> Any:
  """A trainable weight of `model` whose shape no (further) variable of the checkpoint has, or
  None: a checkpoint of another architecture (class count, towers), told from the index alone.

  Every variable counts, not only those under "model/": a checkpoint stores each variable once,
  under the first path that reaches it (training's: the optimizer's list of variables).
  """
  stored = collections.Counter(
      tuple(shape) for key, shape in tf.train.load_checkpoint(checkpoint)
      .get_variable_to_shape_map().items() if key.endswith("/.ATTRIBUTES/VARIABLE_VALUE"))
  for weight in model.trainable_weights:
    shape = tuple(weight.shape)
    if not stored[shape]:
      return weight
    stored[shape] -= 1
  return None
