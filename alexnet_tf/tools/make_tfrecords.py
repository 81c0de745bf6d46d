r"""Converts a folder of images to 256-pixel TFRecord shards (the paper's one-off pre-processing).

  python -m alexnet_tf.tools.make_tfrecords SRC DST [--num_shards=N] [--size=256] [--quality=95]

SRC is a folder dataset (SRC/<split>/<label>/*.jpg|png, splits `train` and `validation`, which
may be named `val` or `test`). Every image is decoded, converted to RGB, resized so its shorter
side is --size (never upscaled; the aspect ratio is kept, so the training pipeline still takes
the central square and random crops) and re-encoded as JPEG. DST (which must not hold
TFRecords yet) receives

  DST/train-00000-of-00008.tfrecord ...      tf.train.Example: image/encoded (JPEG bytes),
  DST/validation-00000-of-00001.tfrecord       image/class/label (int64, 0-based), image/class/text,
                                               image/filename, image/height, image/width,
                                               image/format ("JPEG")
  DST/labels.txt                             class names, line i = label i
  DST/metadata.json                          records per file, class names (read by
                                             `--dataset=tfrecord --data_dir=DST`)

The records of a split are shuffled once (seed 0) before sharding, so every shard mixes all
classes. Corrupt or non-image files are skipped and listed. The files are written under hidden
names (`.NAME.partial`) and take their names only when every split is written, metadata.json
last: an interrupted run (Ctrl-C, a full disk) leaves nothing that reads as a smaller dataset, and
the next run removes a killed run's `.partial` files. Use with
`train.py --dataset=tfrecord --data_dir=DST`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from typing import Callable, Sequence

from absl import flags

from alexnet_tf.errors import UserError, check_writable_dir, log_line, run_cli
from alexnet_tf.flags import expand_path

FLAGS = flags.FLAGS

# Files being written; renamed to their names when the conversion is complete.
PARTIAL_SUFFIX = ".partial"
# A progress line every this many images (ImageNet's train split has 1.28 million).
PROGRESS_EVERY = 10_000


def define_flags() -> None:
  """Defines the tool's flags (only when run as a program, so importing it defines nothing)."""
  flags.DEFINE_integer("num_shards", 0, "Shards per split; 0: one per ~1000 images (at least 1).")
  flags.DEFINE_integer("size", 256, "Shorter side after resizing (images are never upscaled).")
  flags.DEFINE_integer("quality", 95, "JPEG quality of the re-encoded images.")


