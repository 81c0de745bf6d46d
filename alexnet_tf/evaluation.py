"""Evaluation: top-1 / top-5 over a dataset, centre crop or 10-crop, ensembles.

Two layers:

- `evaluate_model(models, dataset, strategy)` (used by training every epoch): top-1/top-k
  accuracy and loss of one model or the averaged softmax of several, over a (distributed)
  dataset of centre crops [b, h, w, 3] or ten crops [b, 10, h, w, 3].
- `evaluate(EvalConfig(...))` (what `python evaluate.py` runs): loads the models (a model dir's
  checkpoint, a `.keras` file or a SavedModel export), resolves the dataset, builds the eval
  pipeline under the strategy, evaluates, prints a short table and writes the optional
  JSON / per-class CSV / confusion-matrix CSV.

Every image is counted exactly once: the eval pipeline batches without drop_remainder and with
no padding; under a tf.distribute strategy a final partial global batch gives some replicas a
short or an EMPTY batch (TF's get_next_as_optional), and each replica counts only the images it
really got (`average_probabilities` handles empty batches, ten-crop ones included). Corrupt
records skipped by the pipeline (non-strict mode) are not evaluated and are reported as
`corrupt_images_skipped`.

Top-k: k = min(5, classes); on a dataset with fewer than 5 classes "top-5" is top-k, and the
result says so (`top_k`, `top5_note`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf.errors import (UserError, check_tf_can_read_back, check_writable_file,
                               first_line, log_line)
from alexnet_tf.files import write_whole

TOP_K = 5
DEFAULT_MODEL_DIR = "runs/alexnet"  # train.py's default --model_dir.
DEFAULT_DATASET = "shapes"
TEN_CROPS = 10


# ----------------------------------------------------------------------------- core


def average_probabilities(models: Sequence[Any], images: tf.Tensor) -> tf.Tensor:
  """Softmax averaged over models and, for [b, 10, h, w, 3] inputs, over crops.

  Models may output logits or probabilities: a model whose last layer has no
  softmax gets one applied, so ensembles always average softmax outputs (the paper).
  Works for empty batches (b = 0), which replicas get at the end of a distributed dataset:
  the models are not run on them (TF's oneDNN CPU convolution returns its input unchanged
  for an empty batch, which makes the next layer fail), zeros [0, classes] are returned.

  Args:
    models: keras models, or callables `model(images, training=False)` with an
      `outputs_probabilities` attribute (e.g. `SavedModelClassifier`).
    images: float32 RGB 0..255, [b, h, w, 3] or [b, crops, h, w, 3].

  Returns:
    float32 [b, classes].
  """
  ten_crop = images.shape.rank == 5
  batch = tf.shape(images)[0]

  def compute() -> tf.Tensor:
    x = images
    if ten_crop:
      x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
    total = None
    for model in models:
      out = tf.cast(model(x, training=False), tf.float32)
      if not _outputs_probabilities(model):
        out = tf.nn.softmax(out)
      total = out if total is None else total + out
    probs = total / float(len(models))
    if ten_crop:
      # The class count is given explicitly: with b = 0 a -1 could not be inferred.
      probs = tf.reduce_mean(
          tf.reshape(probs, tf.stack([batch, tf.shape(images)[1], tf.shape(probs)[-1]])),
          axis=1)
    return probs

  static_batch = images.shape[0]
  classes = _num_classes_or_none(models[0])
  if (static_batch is not None and static_batch > 0) or classes is None:
    return compute()
  return tf.cond(batch > 0, compute, lambda: tf.zeros([0, classes], tf.float32))


def _num_classes_or_none(model: Any) -> int | None:
  try:
    return model_num_classes(model)
  except (AttributeError, TypeError, ValueError, IndexError):
    return None


def _outputs_probabilities(model: Any) -> bool:
  flag = getattr(model, "outputs_probabilities", None)
  if flag is not None:
    return bool(flag)
  last = model.layers[-1]
  activation = getattr(last, "activation", None)
  return getattr(activation, "__name__", "") == "softmax"


def model_num_classes(model: Any) -> int:
  """The number of classes a model (keras or `SavedModelClassifier`) outputs."""
  classes = getattr(model, "num_classes", None)
  if classes is None:
    classes = model.output_shape[-1]
  return int(classes)


def top_k(num_classes: int) -> int:
  """The k of top-k accuracy: 5, or one less than the number of classes where that is fewer
  (top-k over all the classes would always be 1.0)."""
  return max(1, min(TOP_K, num_classes - 1))


def evaluate_model(models: keras.Model | Sequence[Any],
                   dataset: tf.distribute.DistributedDataset | tf.data.Dataset,
                   strategy: tf.distribute.Strategy | None = None,
                   num_classes: int | None = None,
                   collect_predictions: bool = False,
                   progress: Callable[[int], None] | None = None,
                   collect_probabilities: bool = False) -> dict:
  """Top-1 / top-5 accuracy and mean cross-entropy of (an ensemble of) models.

  Args:
    models: one model or a list whose averaged softmax is evaluated.
    dataset: (images, labels) batches; images [b, h, w, 3] (centre crop) or
      [b, 10, h, w, 3] (10-crop, averaged). Distributed when `strategy` is given.
    strategy: the strategy the dataset is distributed with (None: no strategy).
    num_classes: classes of the model; top-k uses k = `top_k(num_classes)`.
    collect_predictions: also return per-image `labels`, `predictions` (top-1 class) and
      `topk_hits` (bool) as numpy arrays, for per-class accuracy and confusion matrices.
    progress: called with the number of images counted so far after each batch.
    collect_probabilities: also return `probabilities`, float32 [num_images, classes]
      (the averaged softmax). In dataset order for one input pipeline (any number of
      replicas of one worker); with several workers (MultiWorkerMirroredStrategy) every
      worker gets all images' arrays, step by step in replica order.

  Returns:
    dict with num_images, top1_accuracy, top5_accuracy (top-k with k = `top_k`), top_k,
    loss (mean cross-entropy), images_per_sec (steady state: the first batch, which traces
    the graph, is left out when there are more), seconds, and the arrays requested.
  """
  models = [models] if not isinstance(models, (list, tuple)) else list(models)
  if not models:
    raise ValueError("evaluate_model needs at least one model")
  strategy = strategy or tf.distribute.get_strategy()
  if num_classes is None:
    num_classes = model_num_classes(models[0])
  k = top_k(num_classes)
  collect = collect_predictions or collect_probabilities

  distributed_step = _distributed_step(models, strategy, k, collect, _images_rank(dataset))

  totals = np.zeros(3, np.int64)
  nll_total = 0.0
  per_image: list[list[np.ndarray]] = [[], [], [], []]
  start = time.perf_counter()
  first_done, first_images = None, 0
  for images, labels in dataset:
    counts, nll, arrays = distributed_step(images, labels)
    totals += counts.numpy()
    nll_total += float(nll.numpy())
    for store, replicas in zip(per_image, arrays):
      store.extend(a.numpy() for a in replicas)
    if first_done is None:
      first_done, first_images = time.perf_counter(), int(totals[0])
    if progress:
      progress(int(totals[0]))
  end = time.perf_counter()
  n = int(totals[0])
  if first_done is not None and n > first_images and end > first_done:
    rate = (n - first_images) / (end - first_done)
  else:
    rate = n / (end - start) if end > start else float("nan")
  result = dict(num_images=n,
                top1_accuracy=float(totals[1]) / n if n else float("nan"),
                top5_accuracy=float(totals[2]) / n if n else float("nan"),
                top_k=k,
                loss=nll_total / n if n else float("nan"),
                images_per_sec=rate,
                seconds=end - start)

  def _cat(parts, dtype, shape=(0,)):
    return np.concatenate(parts) if parts else np.zeros(shape, dtype)

  if collect_predictions:
    result["labels"] = _cat(per_image[0], np.int32)
    result["predictions"] = _cat(per_image[1], np.int32)
    result["topk_hits"] = _cat(per_image[2], np.int32).astype(bool)
  if collect_probabilities:
    result["probabilities"] = _cat(per_image[3], np.float32, (0, num_classes))
  return result


# The last step function built, reused while the models, strategy, k, outputs and image rank
# (centre crop or 10-crop) are the same: training evaluates the same model every epoch, and a
# new tf.function per call would retrace (and make TF warn about frequent retracing). Holds
# those models until the next evaluation with other models.
_LAST_STEP: list = []


def _images_rank(dataset: Any) -> int | None:
  """The rank of the images of a (distributed) dataset's elements, None if unknown."""
  try:
    specs = tf.nest.flatten(dataset.element_spec[0], expand_composites=True)
    return specs[0].shape.rank
  except (AttributeError, IndexError, TypeError, ValueError):
    return None


