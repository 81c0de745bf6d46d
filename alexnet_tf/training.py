"""The training loop: the paper's recipe on any tf.distribute strategy.

A custom loop (`strategy.run`) rather than `model.fit`, because Keras 3's fit
does not work under MultiWorkerMirroredStrategy (keras-team/keras#20585). One
loop serves every strategy:

  for epoch: for step: strategy.run(train_step) -> all-reduce -> PaperSGD update
             every --checkpoint_steps and at each epoch end: checkpoint
             each epoch end: validation (centre crop) -> plateau schedule, logs

State that a resumed run needs lives in one `tf.train.Checkpoint`: the model,
the optimiser (momentum slots, iteration count, learning-rate variable), the
global step, the epoch and the step within it (data position), the plateau
schedule, and the count of NaN recoveries. Each epoch's input order and
augmentation are a function of (seed, epoch), and a resumed epoch skips the
batches already consumed, so a resumed run sees the data an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import time
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf import distribute, flags as data_flags, model_dir as model_dir_lib, preprocessing
from alexnet_tf.errors import (UserError, check_tf_can_read_back, check_writable_dir, first_line,
                               log_line)
from alexnet_tf.evaluation import evaluate_model, top_k
from alexnet_tf.files import write_whole
from alexnet_tf.optimization import (PaperSGD, PlateauState, ScheduleConfig, SCHEDULES,
                                     learning_rate_at, scaled_learning_rate)

MIXED_PRECISION = ("none", "bfloat16", "float16", "auto")


class TrainingError(UserError):
  """Training stopped for a reason the user must act on (NaN loss, lost worker)."""


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs; train.py fills it from flags."""
  model_dir: str
  dataset: str = "shapes"
  data_dir: str | None = None
  manual_dir: str | None = None
  train_split: str = "train"
  validation_split: str = "validation"
  strategy: str = "default"
  cpu_replicas: int = 1
  all_reduce: str = "auto"
  collective_timeout_s: float | None = None
  batch_size: int = 128                 # global
  epochs: int = 90
  steps_per_epoch: int | None = None    # cap
  max_steps: int | None = None          # cap on the global step
  validation_steps: int | None = None   # cap
  learning_rate: float = 0.01
  scale_learning_rate: bool = False     # linear scaling rule w.r.t. batch 128
  momentum: float = 0.9
  weight_decay: float = 5e-4
  decay_biases: bool = False
  schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
  lr_step_epochs: tuple = (30, 60, 80)  # --lr_schedule=step: epochs where lr is divided by 10
  warmup_epochs: float = 0.0
  seed: int | None = None
  deterministic: bool = False
  mixed_precision: str = "none"
  model: dict = dataclasses.field(default_factory=model_dir_lib.default_model_config)
  random_crop: bool = True
  random_flip: bool = True
  pca_lighting: bool = True
  stats: dict | None = None             # from the dataset_stats tool: mean, eigen-pairs
  strict_data: bool = False
  checkpoint_steps: int = 500
  keep_checkpoints: int = 5
  log_steps: int = 50
  export_dir: str | None = None
  nan_recovery: bool = False            # on NaN: restore last checkpoint, lr / 10
  max_nan_recoveries: int = 3


@dataclasses.dataclass
class TrainResult:
  global_step: int
  epochs_completed: int
  history: list
  final_validation: dict | None
  export_path: str | None


# ----------------------------------------------------------------------------
# Validation of the configuration (before anything expensive happens).
# ----------------------------------------------------------------------------

