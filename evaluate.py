"""Evaluates AlexNet the paper's way: top-1 / top-5, centre crop or 10-crop, ensembles.

  python train.py --strategy=mirrored                          # trains runs/alexnet on shapes
  python evaluate.py --model_dir=runs/alexnet --ten_crop       # its latest checkpoint, 10-crop
  python evaluate.py --model_dir=DIR --dataset=imagenet2012 --data_dir=... --batch_size=256
  python evaluate.py --ensemble=runs/a,runs/b,model.keras --ten_crop --output_json=eval.json
  python evaluate.py --saved_model=exports/alexnet             # a TF Serving export (latest version)

The model config comes from the model dir's config.json, so no model flags are needed; the
dataset defaults to the one recorded there.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags
from absl import logging

from alexnet_tf import distribute
from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, run_cli

FLAGS = flags.FLAGS

data_flags.define_dataset_flags(training=False)
if "strict_data" not in FLAGS:
  flags.DEFINE_bool("strict_data", False, "Fail on a corrupt/truncated/non-image file, naming "
                    "it (default: skip it and report how many were skipped).")
data_flags.define_path("model_dir", None, "A model directory written by train.py; its latest "
                       "checkpoint is evaluated. Default runs/alexnet (train.py's default) when "
                       "no --saved_model, --model or --ensemble is given.")
data_flags.define_path("checkpoint", None, "With --model_dir: a checkpoint path prefix, e.g. "
                       "runs/alexnet/checkpoints/ckpt-120 (default: the latest).")
data_flags.define_path("saved_model", None, "A SavedModel export (python -m alexnet_tf.export), "
                       "or its export base (the highest version is used).")
data_flags.define_path("model", None, "A Keras model file (FILE.keras, saved with model.save()).")
flags.DEFINE_list("ensemble", [], "Comma-separated model dirs, .keras files or SavedModel dirs "
                  "whose softmax outputs are averaged (the paper's 5-CNN ensemble).")
flags.DEFINE_string("split", "validation", "Split to evaluate (train, validation; TFDS split "
                    "syntax for TFDS datasets).")
flags.DEFINE_bool("ten_crop", False, "Average the softmax over the paper's ten crops (4 corners "
                  "+ centre and their mirror images) instead of the centre crop.")
flags.DEFINE_integer("batch_size", 32, "GLOBAL batch size (images per step over all replicas; "
                     "must divide by the number of replicas). With --ten_crop each image is "
                     "10 crops.")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_integer("cpu_replicas", 1, "With --strategy=mirrored and no GPU: split the CPU "
                     "into this many logical devices (one replica each).")
data_flags.define_path("output_json", None, "Write the results and the options used as JSON "
                       "(num_images, top1_accuracy, top5_accuracy, ... as fractions).")
data_flags.define_path("per_class_csv", None, "Write per-class top-1 / top-5 accuracy as CSV.")
data_flags.define_path("confusion_csv", None, "Write the confusion matrix (rows: true class, "
                       "columns: predicted class) as CSV.")


def config_from_flags() -> "evaluation.EvalConfig":
  """The EvalConfig of the command line."""
  from alexnet_tf import evaluation
  return evaluation.EvalConfig(
      model_dir=FLAGS.model_dir, checkpoint=FLAGS.checkpoint, saved_model=FLAGS.saved_model,
      keras_model=FLAGS.model, ensemble=tuple(data_flags.expand_path(p) for p in FLAGS.ensemble),
      # None = the dataset recorded in the model dir (the flag's default only as a fallback).
      dataset=FLAGS.dataset if FLAGS["dataset"].present else None,
      data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir, split=FLAGS.split,
      ten_crop=FLAGS.ten_crop, batch_size=FLAGS.batch_size, strategy=FLAGS.strategy,
      cpu_replicas=FLAGS.cpu_replicas, strict_data=FLAGS.strict_data,
      output_json=FLAGS.output_json, per_class_csv=FLAGS.per_class_csv,
      confusion_csv=FLAGS.confusion_csv)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; all options are --flags.")
  if not FLAGS["verbosity"].present:
    # The result is the table on stdout; keep TF's INFO lines (strategy set-up, reductions)
    # out of it unless asked for with --verbosity=0.
    import tensorflow as tf  # Already imported by alexnet_tf.distribute.
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("WARNING")
  distribute.configure_cpu_replicas(FLAGS.cpu_replicas)  # Before TF touches any device.
  from alexnet_tf import evaluation
  evaluation.evaluate(config_from_flags())


def run_main() -> None:
  run_cli(main)


if __name__ == "__main__":
  run_main()