def _distributed_step(models: list, strategy: tf.distribute.Strategy, k: int, collect: bool,
                      images_rank: int | None = None) -> Callable:
  """tf.function (images, labels) → (counts [3], nll sum, per-image arrays per replica).

  Reused from the previous call for the same models, strategy, k, collect and a known
  `images_rank` (one tf.function must not see both ranks: reduce_retracing would relax the
  input to an unknown rank).
  """
  key = (strategy, k, collect, images_rank)
  if _LAST_STEP and images_rank is not None:
    cached_models, cached_key, fn = _LAST_STEP[0]
    if (len(cached_models) == len(models) and all(a is b for a, b in zip(cached_models, models))
        and len(cached_key) == len(key) and cached_key[0] is strategy
        and cached_key[1:] == key[1:]):
      return fn

  def step_fn(images, labels):
    probs = average_probabilities(models, images)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    hit1 = tf.math.in_top_k(labels, probs, 1)
    hitk = tf.math.in_top_k(labels, probs, k)
    nll = -tf.math.log(tf.clip_by_value(
        tf.gather(probs, labels, axis=1, batch_dims=1), 1e-12, 1.0))
    counts = tf.stack([tf.size(labels, out_type=tf.int64),
                       tf.reduce_sum(tf.cast(hit1, tf.int64)),
                       tf.reduce_sum(tf.cast(hitk, tf.int64))])
    nll_sum = tf.reduce_sum(tf.cast(nll, tf.float64))
    if not collect:
      return counts, nll_sum
    # (Hits as int32: they may be gathered by a collective, see below.)
    return (counts, nll_sum, labels, tf.argmax(probs, axis=-1, output_type=tf.int32),
            tf.cast(hitk, tf.int32), probs)

  # With several workers each one holds only its own replicas' images: gather all of them
  # (each step, in replica order; replicas' batches may differ in size or be empty).
  gather = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

  @tf.function(reduce_retracing=True)
  def distributed_step(images, labels):
    outputs = strategy.run(step_fn, args=(images, labels))
    counts = strategy.reduce(tf.distribute.ReduceOp.SUM, outputs[0], axis=None)
    nll = strategy.reduce(tf.distribute.ReduceOp.SUM, outputs[1], axis=None)
    if gather:
      per_image = tuple((strategy.gather(o, axis=0),) for o in outputs[2:])
    else:
      per_image = tuple(strategy.experimental_local_results(o) for o in outputs[2:])
    return counts, nll, per_image

  _LAST_STEP[:] = [(list(models), key, distributed_step)]
  return distributed_step