def validate_config(config: TrainConfig) -> None:
  """Checks every setting; raises UserError with one sentence naming the flag."""
  def positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
      return
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise UserError(f"--{name} must be a positive integer; got {value!r}.")

  positive("batch_size", config.batch_size)
  positive("epochs", config.epochs)
  positive("steps_per_epoch", config.steps_per_epoch, allow_none=True)
  positive("max_steps", config.max_steps, allow_none=True)
  positive("validation_steps", config.validation_steps, allow_none=True)
  positive("checkpoint_steps", config.checkpoint_steps)
  positive("keep_checkpoints", config.keep_checkpoints)
  positive("log_steps", config.log_steps)
  positive("cpu_replicas", config.cpu_replicas)
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    raise UserError(f"--learning_rate must be a positive number; got {config.learning_rate!r}.")
  if not 0 <= config.momentum < 1:
    raise UserError(f"--momentum must be in [0, 1); got {config.momentum!r}.")
  if not config.weight_decay >= 0:
    raise UserError(f"--weight_decay must be >= 0; got {config.weight_decay!r}.")
  if config.warmup_epochs < 0:
    raise UserError(f"--warmup_epochs must be >= 0; got {config.warmup_epochs!r}.")
  if config.schedule.name not in SCHEDULES:
    raise UserError(f"--lr_schedule must be one of {', '.join(SCHEDULES)}; "
                    f"got {config.schedule.name!r}.")
  if config.schedule.name == "step" and (
      not config.lr_step_epochs or any(e < 1 for e in config.lr_step_epochs)):
    raise UserError("--lr_step_epochs must list the epochs (1 or more) at which "
                    "--lr_schedule=step divides the learning rate by 10; got "
                    f"{','.join(map(str, config.lr_step_epochs)) or 'none'}.")
  if config.schedule.name == "plateau" and config.schedule.plateau_patience < 1:
    raise UserError("--plateau_patience must be at least 1 epoch; got "
                    f"{config.schedule.plateau_patience!r}.")
  if config.warmup_epochs > config.epochs:
    raise UserError(f"--warmup_epochs={config.warmup_epochs:g} is longer than the run "
                    f"(--epochs={config.epochs}); the learning rate would never reach "
                    "--learning_rate.")
  if config.mixed_precision not in MIXED_PRECISION:
    raise UserError(f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)}; "
                    f"got {config.mixed_precision!r}.")
  if config.strategy not in distribute.STRATEGIES:
    raise UserError(f"--strategy must be one of {', '.join(distribute.STRATEGIES)}; "
                    f"got {config.strategy!r}.")
  if config.cpu_replicas > 1 and config.strategy not in ("mirrored",):
    raise UserError("--cpu_replicas > 1 needs --strategy=mirrored.")
  if config.all_reduce != "auto" and config.strategy not in ("mirrored", "multi_worker"):
    raise UserError(f"--all_reduce={config.all_reduce} applies to --strategy=mirrored or "
                    f"multi_worker, not {config.strategy} (one replica: nothing to reduce).")
  if config.strategy == "multi_worker" and distribute.tf_config() is None:
    raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                    "(cluster and task).")
  if config.seed is not None and not 0 <= config.seed < 2**31:
    raise UserError(f"--seed must be in [0, 2^31); got {config.seed!r}.")
  try:
    from alexnet_tf.model import _validate  # Same checks as AlexNet(...), no model built.
    m = config.model
    _validate(towers=m["towers"], activation=m["activation"], lrn=m["lrn"],
              lrn_scope=m.get("lrn_scope", "tower"), pooling_mode=m["pooling_mode"],
              initialization=m["initialization"], pooling=None, dropout=m["dropout"],
              include_top=True, classes=m["classes"], input_scale=m.get("input_scale", 1.0))
    if m["image_size"] not in (224, 227):
      raise ValueError(f"--image_size must be 227 or 224; got {m['image_size']!r}.")
  except ValueError as e:
    raise UserError(str(e).replace("AlexNet: ", "--")) from e
  if not config.model_dir:
    raise UserError("--model_dir is required.")
  check_writable_dir("--model_dir", config.model_dir)
  check_tf_can_read_back("--model_dir", config.model_dir)
  if config.export_dir:  # Checked now, not after the last epoch.
    check_writable_dir("--export_dir", config.export_dir)
    check_tf_can_read_back("--export_dir", config.export_dir)


def validation_overlap_note(train_source: Any, val_source: Any,
                            data_dir: str | None) -> str | None:
  """A note for the log when validation reads the training files, else None: a TFRecord glob
  without {split} is read for every split (meant for evaluate.py)."""
  if getattr(val_source, "files", None) != getattr(train_source, "files", ()):
    return None
  return (f"Note: validation reads the training files (--data_dir={data_dir} names no "
          "{split}), so val_top1 is not held out and the plateau schedule follows it.")


def check_compatible(existing: dict, new: dict, model_dir: str,
                     mean_image: np.ndarray | None = None) -> None:
  """A model dir can only be resumed with the same architecture and the same mean: the
  weights learned so far expect the inputs that mean gave them. `mean_image`: this run's,
  where `new` subtracts one."""
  for key in model_dir_lib.ARCHITECTURE_KEYS:
    if key in existing and existing.get(key) != new.get(key):
      if key == "classes":
        source = "the number of classes in the training data"
      elif key == "input_scale":  # Rarely given: it comes with the dataset's preset.
        source = (f"--input_scale={existing.get(key)!r} resumes it; when not given, it comes "
                  "from the dataset's preset: 1/58 for --dataset=shapes, 1 for the others")
      else:
        source = f"--{key}"
      raise UserError(
          f"--model_dir {model_dir!r} holds a model with {key}={existing.get(key)!r}, but this "
          f"run asks for {key}={new.get(key)!r} ({source}); use a new --model_dir or the same "
          "settings.")
  if "mean" not in existing:
    return
  this_run = _describe_mean(new)
  if existing["mean"] == new.get("mean"):
    if mean_image is None or _same_mean_image(model_dir, mean_image):
      return
    this_run = "another mean image"
  raise UserError(
      f"--model_dir {model_dir!r} holds a model trained with {_describe_mean(existing)}, but "
      f"this run subtracts {this_run}; to resume it, pass the same --stats (and "
      "--stats_mean), or use a new --model_dir.")


def check_same_classes(existing: Sequence[str] | None, new: Sequence[str] | None,
                       config: TrainConfig) -> None:
  """A model dir resumes only on data with the same class names in the same order (where both
  are known): its fc8 rows are those classes, and config.json would otherwise rename them."""
  if not existing or not new or list(existing) == list(new):
    return
  k = next((i for i, (a, b) in enumerate(zip(existing, new)) if a != b), None)
  where = (f"class {k} is {existing[k]!r} there and {new[k]!r} here" if k is not None else
           f"{len(existing)} classes there, {len(new)} here")
  raise UserError(f"--model_dir {config.model_dir!r} holds a model trained on other classes "
                  f"than {_data_flags(config)} has ({where}); use a new --model_dir or the "
                  "data it was trained on.")