def _bytes_feature(value: bytes):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _resize_fn(size: int, quality: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_tf import input_pipeline, preprocessing  # pylint: disable=g-import-not-at-top

  def fn(index, path):
    data = tf.io.read_file(path)
    # What training would skip is skipped here too (a palette BMP that TF decodes to grey).
    with tf.control_dependencies([tf.debugging.Assert(input_pipeline.is_valid_image(data),
                                                      ["not a readable image:", path])]):
      image = preprocessing.decode_rgb(data)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    scale = tf.minimum(1.0, float(size) / tf.cast(tf.minimum(h, w), tf.float32))
    new_h = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    encoded = tf.io.encode_jpeg(resized, quality=quality, chroma_downsampling=quality < 90)
    return index, encoded, new_h, new_w

  return fn


def convert(src: str, dst: str, num_shards: int = 0, size: int = 256, quality: int = 95,
            log: Callable[[str], None] = log_line) -> dict:
  """Converts folder dataset SRC to TFRecord shards in DST; returns the metadata written.

  Raises:
    UserError: SRC is not a folder dataset (see `alexnet_tf.datasets.load_folder`), DST already
      holds TFRecords, bad options, a write failed (DST then holds none of this run's files).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_tf import datasets  # pylint: disable=g-import-not-at-top

  src, dst = expand_path(src), expand_path(dst)
  if size < 1 or not 1 <= quality <= 100 or num_shards < 0:
    raise UserError("--size must be >= 1, --quality in 1..100, --num_shards >= 0")
  if not tf.io.gfile.isdir(os.path.expanduser(src)):
    raise UserError(f"SRC={src} is not a folder (expected SRC/<split>/<label>/*.jpg)")
  check_writable_dir("DST", dst)
  # Shards of an earlier run with another shard count would stay beside the new ones, and
  # `--dataset=tfrecord --data_dir=DST` would read both.
  earlier = sorted(tf.io.gfile.glob(os.path.join(dst, "*.tfrecord")))
  if earlier:
    raise UserError(f"DST={dst} already holds TFRecords ({os.path.basename(earlier[0])}, ...): "
                    "remove them or choose an empty folder")
  splits = {}
  for split in datasets.SPLITS:
    try:
      splits[split] = datasets.load_folder(src, split)
    except UserError as e:
      if "no folder for split" not in str(e):
        raise
  if not splits:
    raise UserError(f"{src} has no train or validation folder (expected SRC/<split>/<label>/*.jpg)")
  class_names = next(iter(splits.values())).class_names
  broken = [name for name in class_names if "\n" in name or "\r" in name]
  if broken:
    raise UserError(f"the class folder {broken[0]!r} in {src} has a line break in its name, "
                    f"which {datasets.LABELS_FILE} (one name a line) cannot hold; rename it")
  try:
    tf.io.gfile.makedirs(dst)
  except tf.errors.OpError as e:
    raise UserError(f"cannot create DST={dst}: {datasets.op_error_reason(e)}") from None
  for stale in _partial_files(dst):
    tf.io.gfile.remove(stale)  # Left by an interrupted run.
  metadata = {"format": "alexnet_tf.tfrecord.v1", "size": size, "class_names": class_names,
              "num_classes": len(class_names), "splits": {}, "files": {}, "skipped": {}}
  # Everything is written under hidden names and renamed when all of it is done: the shards of
  # an interrupted run (Ctrl-C, a full disk) would otherwise read as a smaller dataset.
  names = []
  try:
    for split, source in splits.items():
      names += _write_split(split, source, src, dst, class_names, num_shards,
                            _resize_fn(size, quality), metadata, log)
    _write_text(_partial(dst, datasets.LABELS_FILE), "\n".join(class_names) + "\n")
    _write_text(_partial(dst, datasets.METADATA_FILE), json.dumps(metadata, indent=1))
  except BaseException as e:
    for path in _partial_files(dst):
      tf.io.gfile.remove(path)
    if isinstance(e, tf.errors.OpError):
      raise UserError(f"cannot write the TFRecords in DST={dst}: "
                      f"{datasets.op_error_reason(e)} (nothing was kept)") from None
    raise
  # metadata.json last: with it, `--dataset=tfrecord` reads only the files it lists.
  for name in names + [datasets.LABELS_FILE, datasets.METADATA_FILE]:
    tf.io.gfile.rename(_partial(dst, name), os.path.join(dst, name), overwrite=True)
  return metadata


def _partial(dst: str, name: str) -> str:
  return os.path.join(dst, "." + name + PARTIAL_SUFFIX)


def _partial_files(dst: str) -> list[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_tf import datasets  # pylint: disable=g-import-not-at-top
  return [path for name in ("*.tfrecord", datasets.LABELS_FILE, datasets.METADATA_FILE)
          for path in tf.io.gfile.glob(_partial(dst, name))]


def _write_text(path: str, text: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def _write_split(split: str, source, src: str, dst: str, class_names: list[str],
                 num_shards: int, fn, metadata: dict, log: Callable[[str], None]) -> list[str]:
  """Writes one split's shards under their `_partial` names; returns the shards' names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  order = list(range(source.num_examples))
  random.Random(0).shuffle(order)
  files = [source.files[k] for k in order]
  labels = [source.labels[k] for k in order]
  shards = num_shards or max(1, math.ceil(len(files) / 1000))
  shards = min(shards, len(files))
  names = [f"{split}-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
  counts = [0] * shards
  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  done = set()
  with contextlib.ExitStack() as stack:
    writers = [stack.enter_context(tf.io.TFRecordWriter(_partial(dst, n))) for n in names]
    for index, encoded, h, w in ds.as_numpy_iterator():
      index = int(index)
      done.add(index)
      shard = index * shards // len(files)
      rel = os.path.relpath(files[index], src)
      example = tf.train.Example(features=tf.train.Features(feature={
          "image/encoded": _bytes_feature(encoded),
          "image/format": _bytes_feature(b"JPEG"),
          "image/class/label": _int_feature(labels[index]),
          "image/class/text": _bytes_feature(class_names[labels[index]].encode()),
          "image/filename": _bytes_feature(rel.encode()),
          "image/height": _int_feature(h),
          "image/width": _int_feature(w),
      }))
      writers[shard].write(example.SerializeToString())
      counts[shard] += 1
      if len(done) % PROGRESS_EVERY == 0:
        log(f"{split}: {len(done)} of {len(files)} images converted")
  skipped = sorted(os.path.relpath(files[k], src) for k in range(len(files)) if k not in done)
  for skip in skipped:
    log(f"skipped corrupt or unreadable image: {skip}")
  metadata["splits"][split] = {"num_examples": sum(counts), "num_shards": shards}
  metadata["files"].update(dict(zip(names, counts)))
  metadata["skipped"][split] = skipped
  log(f"{split}: {sum(counts)} images in {shards} shard(s), {len(skipped)} skipped")
  return names


def main(argv: Sequence[str]) -> None:
  if len(argv) != 3:
    raise UserError("usage: python -m alexnet_tf.tools.make_tfrecords SRC DST [--num_shards=N]")
  convert(argv[1], argv[2], FLAGS.num_shards, FLAGS.size, FLAGS.quality)


if __name__ == "__main__":
  define_flags()
  run_cli(main)