# ----------------------------------------------------------------------------- models


class SavedModelClassifier:
  """A SavedModel export (alexnet_tf.export) used as a model: its `serving_images` signature.

  Callable like a keras model on float32 [b, S, S, 3] RGB 0..255 crops; returns the
  signature's `probabilities`.
  """

  outputs_probabilities = True

  def __init__(self, path: str):
    from alexnet_tf import export  # pylint: disable=g-import-not-at-top
    self.path = resolve_saved_model_dir(path)
    check_tf_can_read_back("--saved_model", self.path)  # Else TF's "TensorSliceReader" error.
    try:
      self._loaded = tf.saved_model.load(self.path)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"SavedModel {self.path!r} cannot be loaded: {first_line(e)}") from e
    signatures = self._loaded.signatures
    if export.SIGNATURE_IMAGES not in signatures:
      raise UserError(f"SavedModel {self.path!r} has no {export.SIGNATURE_IMAGES!r} signature "
                      f"(it has {', '.join(sorted(signatures)) or 'none'}); export it with "
                      "python -m alexnet_tf.export.")
    self._fn = signatures[export.SIGNATURE_IMAGES]
    settings = _read_json(os.path.join(self.path, "assets", export.PREPROCESSING_FILE))
    inputs = self._fn.structured_input_signature[1]
    spec = inputs.get(export.IMAGES_INPUT)
    size = spec.shape[1] if spec is not None and spec.shape.rank == 4 else None
    if size is None:
      size = settings.get("image_size")
    if size is None:
      raise UserError(f"SavedModel {self.path!r}: cannot tell its input size (no shape in the "
                      f"{export.SIGNATURE_IMAGES} signature, no image_size in "
                      f"assets/{export.PREPROCESSING_FILE}).")
    self.image_size = int(size)
    out = self._fn.structured_outputs.get("probabilities")
    classes = out.shape[-1] if out is not None else None
    if classes is None:
      classes = settings.get("classes")
    if classes is None:
      raise UserError(f"SavedModel {self.path!r} has no 'probabilities' output of known size.")
    self.num_classes = int(classes)
    labels = os.path.join(self.path, "assets", export.LABELS_FILE)
    self.class_names = export.read_labels_file(labels) if os.path.isfile(labels) else None

  def __call__(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
    del training  # The export has dropout off.
    return self._fn(images=tf.cast(images, tf.float32))["probabilities"]


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) else {}