def _data_flags(config: TrainConfig) -> str:
  return f"--dataset={config.dataset}" + (f" --data_dir={config.data_dir}"
                                          if config.data_dir else "")


def _absolute(path: str | None) -> str | None:
  """A local path made absolute, for config.json: evaluate.py may run from another folder."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _same_mean_image(model_dir: str, mean_image: np.ndarray) -> bool:
  """Whether the model dir's mean image is `mean_image` (true if it has none yet: a first run
  that stopped before writing it)."""
  if not os.path.exists(os.path.join(model_dir, model_dir_lib.MEAN_IMAGE_FILE)):
    return True
  try:
    existing = model_dir_lib.load_mean_image(model_dir, image_size=1)
  except UserError:  # Unreadable: not known to be the same.
    return False
  return np.array_equal(existing, mean_image)  # False for another shape too.


def _describe_mean(model_config: dict) -> str:
  mean = model_config.get("mean")
  if mean == "mean_image":
    return f"a mean image (its {model_dir_lib.MEAN_IMAGE_FILE})"
  if mean is None:
    return "no mean"
  if mean == "imagenet":
    return "ImageNet's per-channel mean (no --stats)"
  return "the per-channel mean [" + ", ".join(f"{v:.2f}" for v in mean) + "]"


def _mean_to_subtract(config: TrainConfig, model_config: dict
                      ) -> tuple[Any, np.ndarray | None]:
  """(config.json's "mean", the mean image array or None): --stats' mean image when it names
  one (the paper's per-pixel mean), else its per-channel mean, else the model config's."""
  stats = config.stats or {}
  if stats.get("mean_image"):
    image = data_flags.load_mean_image(stats["mean_image"], model_config.get("image_size", 227))
    return "mean_image", image
  if stats.get("mean") is not None:
    return [float(v) for v in stats["mean"]], None
  return model_config.get("mean"), None


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------

class _Preemption:
  """SIGTERM/SIGINT → finish the current step, checkpoint, exit (Kubernetes, cloud VMs)."""

  def __init__(self) -> None:
    self.requested = False
    self._previous = {}

  def __enter__(self) -> "_Preemption":
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread.
        pass
    return self

  def _handle(self, signum, frame) -> None:
    if self.requested:  # Second signal: stop now.
      raise KeyboardInterrupt
    self.requested = True
    print(f"Received signal {signum}: saving a checkpoint after this step.", flush=True)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint."""


def _seed_for(config: TrainConfig, epoch: int) -> int:
  base = 0 if config.seed is None else config.seed
  return (base * 100003 + epoch * 7919 + 17) % (2**31 - 1)


def train(config: TrainConfig, log: Callable[[str], None] = log_line) -> TrainResult:
  """Runs (or resumes) training as configured; returns the final state.

  Raises:
    UserError / TrainingError: bad configuration, data, NaN loss, lost worker.
    Preempted: SIGTERM received; a checkpoint was saved first.
  """
  from alexnet_tf import datasets, input_pipeline  # Heavy imports only when training.

  validate_config(config)
  # First: MultiWorkerMirroredStrategy must configure collective ops before any TF op runs.
  strategy = distribute.create_strategy(config.strategy, config.cpu_replicas, config.all_reduce,
                                        config.collective_timeout_s)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)
  replicas = strategy.num_replicas_in_sync
  per_replica_batch = input_pipeline.per_replica_batch_size(config.batch_size, replicas)
  chief = distribute.is_chief(strategy)

  train_source = datasets.load_source(config.dataset, config.train_split, config.data_dir,
                                      config.manual_dir)
  val_source = datasets.load_source(config.dataset, config.validation_split, config.data_dir,
                                    config.manual_dir)
  if val_source.num_classes > train_source.num_classes:  # Classes counted from the labels.
    raise UserError(f"--dataset={config.dataset}: the validation split has labels up to "
                    f"{val_source.num_classes - 1} but the training split only up to "
                    f"{train_source.num_classes - 1}; put a {datasets.LABELS_FILE} naming every "
                    "class (line i = label i) beside the TFRecords")
  note = validation_overlap_note(train_source, val_source, config.data_dir)
  if note and chief:
    log(note)
  # Fails fast (UserError) when most files are unreadable, before any model is built.
  input_pipeline.check_source(train_source, strict=config.strict_data)
  input_pipeline.check_source(val_source, strict=config.strict_data)
  corrupt = input_pipeline.corrupt_counter("train")
  corrupt.reset()  # Its fraction is of this run's records.
  val_corrupt = input_pipeline.corrupt_counter("eval")
  val_corrupt.reset()
  if train_source.num_classes < 2:
    names = f" ({', '.join(train_source.class_names)})" if train_source.class_names else ""
    raise UserError(f"{_data_flags(config)}: the {config.train_split} split has "
                    f"{train_source.num_classes} class{names}; a classifier needs at least 2 "
                    "(is --data_dir one folder too deep?)")
  # Before the model dir is written: a run refused here leaves nothing behind.
  steps_per_epoch = train_source.num_examples // config.batch_size
  if steps_per_epoch < 1:
    raise UserError(f"--batch_size {config.batch_size} is larger than the {config.train_split} "
                    f"split ({train_source.num_examples} images).")
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  model_config = dict(config.model, classes=train_source.num_classes)
  model_config["mean"], mean_image = _mean_to_subtract(config, model_config)
  _prepare_model_dir(config, model_config, train_source, chief, mean_image,
                     _training_section(config, steps_per_epoch))
  if mean_image is not None and chief:
    log(f"Subtracting the per-pixel mean image {config.stats['mean_image']} "
        f"({mean_image.shape[0]}x{mean_image.shape[1]}; its central crop at the model's input).")

  # The schedule spans --epochs; --max_steps only stops early, so that a rerun with a larger one
  # goes on along the same learning-rate curve.
  total_steps = steps_per_epoch * config.epochs
  schedule = dataclasses.replace(
      config.schedule,
      base_lr=scaled_learning_rate(config.learning_rate, config.batch_size,
                                   scale=config.scale_learning_rate),
      warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
      step_boundaries=tuple(int(e) * steps_per_epoch for e in config.lr_step_epochs),
      total_steps=total_steps)
  if config.max_steps:
    total_steps = min(total_steps, config.max_steps)

  if config.mixed_precision == "auto":
    native, reason = distribute.native_bfloat16()
    config = dataclasses.replace(config, mixed_precision="bfloat16" if native else "none")
    log(f"--mixed_precision=auto: {config.mixed_precision} ({reason}).")
  if config.mixed_precision != "none":
    keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
  try:
    with strategy.scope():
      # The mean image is given, not read back from the model dir: a worker may not see the
      # chief's copy yet.
      model = model_dir_lib.build_model(
          model_config, config.model_dir, classifier_activation=None, seed=config.seed,
          **({} if mean_image is None else {"mean": mean_image}))
      optimizer = PaperSGD(learning_rate=schedule.base_lr, momentum=config.momentum,
                           coupled_weight_decay=config.weight_decay,
                           decay_biases=config.decay_biases)
      if config.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
      optimizer.build(model.trainable_variables)
      state = _TrainState(model, optimizer, PlateauState(schedule))
  finally:
    keras.mixed_precision.set_global_policy("float32")

  manager = _checkpoint_manager(config, state, chief)
  if chief:
    for path in model_dir_lib.remove_incomplete_checkpoints(config.model_dir):
      log(f"Removed {path}: a checkpoint write that was interrupted.")
  # Every worker resumes from the chief's checkpoints.
  restored = _restore_newest(state, config.model_dir, log)
  if restored:
    log(f"Resumed from {restored}: step {int(state.global_step.numpy())}, epoch "
        f"{int(state.epoch.numpy())}, step in epoch {int(state.step_in_epoch.numpy())}.")

  metrics = StepMetrics(strategy)
  train_step = make_train_step(strategy, model, optimizer, metrics, config.batch_size,
                               config.mixed_precision == "float16")
  writer = _Writers(config.model_dir, chief)
  history: list = _read_history(config.model_dir) if restored else []
  final_val = None

  def make_train_dataset(epoch: int, skip_batches: int) -> Any:
    stats = config.stats or {}

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
      ds = input_pipeline.build_train_dataset(
          train_source, per_replica_batch, model_config["image_size"], ctx,
          seed=_seed_for(config, epoch), random_crop=config.random_crop,
          random_flip=config.random_flip, pca_lighting=config.pca_lighting,
          eigval=stats.get("eigenvalues"), eigvec=stats.get("eigenvectors"),
          deterministic=config.deterministic, strict=config.strict_data,
          finish_in_step=True)
      per_pipeline = skip_batches * (replicas // max(ctx.num_input_pipelines, 1))
      return ds.skip(per_pipeline) if per_pipeline else ds

    return strategy.distribute_datasets_from_function(dataset_fn)

  def make_val_dataset() -> Any:
    def dataset_fn(ctx):
      ds = input_pipeline.build_eval_dataset(val_source, per_replica_batch,
                                             model_config["image_size"], ctx,
                                             strict=config.strict_data)
      return ds.take(config.validation_steps) if config.validation_steps else ds

    return strategy.distribute_datasets_from_function(dataset_fn)

  start_epoch = int(state.epoch.numpy())
  step = start_step = int(state.global_step.numpy())
  with _Preemption() as preemption:
    for epoch in range(start_epoch, config.epochs):
      first = int(state.step_in_epoch.numpy())
      # An epoch whose steps are all done but that was not validated (the run stopped during
      # its validation) is validated now, even when no step is left.
      if step >= total_steps and first < steps_per_epoch:
        break
      # The learning rate of the last step taken, for an epoch that has none left.
      lr = learning_rate_at(schedule, max(step - 1, 0), float(state.plateau.scale.numpy()))
      iterator = iter(make_train_dataset(epoch, first))
      metrics.reset()
      epoch_start = time.perf_counter()
      window_start, window_images = epoch_start, 0
      images_this_epoch = 0
      for step_in_epoch in range(first, steps_per_epoch):
        if step >= total_steps:
          break
        lr = learning_rate_at(schedule, step, float(state.plateau.scale.numpy()))
        try:
          loss, nonfinite = (float(t.numpy()) for t in
                             train_step(iterator, tf.constant(lr, tf.float32)))
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError,
                tf.errors.InternalError) as e:
          if config.strategy == "multi_worker":
            raise TrainingError(
                f"lost contact with another worker at step {step + 1} "
                f"({type(e).__name__}); restart the whole job to resume from the last "
                f"checkpoint in {config.model_dir}.") from e
          raise
        except tf.errors.OutOfRangeError as e:
          raise UserError(f"the {config.train_split} split ran out of images at step "
                          f"{step + 1}; too many unreadable files?") from e
        except input_pipeline.DATA_ERRORS as e:
          # check_source decoded only a sample: with --strict_data a bad file can stop us here.
          input_pipeline.raise_data_error(e, train_source, config.strict_data)
        step += 1
        images_this_epoch += config.batch_size
        window_images += config.batch_size
        if not math.isfinite(loss) or nonfinite:
          step = _handle_nan(config, state, manager, step, log)
          metrics.reset()
          iterator = iter(make_train_dataset(int(state.epoch.numpy()),
                                             int(state.step_in_epoch.numpy())))
          continue
        state.global_step.assign(step)
        state.step_in_epoch.assign(step_in_epoch + 1)
        if step % config.log_steps == 0:
          now = time.perf_counter()
          rate = window_images / max(now - window_start, 1e-9)
          m = metrics.result()
          writer.scalars("train", step, loss=m["loss"], top1=m["top1"], top5=m["top5"],
                         learning_rate=lr, images_per_sec=rate)
          log(f"step {step}/{total_steps}  loss {m['loss']:.4f}  top1 {m['top1']:.3f}  "
              f"lr {lr:.3g}  {rate:.1f} img/s")
          window_start, window_images = now, 0
        if step % config.checkpoint_steps == 0:
          manager.save(step)
        if preemption.requested:
          manager.save(step)
          log(f"Checkpoint saved at step {step}; exiting on the preemption signal.")
          raise Preempted(f"preempted at step {step}; rerun the same command to resume.")
      else:
        # The epoch ran to its end: validate, update the schedule, checkpoint.
        train_time = time.perf_counter() - epoch_start
        # No step of the epoch in this run (it stopped during validation): its training
        # metrics were not kept, and are NaN (null in metrics.jsonl), not zeros.
        m = metrics.result() if images_this_epoch else dict(loss=math.nan, top1=math.nan,
                                                            top5=math.nan)
        try:
          val = evaluate_model(model, make_val_dataset(), strategy,
                               num_classes=model_config["classes"])
        except input_pipeline.DATA_ERRORS as e:
          input_pipeline.raise_data_error(e, val_source, config.strict_data)
        val_skipped = val_corrupt.pop()
        if val["num_images"] == 0:
          if manager.last_saved_step != step:
            manager.save(step)  # Keeps the epoch's training: a rerun only validates.
          raise UserError(f"no image of the {config.validation_split} split could be read "
                          f"({val_skipped} corrupt or unreadable); check --data_dir")
        final_val = val
        reduced = state.plateau.update(1.0 - val["top1_accuracy"]) \
            if schedule.name == "plateau" else False
        state.epoch.assign(epoch + 1)
        state.step_in_epoch.assign(0)
        manager.save(step)
        rate = images_this_epoch / max(train_time, 1e-9)
        remaining = (total_steps - step) * config.batch_size / max(rate, 1e-9)
        record = dict(epoch=epoch + 1, step=step, loss=m["loss"], top1=m["top1"], top5=m["top5"],
                      val_loss=val["loss"], val_top1=val["top1_accuracy"],
                      val_top5=val["top5_accuracy"], val_top_k=val["top_k"],
                      learning_rate=lr, images_per_sec=rate, epoch_seconds=train_time,
                      corrupt_images_skipped=corrupt.pop(),
                      val_corrupt_images_skipped=val_skipped, lr_reduced=bool(reduced))
        corrupt.check(num_records=(epoch + 1 - start_epoch) * steps_per_epoch
                      * config.batch_size // distribute.num_workers(strategy))
        history.append(record)
        writer.epoch(record)
        log(f"epoch {epoch + 1}/{config.epochs}  loss {m['loss']:.4f}  top1 {m['top1']:.3f}  "
            f"val_top1 {val['top1_accuracy']:.3f}  val_top{val['top_k']} "
            f"{val['top5_accuracy']:.3f}  {rate:.1f} img/s  ETA {_fmt_time(remaining)}"
            + (f"  corrupt skipped {record['corrupt_images_skipped']}"
               if record["corrupt_images_skipped"] else "")
            + (f"  val corrupt skipped {val_skipped}" if val_skipped else "")
            + ("  (lr / 10: validation error stopped improving)" if reduced else ""))
        continue
      break  # Step cap reached inside the epoch.
    if step > 0 and manager.last_saved_step != step:
      manager.save(step)  # The step cap ended the run mid-epoch.
  epochs_done = int(state.epoch.numpy())
  nothing_trained = bool(restored) and step == start_step and epochs_done == start_epoch
  if config.max_steps and epochs_done < config.epochs and step >= config.max_steps:
    log(f"Stopped at step {step} (--max_steps={config.max_steps}), {epochs_done} of "
        f"{config.epochs} epochs done; rerun with a larger --max_steps to go on.")
  elif nothing_trained:
    log(f"Nothing left to train: {config.model_dir} has finished its {epochs_done} epochs "
        f"(--epochs={config.epochs}).")

  writer.close()
  export_path = None
  if config.export_dir and chief:
    export_path = _export(config, model_config, log, nothing_trained)
  _cleanup_worker_dir(config, chief)
  return TrainResult(global_step=int(state.global_step.numpy()),
                     epochs_completed=int(state.epoch.numpy()), history=history,
                     final_validation=final_val, export_path=export_path)


class _TrainState:
  def __init__(self, model, optimizer, plateau: PlateauState) -> None:
    self.model = model
    self.optimizer = optimizer
    self.plateau = plateau
    self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    self.nan_recoveries = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, global_step=self.global_step, epoch=self.epoch,
        step_in_epoch=self.step_in_epoch, plateau=plateau, nan_recoveries=self.nan_recoveries,
        # Keras does not checkpoint its seed generators; without their state a resumed run
        # would redraw the dropout masks of the steps before the interruption.
        dropout_seeds=[v for v in model.non_trainable_variables
                       if "seed_generator" in v.path])


class StepMetrics:
  """Running sums of loss / top-1 / top-5 over an epoch, summed across all replicas of all
  workers (every worker must call `result` at the same steps: it is a collective)."""

  def __init__(self, strategy: tf.distribute.Strategy) -> None:
    self.strategy = strategy
    with strategy.scope():
      self.sums = tf.Variable(tf.zeros([4], tf.float64), trainable=False,
                              synchronization=tf.VariableSynchronization.ON_READ,
                              aggregation=tf.VariableAggregation.SUM)

  def update(self, per_example_loss, logits, labels) -> None:
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)
    k = top_k(int(logits.shape[-1]))  # The same k as validation's.
    self.sums.assign_add(tf.stack([
        tf.reduce_sum(tf.cast(per_example_loss, tf.float64)),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float64)),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float64)),
        tf.cast(tf.size(labels), tf.float64)]))

  def reset(self) -> None:
    for v in self.sums.values if hasattr(self.sums, "values") else [self.sums]:
      v.assign(tf.zeros_like(v))

  @tf.function
  def _global_sums(self) -> tf.Tensor:
    # Reading an ON_READ variable in replica context gives that replica's own sums; the
    # strategy's reduce then sums them over every replica of every worker.
    local = self.strategy.run(lambda: tf.identity(self.sums))
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

  def result(self) -> dict:
    s = self._global_sums().numpy()
    n = max(s[3], 1.0)
    return dict(loss=s[0] / n, top1=s[1] / n, top5=s[2] / n)


