"""Trains AlexNet the paper's way on any tf.distribute strategy.

  python train.py --strategy=mirrored                  # built-in `shapes` data, quick preset
  python train.py --strategy=mirrored --dataset=imagenet2012 --data_dir=... --manual_dir=...
  python train.py --strategy=multi_worker              # with TF_CONFIG set on every machine

Rerunning the same command resumes from the latest checkpoint in --model_dir.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from alexnet_tf import distribute, model_dir as model_dir_lib
from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, run_cli
from alexnet_tf.optimization import ScheduleConfig

FLAGS = flags.FLAGS

data_flags.define_dataset_flags()
data_flags.define_path("model_dir", "runs/alexnet", "Checkpoints, logs (TensorBoard, "
                       "metrics.jsonl) and config.json. Rerunning with the same dir resumes.")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_integer("cpu_replicas", 1, "With --strategy=mirrored and no GPU: split the CPU "
                     "into this many logical devices (one replica each).")
flags.DEFINE_enum("all_reduce", "auto", distribute.ALL_REDUCE,
                  "Cross-device reduction: mirrored: auto|nccl|hierarchical|one_device; "
                  "multi_worker: auto|ring|nccl.")
flags.DEFINE_float("collective_timeout", 600.0, "multi_worker: seconds a collective may wait "
                   "for a peer before the run fails (a dead worker never hangs the job).")
flags.DEFINE_integer("batch_size", None, "GLOBAL batch size (paper: 128). Must divide by the "
                     "number of replicas. Default: the dataset's preset.")
flags.DEFINE_integer("epochs", None, "Epochs (paper: 90). Default: the dataset's preset.")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch.")
flags.DEFINE_integer("max_steps", None, "Cap on the total number of steps.")
flags.DEFINE_integer("validation_steps", None, "Cap on validation batches per epoch (for "
                     "quick checks: a folder split is read in class order, so a cap sees only "
                     "the first classes).")
flags.DEFINE_float("learning_rate", None, "Initial learning rate (paper: 0.01 at batch 128).")
flags.DEFINE_bool("scale_learning_rate", False, "Linear scaling rule: multiply the learning "
                  "rate by batch_size / 128 (use with --warmup_epochs for large batches).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Coupled weight decay (added to the gradient before "
                   "momentum, as in the paper).")
flags.DEFINE_bool("decay_biases", False, "Also decay biases (Caffe and this default: kernels only).")
flags.DEFINE_enum("lr_schedule", None, ["plateau", "step", "cosine", "constant"],
                  "plateau: /10 when validation error stops improving, at most 3 times "
                  "(paper); step: /10 at --lr_step_epochs; cosine; constant. "
                  "Default: the dataset's preset.")
flags.DEFINE_list("lr_step_epochs", ["30", "60", "80"], "Epochs at which --lr_schedule=step "
                  "divides the learning rate by 10.")
flags.DEFINE_integer("plateau_patience", 2, "Epochs without validation improvement before /10.")
flags.DEFINE_float("warmup_epochs", None, "Linear learning-rate warm-up, in epochs (default: "
                   "the dataset's preset).")
flags.DEFINE_integer("seed", None, "Seed for initialisation, data order and augmentation.")
flags.DEFINE_bool("deterministic", False, "Deterministic ops and input order (slower), so a "
                  "resumed run reproduces an uninterrupted one.")
flags.DEFINE_enum("mixed_precision", None, ["none", "bfloat16", "float16", "auto"],
                  "Mixed precision policy (softmax stays float32; LRN too under float16). "
                  "auto: bfloat16 where the hardware computes it natively (GPUs of compute "
                  "capability >= 8.0, CPUs with AVX512_BF16/AMX), else none. Default: the "
                  "dataset's preset.")
data_flags.define_path("export_dir", None, "At the end, export a TF Serving SavedModel to "
                       "EXPORT_DIR/<version> (default: MODEL_DIR/export).")
flags.DEFINE_bool("export", True, "Export the SavedModel at the end (--noexport to skip).")
flags.DEFINE_integer("checkpoint_steps", 500, "Checkpoint every this many steps (and every epoch).")
flags.DEFINE_integer("keep_checkpoints", 5, "How many checkpoints to keep.")
flags.DEFINE_integer("log_steps", 50, "Log training metrics every this many steps.")
flags.DEFINE_bool("nan_recovery", False, "On a NaN/Inf loss, restore the last checkpoint and "
                  "divide the learning rate by 10 (at most 3 times) instead of stopping.")
# Model switches (the paper's defaults and ablations).
flags.DEFINE_enum("towers", "2", ["1", "2"], "2: the two-GPU split of the paper; 1: one tower.")
flags.DEFINE_enum("activation", "relu", ["relu", "tanh"], "Non-linearity.")
flags.DEFINE_enum("lrn", "paper", ["paper", "caffe", "none"], "Local response normalisation.")
flags.DEFINE_enum("pooling", "overlapping", ["overlapping", "non_overlapping"],
                  "Max pooling 3x3/2 (paper) or 2x2/2.")
flags.DEFINE_float("dropout", None, "Dropout rate of fc6 and fc7 (default: the dataset "
                   "preset's; the paper's 0.5 for ImageNet).")
flags.DEFINE_float("input_scale", None, "Multiplies the mean-subtracted 0..255 pixels "
                   "(default: the dataset preset's; 1, the paper, for ImageNet).")
flags.DEFINE_enum("initialization", None, ["paper", "caffe", "he"], "Weight/bias "
                  "initialisation (default: the dataset preset's; paper for ImageNet).")
flags.DEFINE_enum("image_size", "227", ["227", "224"], "Model input size (224 pads conv1).")
flags.DEFINE_bool("random_crop", True, "Train-time random crops (else centre crop).")
flags.DEFINE_bool("random_flip", True, "Train-time random horizontal flips.")
flags.DEFINE_bool("pca_lighting", True, "Train-time PCA colour augmentation.")

# Defaults per dataset: the paper's recipe, and a quick one for the built-in data.
PRESETS = {
    # The paper's 0.01 initialisation on raw 0..255 pixels needs thousands of steps to leave
    # its flat start (Caffe saw the same), so the quick preset uses He initialisation on
    # unit-scale inputs (input_scale 1/58) and no dropout, and bfloat16 where it is native
    # (1.5–2x the float32 rate on an AVX512_BF16 CPU): 7 epochs of 3,000 images in ~8.5 minutes.
    "shapes": dict(batch_size=32, epochs=7, learning_rate=0.008, lr_schedule="cosine",
                   warmup_epochs=0.5, initialization="he", input_scale=1 / 58, dropout=0.0,
                   mixed_precision="auto"),
    "paper": dict(batch_size=128, epochs=90, learning_rate=0.01, lr_schedule="plateau",
                  warmup_epochs=0.0, initialization="paper", input_scale=1.0, dropout=0.5,
                  mixed_precision="none"),
}


def config_from_flags() -> "training.TrainConfig":
  """Builds the TrainConfig from the command line (flag values, then the dataset preset)."""
  from alexnet_tf import training
  preset = PRESETS["shapes" if FLAGS.dataset == "shapes" else "paper"]

  def pick(name: str):
    value = getattr(FLAGS, name)
    return preset[name] if value is None else value

  epochs = pick("epochs")
  return training.TrainConfig(
      model_dir=FLAGS.model_dir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      manual_dir=FLAGS.manual_dir, strategy=FLAGS.strategy, cpu_replicas=FLAGS.cpu_replicas,
      all_reduce=FLAGS.all_reduce, collective_timeout_s=FLAGS.collective_timeout,
      batch_size=pick("batch_size"), epochs=epochs, steps_per_epoch=FLAGS.steps_per_epoch,
      max_steps=FLAGS.max_steps, validation_steps=FLAGS.validation_steps,
      learning_rate=pick("learning_rate"), scale_learning_rate=FLAGS.scale_learning_rate,
      momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, decay_biases=FLAGS.decay_biases,
      schedule=ScheduleConfig(name=pick("lr_schedule"), plateau_patience=FLAGS.plateau_patience),
      lr_step_epochs=_step_epochs(FLAGS.lr_step_epochs),
      warmup_epochs=pick("warmup_epochs"), seed=FLAGS.seed, deterministic=FLAGS.deterministic,
      mixed_precision=pick("mixed_precision"),
      model=model_dir_lib.default_model_config(
          towers=int(FLAGS.towers), activation=FLAGS.activation, lrn=FLAGS.lrn,
          pooling_mode=FLAGS.pooling, dropout=pick("dropout"),
          initialization=pick("initialization"), input_scale=pick("input_scale"),
          image_size=int(FLAGS.image_size)),
      random_crop=FLAGS.random_crop, random_flip=FLAGS.random_flip,
      pca_lighting=FLAGS.pca_lighting,
      stats=_stats(),
      strict_data=FLAGS.strict_data, checkpoint_steps=FLAGS.checkpoint_steps,
      keep_checkpoints=FLAGS.keep_checkpoints, log_steps=FLAGS.log_steps,
      export_dir=_export_dir(), nan_recovery=FLAGS.nan_recovery)


def _stats() -> dict | None:
  if not FLAGS.stats:
    if FLAGS.stats_mean != "auto":
      raise UserError(f"--stats_mean={FLAGS.stats_mean} needs --stats=FILE (without it the "
                      "model subtracts ImageNet's per-channel mean)")
    return None
  return data_flags.load_stats(FLAGS.stats, FLAGS.stats_mean, int(FLAGS.image_size))


def _export_dir() -> str | None:
  if not FLAGS.export:
    return None
  return FLAGS.export_dir or os.path.join(FLAGS.model_dir, "export")


def _step_epochs(values: Sequence[str]) -> tuple:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise UserError(f"--lr_step_epochs must be comma-separated integers; got {values!r}.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; all options are --flags.")
  distribute.configure_cpu_replicas(FLAGS.cpu_replicas)  # Before TF touches any device.
  from alexnet_tf import training
  config = config_from_flags()
  try:
    training.train(config)
  except training.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)


def run_main() -> None:
  run_cli(main)


if __name__ == "__main__":
  run_main()