def resolve_saved_model_dir(path: str) -> str:
  """A SavedModel dir, or an export base (TF Serving layout) → its highest integer version."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise UserError(f"--saved_model {path!r} does not exist.")
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    return path
  versions = [int(d) for d in os.listdir(path) if d.isdigit()
              and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
  if versions:
    return os.path.join(path, str(max(versions)))
  raise UserError(f"--saved_model {path!r} has no saved_model.pb (nor <version>/saved_model.pb); "
                  "export one with python -m alexnet_tf.export.")


@dataclasses.dataclass
class LoadedModel:
  """One model to evaluate and what is known about it."""
  model: Any  # keras.Model or SavedModelClassifier
  kind: str  # "model_dir", "keras" or "saved_model"
  path: str
  image_size: int
  num_classes: int
  class_names: list[str] | None = None
  checkpoint: str | None = None
  config: dict | None = None  # config.json of a model dir

  def describe(self) -> str:
    if self.checkpoint:
      return f"{self.path} ({os.path.basename(self.checkpoint)})"
    return self.path


def model_kind(path: str) -> str:
  """What a path names: "keras" (a .keras file), "model_dir" or "saved_model"."""
  if path.endswith(".keras"):
    return "keras"
  if os.path.isfile(os.path.join(path, "config.json")) or not os.path.isdir(path):
    return "model_dir"  # Missing paths get the model dir's error message.
  if os.path.isfile(os.path.join(path, "saved_model.pb")) or any(
      d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))
      for d in os.listdir(path)):
    return "saved_model"
  return "model_dir"


def load_model(path: str, kind: str | None = None, checkpoint: str | None = None) -> LoadedModel:
  """Loads a model dir's checkpoint, a `.keras` file or a SavedModel export.

  Call under `strategy.scope()` to evaluate with a strategy.

  Args:
    path: the model dir, .keras file or SavedModel dir (or export base).
    kind: "model_dir", "keras" or "saved_model"; None to tell from the path.
    checkpoint: with a model dir: a checkpoint path prefix (default the latest).

  Raises:
    UserError: missing or unreadable files, no checkpoint, a mismatched checkpoint.
  """
  kind = kind or model_kind(path)
  if checkpoint is not None and kind != "model_dir":
    raise UserError("--checkpoint goes with --model_dir, not with a .keras file or SavedModel.")
  if kind == "model_dir":
    from alexnet_tf import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
    # The checkpoint loaded, not a second look at the newest: training may save a newer one
    # meanwhile, and the results would name it.
    model, config, checkpoint = model_dir_lib.restore_checkpoint(path, checkpoint)
    return LoadedModel(model=model, kind=kind, path=path,
                       image_size=int(config["model"].get("image_size", 227)),
                       num_classes=model_num_classes(model),
                       class_names=config.get("class_names"), checkpoint=checkpoint,
                       config=config)
  if kind == "keras":
    if not os.path.isfile(path):
      raise UserError(f"--model {path!r} does not exist.")
    import alexnet_tf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    try:
      model = keras.models.load_model(path, compile=False)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"--model {path!r} cannot be loaded: {first_line(e)}") from e
    shape = model.input_shape
    if (not isinstance(shape, tuple) or len(shape) != 4 or shape[1] is None
        or len(model.output_shape) != 2):
      raise UserError(f"--model {path!r} must take images [batch, S, S, 3] and output class "
                      f"scores [batch, classes]; it takes {shape} and outputs "
                      f"{model.output_shape}.")
    return LoadedModel(model=model, kind=kind, path=path, image_size=int(shape[1]),
                       num_classes=model_num_classes(model))
  if kind == "saved_model":
    model = SavedModelClassifier(path)
    return LoadedModel(model=model, kind=kind, path=model.path, image_size=model.image_size,
                       num_classes=model.num_classes, class_names=model.class_names)
  raise ValueError(f"unknown model kind {kind!r}")


# ----------------------------------------------------------------------------- datasets


def make_eval_dataset(source, strategy: tf.distribute.Strategy, global_batch_size: int,
                      image_size: int, *, ten_crop: bool = False, strict: bool = False) -> Any:
  """The eval pipeline of `source`, distributed with `strategy` (every record exactly once).

  `global_batch_size` images per step over all replicas (each replica gets
  global/replicas; the last step may be short or leave replicas empty).
  """
  from alexnet_tf import input_pipeline  # pylint: disable=g-import-not-at-top
  per_replica = input_pipeline.per_replica_batch_size(global_batch_size,
                                                      strategy.num_replicas_in_sync)

  def dataset_fn(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
    return input_pipeline.build_eval_dataset(source, per_replica, image_size, ctx,
                                             ten_crop=ten_crop, strict=strict)

  return strategy.distribute_datasets_from_function(dataset_fn)


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass
class EvalConfig:
  """What `python evaluate.py` evaluates (see evaluate.py's flags).

  Exactly one of model_dir / saved_model / keras_model / ensemble; none means
  `DEFAULT_MODEL_DIR` (train.py's default).
  """
  model_dir: str | None = None
  checkpoint: str | None = None
  saved_model: str | None = None
  keras_model: str | None = None
  ensemble: Sequence[str] = ()
  dataset: str | None = None  # None: the model dir's recorded dataset, else `shapes`.
  data_dir: str | None = None  # None: the recorded one when the dataset is the recorded one.
  manual_dir: str | None = None
  split: str = "validation"
  ten_crop: bool = False
  batch_size: int = 32  # GLOBAL: images per step over all replicas.
  strategy: str = "default"
  cpu_replicas: int = 1
  strict_data: bool = False
  output_json: str | None = None
  per_class_csv: str | None = None
  confusion_csv: str | None = None


def _model_specs(config: EvalConfig) -> list[tuple[str, str | None, str | None]]:
  """[(path, kind, checkpoint)] of the models to load; UserError for conflicting flags."""
  given = [name for name, value in (("--model_dir", config.model_dir),
                                    ("--saved_model", config.saved_model),
                                    ("--model", config.keras_model),
                                    ("--ensemble", list(config.ensemble)))
           if value]
  if len(given) > 1:
    raise UserError(f"pass only one of --model_dir, --saved_model, --model or --ensemble; got "
                    f"{' and '.join(given)}.")
  if config.checkpoint and given and given[0] != "--model_dir":
    raise UserError(f"--checkpoint goes with --model_dir, not with {given[0]}.")
  if config.checkpoint and not given:
    raise UserError("--checkpoint needs --model_dir, the training directory whose config.json "
                    "describes the checkpoint's model.")
  if config.saved_model:
    return [(config.saved_model, "saved_model", None)]
  if config.keras_model:
    if not config.keras_model.endswith(".keras"):
      raise UserError(f"--model {config.keras_model!r} must be a .keras file saved with "
                      "model.save(); for a training directory use --model_dir.")
    return [(config.keras_model, "keras", None)]
  if config.ensemble:
    paths = [p.strip() for p in config.ensemble if p.strip()]
    if not paths:
      raise UserError("--ensemble needs comma-separated model dirs, .keras files or SavedModels.")
    missing = [p for p in paths if "://" not in p and not os.path.exists(p)]
    if missing:
      raise UserError(f"--ensemble member {missing[0]!r} does not exist.")
    return [(p, None, None) for p in paths]
  return [(config.model_dir or DEFAULT_MODEL_DIR, "model_dir", config.checkpoint)]


def _check_models(loaded: list[LoadedModel]) -> None:
  first = loaded[0]
  for other in loaded[1:]:
    if other.num_classes != first.num_classes:
      raise UserError(f"--ensemble members disagree on the number of classes: {first.path} has "
                      f"{first.num_classes}, {other.path} has {other.num_classes}.")
    if other.image_size != first.image_size:
      raise UserError(f"--ensemble members disagree on the input size: {first.path} takes "
                      f"{first.image_size}, {other.path} takes {other.image_size}.")
    if (first.class_names and other.class_names
        and list(first.class_names) != list(other.class_names)):
      raise UserError(f"--ensemble members have different class names ({first.path}: "
                      f"{_short(first.class_names)}; {other.path}: "
                      f"{_short(other.class_names)}).")


def _short(names: Sequence[str]) -> str:
  names = list(names)
  return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def resolve_dataset(config: EvalConfig,
                    model_configs: Sequence[dict | None]) -> tuple[str, str | None]:
  """(dataset, data_dir): the flags, else what the (first) model dir recorded, else shapes.

  `model_configs`: the config.json of each model that is a model dir (None for the others).
  """
  recorded = next((c.get("dataset") for c in model_configs
                   if c and isinstance(c.get("dataset"), dict)), None) or {}
  dataset = config.dataset or recorded.get("name") or DEFAULT_DATASET
  data_dir = config.data_dir
  if data_dir is None and dataset == recorded.get("name"):
    data_dir = recorded.get("data_dir")
  return dataset, data_dir


def _precheck_model(path: str, kind: str | None) -> dict | None:
  """Cheap checks before any model is loaded: a model dir's config.json (returned), a .keras
  file or a SavedModel that exists. UserError otherwise."""
  kind = kind or model_kind(path)
  if kind == "model_dir":
    from alexnet_tf import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
    return model_dir_lib.read_config(path)
  if kind == "keras" and not os.path.isfile(path):
    raise UserError(f"--model {path!r} does not exist.")
  if kind == "saved_model":
    resolve_saved_model_dir(path)
  return None


def _check_dataset(source, loaded: Sequence[LoadedModel], dataset: str) -> None:
  model = loaded[0]
  where = f"--dataset={dataset} split {source.split!r}"
  if source.num_examples < 1:
    raise UserError(f"{where} is empty: there are no images to evaluate.")
  # Classes counted from this split's labels are a lower bound: it may lack the last ones.
  fits = source.classes_from_labels and source.num_classes <= model.num_classes
  if source.num_classes != model.num_classes and not fits:
    raise UserError(f"{where} has {source.num_classes} classes but the model ({model.path}) "
                    f"has {model.num_classes}; evaluate on the dataset the model was trained "
                    "on.")
  names = next((m.class_names for m in loaded if m.class_names), None)
  if names and source.class_names and list(names) != list(source.class_names):
    raise UserError(f"{where} has classes {_short(source.class_names)} but the model was "
                    f"trained on {_short(names)}; the labels would not match.")


def evaluate(config: EvalConfig, log: Callable[[str], None] = log_line) -> dict:
  """Runs an evaluation as configured (what `python evaluate.py` does).

  Creates the strategy (call `distribute.configure_cpu_replicas` first for --cpu_replicas),
  checks the model paths and the dataset (cheap), loads the model(s) under the strategy, checks
  the dataset against them, evaluates, logs a table and writes the optional files (on the
  chief only).

  Returns:
    The result: `evaluate_model`'s keys plus top1_error, top5_error, top5_note (with fewer
    than 5 classes), num_examples, corrupt_images_skipped, options, class_names,
    per_class (list of dicts) and confusion (list of lists).

  Raises:
    UserError: conflicting or bad flags, missing model/checkpoint, a mismatched dataset,
      an unknown split, an empty dataset.
  """
  from alexnet_tf import datasets, distribute, input_pipeline  # pylint: disable=g-import-not-at-top
  specs = _model_specs(config)
  if config.batch_size is None or config.batch_size < 1:
    raise UserError(f"--batch_size must be positive; got {config.batch_size}.")
  if not config.split:
    raise UserError("--split must name a split, e.g. --split=validation.")
  _check_outputs(config)
  strategy = distribute.create_strategy(config.strategy, config.cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  input_pipeline.per_replica_batch_size(config.batch_size, replicas)  # UserError early.
  # The cheap checks first (model files, the dataset and its split), then the models.
  model_configs = [_precheck_model(path, kind) for path, kind, _ in specs]
  dataset, data_dir = resolve_dataset(config, model_configs)
  source = datasets.load_source(dataset, config.split, data_dir, config.manual_dir)
  if source.num_examples < 1:
    raise UserError(f"--dataset={dataset} split {source.split!r} is empty: there are no images "
                    "to evaluate.")
  with strategy.scope():
    loaded = [load_model(path, kind, ckpt) for path, kind, ckpt in specs]
  _check_models(loaded)
  _check_dataset(source, loaded, dataset)

  image_size = loaded[0].image_size
  dist = make_eval_dataset(source, strategy, config.batch_size, image_size,
                           ten_crop=config.ten_crop, strict=config.strict_data)
  chief = distribute.is_chief(strategy)
  progress = _Progress(source.num_examples, log if chief else None)
  try:
    result = evaluate_model([m.model for m in loaded], dist, strategy,
                            num_classes=loaded[0].num_classes, collect_predictions=True,
                            progress=progress)
  except input_pipeline.DATA_ERRORS as e:
    input_pipeline.raise_data_error(e, source, config.strict_data)
  # Every record is read once over all pipelines (all workers): the others were corrupt or
  # could not be read.
  skipped = source.num_examples - result["num_images"]
  if result["num_images"] == 0:
    raise UserError(f"no image of --dataset={dataset} split {config.split!r} could be "
                    f"evaluated ({skipped} of {source.num_examples} were corrupt or "
                    "unreadable).")

  class_names = (next((m.class_names for m in loaded if m.class_names), None)
                 or source.class_names
                 or [str(i) for i in range(loaded[0].num_classes)])
  labels, preds, hits = result.pop("labels"), result.pop("predictions"), result.pop("topk_hits")
  k = result["top_k"]
  result["top1_error"] = 1.0 - result["top1_accuracy"]
  result["top5_error"] = 1.0 - result["top5_accuracy"]
  if k < TOP_K:
    result["top5_note"] = (f"top-5 is reported as top-{k}: the model has only "
                           f"{loaded[0].num_classes} classes (top-5 would always be 1.0)")
  result["num_examples"] = source.num_examples
  result["corrupt_images_skipped"] = skipped
  result["options"] = dict(
      models=[m.describe() for m in loaded], model_kinds=[m.kind for m in loaded],
      ensemble=len(loaded) > 1, dataset=dataset, data_dir=data_dir, split=config.split,
      ten_crop=config.ten_crop, crops=TEN_CROPS if config.ten_crop else 1,
      batch_size=config.batch_size, strategy=config.strategy, num_replicas=replicas,
      image_size=image_size, strict_data=config.strict_data)
  result["class_names"] = list(class_names)
  result["per_class"] = per_class_accuracy(labels, preds, hits, class_names, k)
  result["confusion"] = confusion_matrix(labels, preds, len(class_names)).tolist()

  if chief:
    log(format_table(result))
    if config.output_json:
      _write_json(config.output_json, result)
    if config.per_class_csv:
      write_per_class_csv(config.per_class_csv, result["per_class"], k)
    if config.confusion_csv:
      write_confusion_csv(config.confusion_csv, result["confusion"], class_names)
  return result


class _Progress:
  """Logs `n/total images` at most every 15 seconds."""

  def __init__(self, total: int, log: Callable[[str], None] | None, every_s: float = 15.0):
    self.total, self.log, self.every_s = total, log, every_s
    self.last = time.perf_counter()

  def __call__(self, n: int) -> None:
    now = time.perf_counter()
    if self.log and now - self.last >= self.every_s and n < self.total:
      self.log(f"  {n}/{self.total} images")
      self.last = now


# The header each CSV file evaluate.py writes starts with: an existing file that does not is
# someone else's (a config.json, an image), and is not overwritten.
_CSV_STARTS = {"--per_class_csv": "class,name,images,", "--confusion_csv": "true \\ predicted,"}


def _check_outputs(config: EvalConfig) -> None:
  """UserError, before any work, for an output file that cannot be written, that would replace
  a file evaluate.py did not write, or that two flags name."""
  outputs = [(flag, path) for flag, path in (("--output_json", config.output_json),
                                             ("--per_class_csv", config.per_class_csv),
                                             ("--confusion_csv", config.confusion_csv)) if path]
  seen: dict[str, str] = {}
  for flag, path in outputs:
    full = os.path.realpath(path)
    if full in seen:
      raise UserError(f"{seen[full]} and {flag} name the same file {path}; give each its own.")
    seen[full] = flag
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
      raise UserError(f"{flag}={path}: {parent} is not a folder.")
    if not os.path.isdir(parent):
      raise UserError(f"{flag}={path}: the folder {parent} does not exist.")
    check_writable_file(flag, path)
    if os.path.isfile(path) and not _written_by_evaluate(path, flag):
      raise UserError(f"{flag}={path} already exists and is not an evaluate.py output; choose "
                      "another file name or remove it first.")


def _written_by_evaluate(path: str, flag: str) -> bool:
  """Whether the file at `path` is empty, or is what evaluate.py's `flag` writes: a result JSON,
  or a CSV with its header."""
  try:
    if os.path.getsize(path) == 0:
      return True
    with open(path, encoding="utf-8", errors="replace") as f:
      if flag == "--output_json":
        previous = json.load(f)
        return isinstance(previous, dict) and {"top1_accuracy", "options"} <= set(previous)
      start = _CSV_STARTS[flag]
      return f.read(len(start) + 1).lstrip("\ufeff").startswith(start)
  except (OSError, ValueError):
    return False


# ----------------------------------------------------------------------------- reports


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, topk_hits: np.ndarray,
                       class_names: Sequence[str], k: int) -> list[dict]:
  """One dict per class: class, name, images, top1_correct, top1_accuracy, topk_correct,
  topk_accuracy (NaN for a class without images)."""
  rows = []
  for c, name in enumerate(class_names):
    mask = labels == c
    n = int(mask.sum())
    top1 = int((predictions[mask] == c).sum())
    topk = int(topk_hits[mask].sum())
    rows.append(dict(**{"class": c}, name=name, images=n, top1_correct=top1,
                     top1_accuracy=top1 / n if n else float("nan"), topk_correct=topk,
                     topk_accuracy=topk / n if n else float("nan"), k=k))
  return rows


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted] (int64 [classes, classes])."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
  return counts


def write_per_class_csv(path: str, rows: Sequence[dict], k: int) -> None:
  """class,name,images,top1_correct,top1_accuracy,top{k}_correct,top{k}_accuracy."""
  def write(f):
    writer = csv.writer(f)
    writer.writerow(["class", "name", "images", "top1_correct", "top1_accuracy",
                     f"top{k}_correct", f"top{k}_accuracy"])
    for r in rows:
      writer.writerow([r["class"], r["name"], r["images"], r["top1_correct"],
                       _fmt_csv(r["top1_accuracy"]), r["topk_correct"],
                       _fmt_csv(r["topk_accuracy"])])
  write_whole(path, write)


def write_confusion_csv(path: str, counts: Sequence[Sequence[int]],
                        class_names: Sequence[str]) -> None:
  """Rows: true class; columns: predicted class; the first row and column are class names."""
  def write(f):
    writer = csv.writer(f)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, counts):
      writer.writerow([name, *[int(v) for v in row]])
  write_whole(path, write)


def _fmt_csv(value: float) -> str:
  return "" if math.isnan(value) else f"{value:.6f}"


def _json_safe(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_safe(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return None if not math.isfinite(value) else float(value)
  return value


def _write_json(path: str, result: dict) -> None:
  write_whole(path, lambda f: f.write(json.dumps(_json_safe(result), indent=2, sort_keys=True)
                                      + "\n"))


def format_table(result: dict) -> str:
  """The short table `python evaluate.py` prints."""
  o = result["options"]
  k = result["top_k"]
  crops = ("10-crop (4 corners + centre and their mirror images, softmax averaged)"
           if o["ten_crop"] else f"centre crop {o['image_size']}x{o['image_size']}")
  models = o["models"]
  what = models[0] if len(models) == 1 else f"ensemble of {len(models)}: " + ", ".join(models)
  topk_label = "top-5" if k == TOP_K else f"top-{k} *"
  lines = [
      f"model        {what}",
      f"dataset      {o['dataset']}, split {o['split']} ({result['num_examples']} images, "
      f"{len(result['class_names'])} classes)",
      f"crops        {crops}",
      f"images       {result['num_images']} evaluated"
      + (f", {result['corrupt_images_skipped']} corrupt skipped"
         if result["corrupt_images_skipped"] else ""),
      "",
      "             accuracy   error",
      f"top-1        {result['top1_accuracy']:8.4f}   {result['top1_error']:6.4f}",
      f"{topk_label:<12} {result['top5_accuracy']:8.4f}   {result['top5_error']:6.4f}",
      f"loss         {result['loss']:8.4f}   (mean cross-entropy)",
      f"speed        {result['images_per_sec']:8.1f}   images/sec ({o['num_replicas']} "
      f"replica{'s' if o['num_replicas'] != 1 else ''}, strategy {o['strategy']}, "
      f"batch {o['batch_size']})",
  ]
  if "top5_note" in result:
    lines.append(f"* {result['top5_note']}.")
  return "\n".join(lines)