def make_train_step(strategy, model, optimizer, metrics: StepMetrics, global_batch: int,
                    loss_scaling: bool) -> Callable:
  """The training step: one optimiser update on one global batch, as a tf.function.

  Args:
    strategy: the strategy the model, optimizer and dataset were created under.
    model: the AlexNet returning logits (`classifier_activation=None`).
    optimizer: PaperSGD (or a LossScaleOptimizer around it for float16).
    metrics: running train loss / top-1 / top-5 sums, updated by every step.
    global_batch: images per step over all replicas (the loss is averaged over it).
    loss_scaling: True when `optimizer` is a LossScaleOptimizer.

  Returns:
    `train_step(iterator, lr)` → (loss, number of replicas whose gradients hold a NaN/Inf),
    both summed over replicas; it draws one batch from the distributed `iterator`: (images,
    labels), or ((uint8 images, flips, lighting shifts), labels) from `build_train_dataset(...,
    finish_in_step=True)`, whose flips and lighting the step applies first.
  """

  def step_fn(inputs, labels, lr):
    images = preprocessing.flip_and_light(*inputs) if isinstance(inputs, tuple) else inputs
    with tf.GradientTape() as tape:
      logits = tf.cast(model(images, training=True), tf.float32)
      per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
          tf.cast(labels, tf.int32), logits)
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
      scaled = optimizer.scale_loss(loss) if loss_scaling else loss
    grads = tape.gradient(scaled, model.trainable_variables)
    inner = optimizer.inner_optimizer if loss_scaling else optimizer
    inner.learning_rate.assign(lr)
    # An overflowing gradient can leave the loss finite for one more step while the weights
    # already hold Inf; checking the gradients catches it in the step it happens. A sum is
    # non-finite iff a summand is (barring a finite overflow), and costs one pass over the
    # gradients instead of three. With float16 loss scaling, overflowing steps are expected:
    # the LossScaleOptimizer skips them.
    if loss_scaling:
      nonfinite = tf.constant(0.0)
    else:
      total = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])
      nonfinite = tf.cast(~tf.math.is_finite(total), tf.float32)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    metrics.update(per_example, logits, labels)
    return loss, nonfinite

  @tf.function
  def train_step(iterator, lr):
    """(loss, number of replicas with non-finite gradients) of one global batch."""
    inputs, labels = next(iterator)
    per_replica = strategy.run(step_fn, args=(inputs, labels, lr))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return train_step


