r"""Per-channel mean and RGB covariance eigen-pairs of a dataset split (the paper's statistics).

  python -m alexnet_tf.tools.dataset_stats --dataset=folder --data_dir=ROOT \
      [--split=train] --output=stats.json [--mean_image=mean.npy] [--max_images=N]

Every image goes through the paper's fixed-resolution step (shorter side 256, central 256×256
patch, `alexnet_tf.preprocessing`), then the pixel sums, the sums of the 3×3 outer products and
(optionally) the per-pixel sum image are accumulated in float64 — streaming, memory bounded by one
batch. The output JSON holds

  mean          [R, G, B], 0..255 scale
  eigenvalues   3 values, descending: eigenvalues of the 3×3 covariance of 0..255 RGB pixel values
  eigenvectors  3×3, one unit eigenvector per column (column j ↔ eigenvalues[j])
  num_images, num_pixels, skipped, dataset, split, image_size (256), scale ("0..255")
  mean_image    (with --mean_image) the .npy path of the float32 [256, 256, 3] mean image

`train.py --stats=stats.json` uses the mean image for mean subtraction when the file names one
(the paper's per-pixel mean; `--stats_mean=channel` for `mean` instead), else `mean`, and the
eigen-pairs for PCA lighting (`alexnet_tf.preprocessing.pca_lighting` rescales 0..255-scale
eigenvalues). Corrupt images are skipped and counted.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from absl import flags

from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, check_writable_file, log_line, run_cli
from alexnet_tf.files import write_whole

FLAGS = flags.FLAGS

# A progress line every this many images (ImageNet's train split has 1.28 million).
PROGRESS_EVERY = 10_000


def define_flags() -> None:
  """Defines the tool's flags (only when run as a program, so importing it defines nothing)."""
  data_flags.define_dataset_flags(training=False)
  flags.DEFINE_string("split", "train", "Split to measure (the paper: the training set).")
  data_flags.define_path("output", None, "Where to write the JSON statistics.")
  data_flags.define_path("mean_image", None, "Also write the per-pixel mean image (float32 "
                         "[256, 256, 3], 0..255) to this .npy file; train.py --stats then "
                         "subtracts it, as the paper did.")
  flags.DEFINE_integer("max_images", None, "Use only the first N images (quick estimates).")