def _handle_nan(config: TrainConfig, state: _TrainState, manager, step: int,
                log: Callable[[str], None]) -> int:
  """NaN/Inf loss: stop with a clear message, or restore and lower the learning rate."""
  last = manager.latest_checkpoint
  if not config.nan_recovery or last is None or \
      int(state.nan_recoveries.numpy()) >= config.max_nan_recoveries:
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingError(f"the loss or its gradients became NaN/Inf at step {step}; {where}. "
                        "Lower --learning_rate, or pass --nan_recovery to restore and divide "
                        "it by 10.")
  recoveries = int(state.nan_recoveries.numpy()) + 1
  state.checkpoint.restore(last).assert_existing_objects_matched()
  state.nan_recoveries.assign(recoveries)
  state.plateau.scale.assign(state.plateau.scale * 0.1)
  log(f"NaN/Inf loss at step {step}: restored {last} and divided the learning rate by 10 "
      f"(recovery {recoveries}/{config.max_nan_recoveries}).")
  return int(state.global_step.numpy())


def _worker_model_dir(config: TrainConfig, chief: bool) -> str:
  if chief:
    return config.model_dir
  # Named by job and task, not process: a worker killed before its cleanup leaves ~0.5 GB per
  # checkpoint, which its restart then reuses and removes instead of leaking.
  task = (distribute.tf_config() or {}).get("task", {})
  job = zlib.crc32(os.path.abspath(config.model_dir).encode())
  return os.path.join(tempfile.gettempdir(), f"alexnet_tf_worker_{job:08x}_"
                      f"{task.get('type', 'worker')}{task.get('index', 0)}")


def _cleanup_worker_dir(config: TrainConfig, chief: bool) -> None:
  if not chief:
    shutil.rmtree(_worker_model_dir(config, chief), ignore_errors=True)


def _checkpoint_manager(config: TrainConfig, state: _TrainState,
                        chief: bool) -> "_Saver":
  """The chief writes MODEL_DIR/checkpoints; other workers write a temp dir (TF's
  multi-worker rule: every worker saves, only the chief's copy is kept). Every
  worker restores from the chief's directory."""
  directory = model_dir_lib.checkpoint_dir(_worker_model_dir(config, chief))
  return _Saver(tf.train.CheckpointManager(state.checkpoint, directory,
                                           max_to_keep=config.keep_checkpoints,
                                           step_counter=state.global_step,
                                           checkpoint_name="ckpt"), config.model_dir)


class _Saver:
  """A CheckpointManager that remembers the last step saved and reports write failures."""

  def __init__(self, manager: tf.train.CheckpointManager, model_dir: str) -> None:
    self.manager = manager
    self.model_dir = model_dir
    self.last_saved_step: int | None = None

  @property
  def latest_checkpoint(self) -> str | None:
    return self.manager.latest_checkpoint

  def save(self, step: int) -> str:
    try:
      path = self.manager.save(checkpoint_number=step)
    except (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError,
            tf.errors.FailedPreconditionError, tf.errors.NotFoundError, OSError) as e:
      # NotFoundError: the checkpoint folder (or a file being written) removed meanwhile, e.g.
      # by a second train.py on the same --model_dir.
      raise TrainingError(f"could not write a checkpoint at step {step} to "
                          f"{self.manager.directory} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); the previous checkpoint "
                          f"{self.manager.latest_checkpoint} is intact.") from e
    self.last_saved_step = step
    return path