def compute_stats(source, *, mean_image: bool = False, max_images: int | None = None,
                  batch_size: int = 64, log: Callable[[str], None] = log_line) -> dict:
  """Streams a `DatasetSource` and returns the statistics (see the module docstring).

  The returned dict holds numpy arrays under "mean", "eigenvalues", "eigenvectors",
  "covariance" and, with mean_image, "mean_image" ([256, 256, 3] float64).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_tf import input_pipeline, preprocessing  # pylint: disable=g-import-not-at-top

  size = preprocessing.FIXED_SIZE
  counter = input_pipeline.CorruptCounter("stats")

  def per_image(record):
    image_bytes = input_pipeline.checked_image_bytes(record, False, counter)
    image = tf.cast(preprocessing.decode_crop_and_resize(image_bytes, size), tf.float64)
    pixels = tf.reshape(image, [-1, 3])
    return image, tf.reduce_sum(pixels, 0), tf.matmul(pixels, pixels, transpose_a=True)

  ds = input_pipeline.source_records(source)
  if max_images:
    ds = ds.take(max_images)
  ds = input_pipeline.decode_groups(input_pipeline.check_in_groups(ds), per_image, strict=False,
                                    deterministic=False).batch(batch_size)
  ds = ds.map(lambda image, s, ss: (tf.reduce_sum(image, 0), tf.reduce_sum(s, 0),
                                    tf.reduce_sum(ss, 0), tf.shape(s, tf.int64)[0]))
  ds = ds.prefetch(2)
  total_sum = np.zeros(3)
  total_outer = np.zeros((3, 3))
  total_image = np.zeros((size, size, 3)) if mean_image else None
  count = 0
  expected = min(source.num_examples, max_images or source.num_examples)
  try:
    for image_sum, s, ss, n in ds.as_numpy_iterator():
      total_sum += s
      total_outer += ss
      if mean_image:
        total_image += image_sum
      if (count + int(n)) // PROGRESS_EVERY > count // PROGRESS_EVERY:
        log(f"{count + int(n)} of {expected} images")
      count += int(n)
  except input_pipeline.DATA_ERRORS as e:  # A damaged shard, a malformed TFRecord record.
    input_pipeline.raise_data_error(e, source, strict=False)
  skipped = expected - count
  if count == 0:
    raise UserError(f"no readable images in {source.name} split {source.split}")
  if skipped:
    log(f"skipped {skipped} corrupt or unreadable images")
  pixels = count * size * size
  mean = total_sum / pixels
  cov = total_outer / pixels - np.outer(mean, mean)
  cov = (cov + cov.T) / 2
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  eigval = np.maximum(eigval[order], 0.0)
  eigvec = eigvec[:, order]
  # Sign convention: each eigenvector's component sum is <= 0 (as in the ImageNet values).
  eigvec = eigvec * np.where(eigvec.sum(axis=0) > 0, -1.0, 1.0)
  out = {"mean": mean, "eigenvalues": eigval, "eigenvectors": eigvec, "covariance": cov,
         "num_images": count, "num_pixels": pixels, "skipped": skipped}
  if mean_image:
    out["mean_image"] = total_image / count
  return out


def write_stats(stats: dict, output: str, *, dataset: str, split: str,
                mean_image_path: str | None = None) -> dict:
  """Writes the JSON (and the mean image .npy); returns the JSON object written.

  Each file replaces an earlier one only once it is written in full.
  """
  from alexnet_tf import preprocessing  # pylint: disable=g-import-not-at-top
  doc = {
      "mean": [float(v) for v in stats["mean"]],
      "eigenvalues": [float(v) for v in stats["eigenvalues"]],
      "eigenvectors": [[float(v) for v in row] for row in stats["eigenvectors"]],
      "covariance": [[float(v) for v in row] for row in stats["covariance"]],
      "num_images": int(stats["num_images"]),
      "num_pixels": int(stats["num_pixels"]),
      "skipped": int(stats["skipped"]),
      "dataset": dataset,
      "split": split,
      "image_size": preprocessing.FIXED_SIZE,
      "scale": "0..255",
  }
  if mean_image_path:
    if "mean_image" not in stats:
      raise ValueError("stats has no mean_image")
    mean_image = stats["mean_image"].astype(np.float32)
    write_whole(mean_image_path, lambda f: np.save(f, mean_image), binary=True)
    doc["mean_image"] = os.path.abspath(mean_image_path)
  write_whole(output, lambda f: json.dump(doc, f, indent=1))
  return doc


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; all options are --flags")
  if not FLAGS.output:
    raise UserError("--output=FILE.json is required")
  if FLAGS.max_images is not None and FLAGS.max_images < 1:
    raise UserError(f"--max_images={FLAGS.max_images} must be at least 1 (leave it out for all)")
  if FLAGS.mean_image and not FLAGS.mean_image.endswith(".npy"):
    raise UserError(f"--mean_image={FLAGS.mean_image} must end in .npy")
  check_writable_file("--output", FLAGS.output)  # Now, not after a pass over the dataset.
  if FLAGS.mean_image:
    check_writable_file("--mean_image", FLAGS.mean_image)
  from alexnet_tf import datasets  # pylint: disable=g-import-not-at-top
  source = datasets.load_source(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, FLAGS.manual_dir)
  stats = compute_stats(source, mean_image=bool(FLAGS.mean_image), max_images=FLAGS.max_images)
  try:
    doc = write_stats(stats, FLAGS.output, dataset=FLAGS.dataset, split=FLAGS.split,
                      mean_image_path=FLAGS.mean_image)
  except OSError as e:  # A full disk, say: checked paths can still fail to write.
    raise UserError(f"cannot write {e.filename or FLAGS.output}: {e.strerror or e}") from None
  print(json.dumps({k: doc[k] for k in ("mean", "eigenvalues", "eigenvectors", "num_images")}))


if __name__ == "__main__":
  define_flags()
  run_cli(main)