def _training_section(config: TrainConfig, steps_per_epoch: int) -> dict:
  """config.json's record of what a resume must keep: the step count is in batches of this
  size and epochs of this length (the schedule too), and float16's loss scaling adds variables
  to the checkpoints."""
  return dict(batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
              loss_scaling=config.mixed_precision == "float16")


def check_same_training(existing: dict | None, new: dict, model_dir: str) -> None:
  """A resume refused where it would count steps differently or not read the checkpoints
  (model dirs written before config.json had a "training" section are not checked)."""
  if not isinstance(existing, dict):
    return
  where = f"--model_dir {model_dir!r}"
  if "batch_size" in existing and existing["batch_size"] != new["batch_size"]:
    raise UserError(f"{where} was trained with --batch_size={existing['batch_size']}, but this "
                    f"run asks for {new['batch_size']}: its steps, epochs and learning-rate "
                    f"schedule count batches of {existing['batch_size']}; resume with "
                    f"--batch_size={existing['batch_size']}, or use a new --model_dir.")
  if "steps_per_epoch" in existing and existing["steps_per_epoch"] != new["steps_per_epoch"]:
    raise UserError(f"{where} has epochs of {existing['steps_per_epoch']} steps, but this run's "
                    f"have {new['steps_per_epoch']} (--steps_per_epoch, or the number of "
                    "training images, changed); resume with the same, or use a new "
                    "--model_dir.")
  if "loss_scaling" in existing and existing["loss_scaling"] != new["loss_scaling"]:
    was = "--mixed_precision=float16" if existing["loss_scaling"] else "no float16"
    raise UserError(f"{where} was trained with {was}, and float16's loss scaling changes what "
                    "a checkpoint holds; resume with "
                    + ("--mixed_precision=float16" if existing["loss_scaling"] else
                       "--mixed_precision=none, bfloat16 or auto")
                    + ", or use a new --model_dir.")


def _prepare_model_dir(config: TrainConfig, model_config: dict, source, chief: bool,
                       mean_image: np.ndarray | None, training: dict) -> None:
  existing = None
  if os.path.isfile(model_dir_lib.config_path(config.model_dir)):
    existing = model_dir_lib.read_config(config.model_dir)
    check_compatible(existing["model"], model_config, config.model_dir, mean_image)
    check_same_classes(existing.get("class_names"), source.class_names, config)
    check_same_training(existing.get("training"), training, config.model_dir)
    if ("initialization" in existing["model"]
        and model_dir_lib.latest_checkpoint(config.model_dir)):
      # How the weights were initialised is history once they are restored: config.json
      # keeps the run's, not this command's --initialization.
      model_config["initialization"] = existing["model"]["initialization"]
  elif model_dir_lib.holds_checkpoint_files(config.model_dir):
    raise UserError(f"--model_dir {config.model_dir!r} holds checkpoint files but no "
                    f"{model_dir_lib.CONFIG_FILE}: is it a run's {model_dir_lib.CHECKPOINT_SUBDIR}"
                    "/ folder? Pass the run's own folder (the one with config.json) to resume "
                    "it, or a new --model_dir.")
  if not chief:
    return
  try:
    os.makedirs(config.model_dir, exist_ok=True)
    if mean_image is not None:
      # Before config.json names it, so that a model dir never names a mean image it lacks.
      write_whole(os.path.join(config.model_dir, model_dir_lib.MEAN_IMAGE_FILE),
                  lambda f: np.save(f, mean_image), binary=True)
    model_dir_lib.write_config(config.model_dir, dict(
        model=model_config, class_names=source.class_names,
        dataset=dict(name=config.dataset, data_dir=_absolute(config.data_dir),
                     train_split=config.train_split, validation_split=config.validation_split),
        preprocessing=dict(resize_shorter_side=256, central_crop=256,
                           image_size=model_config["image_size"], mean=model_config["mean"]),
        stats=config.stats, training=training))
  except OSError as e:
    raise UserError(f"--model_dir {config.model_dir!r} is not writable ({e.strerror}).") from e


class _Writers:
  """TensorBoard summaries and metrics.jsonl in the model dir (chief only)."""

  def __init__(self, model_dir: str, chief: bool) -> None:
    self.chief = chief
    self.model_dir = model_dir
    if chief:
      self.train = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "train"))
      self.val = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "validation"))

  def scalars(self, which: str, step: int, **values: float) -> None:
    if not self.chief:
      return
    with (self.train if which == "train" else self.val).as_default():
      for name, value in values.items():
        tf.summary.scalar(name, value, step=step)

  def epoch(self, record: dict) -> None:
    if not self.chief:
      return
    step = record["step"]
    # epoch_images_per_sec: the step lines' images_per_sec is a window's rate, at the same step.
    self.scalars("train", step, epoch_loss=record["loss"], epoch_top1=record["top1"],
                 epoch_top5=record["top5"], epoch_images_per_sec=record["images_per_sec"])
    self.scalars("validation", step, loss=record["val_loss"], top1=record["val_top1"],
                 top5=record["val_top5"])
    with open(os.path.join(self.model_dir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v
                          for k, v in record.items()}) + "\n")

  def close(self) -> None:
    if self.chief:
      self.train.flush()
      self.val.flush()


def _restore_newest(state: "_TrainState", model_dir: str, log: Callable[[str], None]
                    ) -> str | None:
  """Restores the newest checkpoint of `model_dir` that reads, and returns it (None: none).

  One whose data file turns out to be cut short (a partial copy, a full disk) is reported and
  the one before it restored; when none reads, starting over would silently drop the training
  done, so that is an error.
  """
  candidates = model_dir_lib.readable_checkpoints(model_dir)
  for path in candidates:
    try:
      state.checkpoint.restore(path).assert_existing_objects_matched()
      return path
    except model_dir_lib.CHECKPOINT_READ_ERRORS as e:
      log(f"Checkpoint {path} cannot be read: a data file is cut short or damaged "
          f"({first_line(e, 200)}); trying the one "
          "before it.")
  if candidates:
    raise UserError(f"no checkpoint of --model_dir {model_dir!r} can be read; restore its "
                    "files, or pass another --model_dir to start over.")
  return None


def _read_history(model_dir: str) -> list:
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _export(config: TrainConfig, model_config: dict, log, nothing_trained: bool) -> str | None:
  from alexnet_tf import export as export_lib
  versions = export_lib.list_versions(config.export_dir) if nothing_trained else []
  if versions:  # Each rerun of a finished run wrote another identical ~230 MB copy.
    log(f"Not exported again: {config.export_dir} already holds version {max(versions)}; "
        "python -m alexnet_tf.export exports the model dir anew.")
    return None
  model, cfg = model_dir_lib.restore_model(config.model_dir)
  path = export_lib.export_saved_model(model, config.export_dir,
                                       class_names=cfg.get("class_names"),
                                       image_size=model_config["image_size"])
  log(f"Exported the SavedModel to {path}")
  return path
