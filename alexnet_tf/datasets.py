"""Dataset sources: a name + split → encoded image bytes and labels, sharded for an input context.

`load_source(dataset, split, data_dir, manual_dir)` returns a `DatasetSource` whose
`records(input_context)` yields dicts {"image": tf.string (encoded JPEG/PNG/...),
"label": tf.int64 scalar, "filename": tf.string, "height", "width": tf.int64 scalars (the stored
image size, 0 where the source does not store it: only TFRecords do)} — the same element spec
for every kind of source. Decoding is left to `alexnet_tf.preprocessing` (one fused decode +
crop).

Kinds of `dataset`:
- Any TFDS name (`imagenet2012`, `imagenette`, `tf_flowers`, ...): `data_dir` is the TFDS data
  dir, `manual_dir` the folder of manually downloaded archives (imagenet2012 needs
  `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` there; default
  DATA_DIR/downloads/manual). The dataset is prepared on first use. Images are read as bytes
  (`tfds.decode.SkipDecoding`). Split `validation` falls back to TFDS's `test` split when there
  is no `validation`; a dataset with only a `train` split (tf_flowers) is split 90%/10%
  (`train[:90%]` / `train[90%:]`). "filename" is the dataset's `file_name` feature when it has
  one, else the TFDS record id. The image feature must be a `tfds.features.Image` of uint8 or
  uint16 (encoded JPEG/PNG) and the label a `ClassLabel`; other datasets are refused when they
  load (raw pixel tensors, float images, labels without a class count).
- `folder`: `data_dir=ROOT` with ROOT/<split>/<label>/*.{jpg,jpeg,png,bmp,gif,webp} (the TFDS
  ImageFolder layout). Split `validation` also accepts folders named `val` or `test`. Class names
  are the sorted folder names of ROOT/train (of the split itself when there is no train folder);
  label = index in that list. Files with other extensions, and sub-folders, are ignored, with
  a warning that counts them and names a few; hidden files (.DS_Store) silently.
- `tfrecord`: `data_dir` is a directory or a glob of TFRecord files of `tf.train.Example`s with
  `image/encoded` (bytes) and `image/class/label` (int64, 0-based), optionally `image/filename`
  and `image/height`, `image/width` (the ImageNet convention of the TF Model Garden / TF-Slim;
  the training pipeline decodes 256-pixel images, by their stored size, without a resize). For
  a directory, the files of a split are DIR/<split>-* or DIR/<split>.* or DIR/<split>/*
  (validation: also `val`, `test`). A glob may contain `{split}`, which is replaced by the split
  name; a glob without it is used for any split. Class names come from an optional `labels.txt`
  next to the files (one name per line, line i = label i; without it, as many classes as
  the split's highest label + 1, `classes_from_labels`: TF-Slim's ImageNet shards, labelled
  1..1000 with 0 as background, give 1001 classes, as in the Model Garden; a validation split
  may then lack the last classes, but not have more than the training split). Record counts
  come from `metadata.json` next to the files (written by `python -m
  alexnet_tf.tools.make_tfrecords`) or, without it (the Model Garden's shards), from one pass
  over the labels, done once and cached in $ALEXNET_TF_CACHE/tfrecord_counts (default
  ~/.cache/alexnet_tf), keyed by the files' paths, sizes and modification times. A directory's
  files of the split that its `metadata.json` does not list are an error (not read silently; a
  glob reads them). Files of another convention (TFDS's own, with `image` and `label`) are
  refused when they load, by their first record; a record that is not an image record found
  later (records are parsed in batches, so it cannot be skipped like a corrupt image) stops the
  run, named FILE:K. Files may be uncompressed or GZIP or ZLIB compressed (TFRecordOptions),
  all of a split the same way: the first file with a record tells which.
- `shapes`: the built-in generated dataset (`alexnet_tf.shapes`); `data_dir` is its cache folder
  (default $ALEXNET_TF_CACHE/shapes or ~/.cache/alexnet_tf/shapes), generated on first use
  (3000 train / 600 validation images, 6 classes); a complete shapes dataset of another size
  already in data_dir (`shapes.generate(dir, num_train, num_validation)`) is used as is.

Sharding: `records(input_context)` returns only this input pipeline's part, and the parts of all
pipelines cover every record exactly once. Folder and in-memory sources shard the list of files;
TFRecord sources shard by file when there are at least as many files as pipelines, else by
record; TFDS sources use `tfds.even_splits`. All of them work with a single file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import sys
import tarfile
import zipfile
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from alexnet_tf import shapes as _shapes
from alexnet_tf.errors import UserError
from alexnet_tf.files import write_whole

SPLITS = ("train", "validation")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "test")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
BUILTIN = ("folder", "tfrecord", "shapes")

_AUTOTUNE = tf.data.AUTOTUNE
_PARSE_BATCH = 64
_log = logging.getLogger(__name__)


def _element_spec_dict(image, label, filename, height=0, width=0) -> dict:
  return {"image": image, "label": tf.cast(label, tf.int64), "filename": filename,
          "height": tf.cast(height, tf.int64), "width": tf.cast(width, tf.int64)}


@dataclasses.dataclass
class DatasetSource:
  """One split of a dataset: metadata known up front, plus `records()`.

  Attributes:
    name: the --dataset value (`folder`, `tfrecord`, `shapes`, or the TFDS name).
    split: `train` or `validation` (TFDS sources may also use TFDS split syntax).
    num_examples: exact number of records of the split (all shards together).
    num_classes: number of classes.
    class_names: class names in label order, or None when unknown.
    records_fn: for custom sources, a function input_context → dataset of records; the
      built-in kinds are subclasses that override `records` instead.
    classes_from_labels: num_classes is this split's highest label + 1 (TFRecords without a
      class list), so the dataset may have more classes: a validation split may lack the last.
  """
  name: str
  split: str
  num_examples: int
  num_classes: int
  class_names: list[str] | None
  records_fn: Callable[[tf.distribute.InputContext | None], tf.data.Dataset] | None = (
      dataclasses.field(default=None, repr=False, compare=False))
  classes_from_labels: bool = dataclasses.field(default=False, kw_only=True)

  # Whether `records(shuffle=True)` already shuffles all records (not only file order), so the
  # training pipeline needs no shuffle buffer.
  shuffles_records = False
  # Whether `records()` reads one file per record: a file that cannot be read (deleted, a
  # broken link, no permission) then fails only its record, which the pipelines can skip.
  reads_file_per_record = False

  def records(self, input_context: tf.distribute.InputContext | None = None, *,
              shuffle: bool = False, seed: int | None = None) -> tf.data.Dataset:
    """Records {"image", "label", "filename", "height", "width"} of this input pipeline's shard.

    "image" is the encoded image (tf.string), "label" int64, "filename" its file name (or
    "file:record" / the TFDS id), "height" and "width" (int64) the image size where the source
    stores it (TFRecords with image/height and image/width), else 0.

    Args:
      input_context: from `distribute_datasets_from_function`; None = all records.
      shuffle: shuffle what the source can shuffle cheaply (the list of files, or of all
        records for folder sources), reshuffled on each iteration (epoch). The training
        pipeline adds a shuffle buffer on top where needed.
      seed: seed of that shuffle (None: random).
    """
    if self.records_fn is None:
      raise NotImplementedError("DatasetSource needs records_fn or a subclass")
    del shuffle, seed
    return self.records_fn(input_context)

  def shard_num_examples(self, input_context: tf.distribute.InputContext | None = None) -> int:
    """Number of records in this input pipeline's shard (an upper bound for TFRecord sources
    sharded by file with uneven files)."""
    if input_context is None or input_context.num_input_pipelines == 1:
      return self.num_examples
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    return len(range(i, self.num_examples, n))


def _shard(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


@dataclasses.dataclass
class FileListSource(DatasetSource):
  """Records read from a list of image files (folder, shapes).

  `unreadable` are those of `files` known, when listed, not to be readable (broken links):
  their records come with an empty "image", which the pipelines skip and count as corrupt
  like any other bad file (a read would fail the record before it could be counted).
  """
  files: list[str] = dataclasses.field(default_factory=list, repr=False)
  labels: list[int] = dataclasses.field(default_factory=list, repr=False)
  unreadable: list[str] = dataclasses.field(default_factory=list, repr=False)

  shuffles_records = True
  reads_file_per_record = True

  def records(self, input_context=None, *, shuffle=False, seed=None):
    n, i = _shard(input_context)
    columns = (tf.constant(self.files, tf.string), tf.constant(self.labels, tf.int64))
    if self.unreadable:
      unreadable = set(self.unreadable)
      columns += (tf.constant([f not in unreadable for f in self.files]),)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if n > 1:
      ds = ds.shard(n, i)
    if shuffle:
      ds = ds.shuffle(len(self.files) // n + 1, seed=seed, reshuffle_each_iteration=True)
    return ds.map(_read_listed_file, num_parallel_calls=_AUTOTUNE, deterministic=True)


def _read_listed_file(filename: tf.Tensor, label: tf.Tensor, readable: tf.Tensor | None = None
                      ) -> dict:
  if readable is None:
    image = tf.io.read_file(filename)
  else:
    image = tf.cond(readable, lambda: tf.io.read_file(filename), lambda: tf.constant(b""))
  return _element_spec_dict(image, label, filename)


@dataclasses.dataclass
class InMemorySource(DatasetSource):
  """Records from encoded images held in memory (tests, small custom data)."""
  images: list[bytes] = dataclasses.field(default_factory=list, repr=False)
  labels: list[int] = dataclasses.field(default_factory=list, repr=False)

  shuffles_records = True

  def records(self, input_context=None, *, shuffle=False, seed=None):
    n, i = _shard(input_context)
    names = [f"{self.name}:{k}" for k in range(len(self.images))]
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(self.images, tf.string), tf.constant(self.labels, tf.int64),
         tf.constant(names, tf.string)))
    if n > 1:
      ds = ds.shard(n, i)
    if shuffle:
      ds = ds.shuffle(len(self.images) // n + 1, seed=seed, reshuffle_each_iteration=True)
    return ds.map(_element_spec_dict)


def in_memory_source(images: Sequence[bytes], labels: Sequence[int],
                     class_names: Sequence[str] | None = None, *, name: str = "memory",
                     split: str = "train", num_classes: int | None = None) -> InMemorySource:
  """A source over encoded images in memory (for tests and small experiments)."""
  if len(images) != len(labels):
    raise UserError(f"{len(images)} images but {len(labels)} labels")
  if not images:
    raise UserError(f"dataset {name} split {split} is empty")
  if num_classes is None:
    num_classes = len(class_names) if class_names else int(max(labels)) + 1
  return InMemorySource(name=name, split=split, num_examples=len(images),
                        num_classes=num_classes,
                        class_names=list(class_names) if class_names else None,
                        images=list(images), labels=[int(y) for y in labels])


@dataclasses.dataclass
class TFRecordSource(DatasetSource):
  """Records from TFRecord files of tf.train.Example (ImageNet convention)."""
  files: list[str] = dataclasses.field(default_factory=list, repr=False)
  file_counts: list[int] | None = dataclasses.field(default=None, repr=False)
  # TFRecordDataset's compression_type of the files: "" (none), "GZIP" or "ZLIB".
  compression: str = ""

  def _by_file(self, n: int) -> bool:
    return len(self.files) >= n

  def records(self, input_context=None, *, shuffle=False, seed=None):
    n, i = _shard(input_context)
    by_file = n > 1 and self._by_file(n)
    files = tf.data.Dataset.from_tensor_slices(tf.constant(self.files, tf.string))
    if by_file:
      files = files.shard(n, i)
    # Record sharding needs the same record order in every pipeline: shuffle files only with
    # a fixed seed then.
    if shuffle and (by_file or n == 1 or seed is not None):
      files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
    deterministic = not (shuffle and n == 1) or (n > 1 and not by_file)

    def _read(path):
      # (file, record number, record): names "file:k" for records without image/filename.
      # Dataset.range, not Dataset.counter, which runs a scan function per record.
      return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(path).repeat(),
                                  tf.data.Dataset.range(sys.maxsize),
                                  tf.data.TFRecordDataset(path, self.compression)))

    ds = files.interleave(_read, cycle_length=min(len(self.files), 16),
                          num_parallel_calls=_AUTOTUNE, deterministic=deterministic)
    if n > 1 and not by_file:
      ds = ds.shard(n, i)
    # Parsing a batch of Examples costs a fraction of parsing them one by one (per-record ops
    # cost as much as a small JPEG's decode in tf.data; benchmarks/RESULTS.md).
    return ds.batch(_PARSE_BATCH).map(_parse_examples).unbatch()

  def first_damaged_file(self) -> str | None:
    """The first file that cannot be read to its end (a truncated or corrupted shard), if any.

    Reads every file once: for the error path, not for every run.
    """
    for path in self.files:
      try:
        tf.data.TFRecordDataset(path, self.compression).reduce(tf.constant(0, tf.int64),
                                                               lambda n, _: n + 1)
      except tf.errors.DataLossError:
        return path
    return None

  def first_malformed_record(self) -> tuple[str, str] | None:
    """The first record that is not an image record, as ("FILE:K", why), if any.

    Reads every record once: for the error path, not for every run.
    """
    return first_malformed_record(self.files, self.compression)

  def shard_num_examples(self, input_context=None):
    n, i = _shard(input_context)
    if n > 1 and self._by_file(n) and self.file_counts is not None:
      return sum(self.file_counts[i::n])
    return super().shard_num_examples(input_context)


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    # The stored image size (make_tfrecords and the Model Garden's converter write it); 0 when
    # absent. The training pipeline reads it to send images already at the fixed resolution
    # down its decode path without a resize.
    "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


# What parsing a record that is not an image record raises. TF quotes a record that is not a
# tf.train.Example in its message, and Python cannot decode a message that is not UTF-8.
PARSE_ERRORS = (tf.errors.InvalidArgumentError, UnicodeDecodeError)


def parse_error_reason(error: Exception) -> str:
  """TF's reason a tf.train.Example did not parse (one of `PARSE_ERRORS`), without its graph
  context ("Key: image/encoded, Data types don't match. ..." or "Feature: image/encoded (...) is
  required but could not be found.")."""
  if isinstance(error, UnicodeDecodeError):
    return "not a tf.train.Example"
  found = re.search(r"(?:Key|Feature): .*", error.message)
  reason = found.group(0) if found else error.message.strip().splitlines()[0]
  return " ".join(re.sub(r"Index: \d+\.|\[Op:.*", "", reason).split())


def first_malformed_record(files: Sequence[str], compression: str = ""
                           ) -> tuple[str, str] | None:
  """The first record of `files` that is not an image record (`_FEATURES`), as ("FILE:K", why),
  if any. Reads every record once: for the error path."""
  for path in files:
    start = 0
    try:
      for batch in tf.data.TFRecordDataset(path, compression).batch(1024):
        try:
          tf.io.parse_example(batch, _FEATURES)
        except PARSE_ERRORS:
          for k, record in enumerate(batch):
            try:
              tf.io.parse_example(record[None], _FEATURES)
            except PARSE_ERRORS as e:
              return f"{path}:{start + k}", parse_error_reason(e)
        start += int(batch.shape[0])
    except tf.errors.DataLossError:  # A damaged shard: `first_damaged_file` names it.
      continue
  return None


def malformed_record_error(name: str, reason: str) -> UserError:
  """The one-sentence error for TFRecord record `name` ("FILE:K") that is not an image record."""
  return UserError(f"TFRecord record {name} is not an image record ({reason}): each needs "
                   "image/encoded (bytes) and image/class/label (int64); write it again or "
                   "remove its file")


def op_error_reason(error: tf.errors.OpError) -> str:
  """TF's message without its graph context ("{{function_node ...}}", "[Op:...]")."""
  line = error.message.strip().splitlines()[0] if error.message.strip() else ""
  return " ".join(re.sub(r"\{\{.*?\}\}|\[Op:.*", "", line).split()) or type(error).__name__


_COMPRESSIONS = {"": "uncompressed", "GZIP": "GZIP", "ZLIB": "ZLIB"}


def damaged_file_error(path: str, compression: str, reason: str) -> UserError:
  """The one-sentence error for TFRecord file `path`, which does not read to its end with the
  split's `compression`: a file of another compression (one split's files share the first
  file's), or a truncated or corrupted file."""
  for other in _COMPRESSIONS:
    if other != compression:
      try:
        if list(tf.data.TFRecordDataset(path, other).take(1)):
          return UserError(f"TFRecord file {path} is {_COMPRESSIONS[other]}, but the split's "
                           f"first file is {_COMPRESSIONS[compression]}: write all files of a "
                           "split with one compression")
      except tf.errors.OpError:
        pass
  return UserError(f"TFRecord file {path} is damaged ({reason}); write it again (e.g. with "
                   "python -m alexnet_tf.tools.make_tfrecords) or remove it")


def _first_record(files: Sequence[str]) -> tuple[str, bytes | None, str]:
  """(file, its first record, compression) of the first file of `files` that has a record
  (None where none has), and the compression ("", "GZIP", "ZLIB") it reads with."""
  for path in files:
    errors = []
    for compression in ("", "GZIP", "ZLIB"):  # Uncompressed first: the common case.
      try:
        records = [r.numpy() for r in tf.data.TFRecordDataset(path, compression).take(1)]
      except tf.errors.DataLossError as e:  # Not in this format.
        errors.append(e)
        continue
      except tf.errors.OpError as e:  # Not readable at all (permissions, say).
        raise UserError(f"cannot read TFRecord file {path}: {op_error_reason(e)}") from None
      if records:
        return path, records[0], compression
      break  # An empty file; the next one tells.
    if len(errors) == 3:
      raise UserError(f"cannot read TFRecord file {path}: {op_error_reason(errors[0])} (read "
                      "uncompressed, and as GZIP and ZLIB)")
  return files[0], None, ""


def _check_first_record(files: Sequence[str]) -> str:
  """Refuses TFRecords of another convention (TFDS's own files, say) before anything reads them,
  and returns the files' compression: one record, the first, is enough to tell."""
  path, record, compression = _first_record(files)
  if record is None:
    return compression
  try:  # protobuf first: TF's parser would log the whole record were it not an Example.
    keys = sorted(tf.train.Example.FromString(record).features.feature)
  except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
    keys, reason = None, "it does not parse as one"
  else:
    try:
      tf.io.parse_example(tf.constant([record]), _FEATURES)
      return compression
    except tf.errors.InvalidArgumentError as e:
      reason = parse_error_reason(e)
  has = ("its first record is not a tf.train.Example" if keys is None
         else "its first record has " + (", ".join(keys) or "no features"))
  hint = ("; TFDS's own files are read with --dataset=NAME --data_dir=TFDS_DATA_DIR"
          if keys and {"image", "label"} <= set(keys) else "")
  raise UserError(f"TFRecord file {path} is not of image records: each needs image/encoded "
                  f"(bytes) and image/class/label (int64), but {has} ({reason}){hint}")


def _parse_examples(paths: tf.Tensor, numbers: tf.Tensor, records: tf.Tensor) -> dict:
  ex = tf.io.parse_example(records, _FEATURES)
  where = tf.strings.join([paths, tf.strings.as_string(numbers)], separator=":")
  name = tf.where(tf.strings.length(ex["image/filename"]) > 0, ex["image/filename"], where)
  return _element_spec_dict(ex["image/encoded"], ex["image/class/label"], name,
                            ex["image/height"], ex["image/width"])


@dataclasses.dataclass
class TFDSSource(DatasetSource):
  """Records of a prepared TFDS dataset, images as encoded bytes."""
  builder: object = dataclasses.field(default=None, repr=False)
  tfds_split: str = ""
  image_key: str = "image"
  label_key: str = "label"

  def records(self, input_context=None, *, shuffle=False, seed=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    n, i = _shard(input_context)
    split = self.tfds_split
    if n > 1:
      split = tfds.even_splits(split, n)[i]
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                  shuffle_reshuffle_each_iteration=True)
    ds = self.builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config,
                                 decoders={self.image_key: tfds.decode.SkipDecoding()})
    has_name = "file_name" in self.builder.info.features

    def _to_record(ex):
      name = ex["file_name"] if has_name else ex["tfds_id"]
      return _element_spec_dict(ex[self.image_key], ex[self.label_key], name)

    return ds.map(_to_record, num_parallel_calls=_AUTOTUNE, deterministic=not shuffle)

  def shard_num_examples(self, input_context=None):
    n, i = _shard(input_context)
    if n == 1:
      return self.num_examples
    # tfds.even_splits gives the first (N % n) shards one extra example.
    return self.num_examples // n + (1 if i < self.num_examples % n else 0)


def load_source(dataset: str, split: str, data_dir: str | None = None,
                manual_dir: str | None = None) -> DatasetSource:
  """The source for --dataset / --data_dir / --manual_dir and a split (see the module docstring).

  Raises:
    UserError: unknown dataset, missing folder or files, empty split, a label folder without
      images, missing imagenet2012 archives.
  """
  if not dataset:
    raise UserError("--dataset is empty: use shapes, folder, tfrecord or a TFDS dataset name")
  if dataset == "shapes":
    root = _shapes.ensure(data_dir or None)
    source = load_folder(root, split)
    source.name = "shapes"
    return source
  if dataset == "folder":
    if not data_dir:
      raise UserError("--dataset=folder needs --data_dir=ROOT with ROOT/<split>/<label>/*.jpg")
    return load_folder(data_dir, split)
  if dataset == "tfrecord":
    if not data_dir:
      raise UserError("--dataset=tfrecord needs --data_dir (a directory or a glob of TFRecords)")
    return load_tfrecord(data_dir, split)
  return load_tfds(dataset, split, data_dir, manual_dir)


def _find_split_dir(root: str, split: str) -> str:
  names = SPLIT_ALIASES.get(split, (split,))
  for name in names:
    path = os.path.join(root, name)
    if tf.io.gfile.isdir(path):
      return path
  hint, folder = "", os.path.normpath(root)
  if os.path.basename(folder) in ("train", *SPLIT_ALIASES["validation"]):
    hint = (" (--data_dir is a split folder itself; pass the folder above it, "
            f"{os.path.dirname(folder)})")
  raise UserError(f"no folder for split {split!r} in --data_dir={root}: expected "
                  + " or ".join(os.path.join(root, n) for n in names) + hint)


def _list_classes(split_dir: str) -> list[str]:
  return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(split_dir)
                if tf.io.gfile.isdir(os.path.join(split_dir, d.rstrip("/")))
                and not d.startswith("."))


def load_folder(root: str, split: str) -> FileListSource:
  """A `folder` source: ROOT/<split>/<label>/*.{jpg,jpeg,png,bmp,gif,webp}."""
  root = os.path.expanduser(root)
  if not tf.io.gfile.isdir(root):
    raise UserError(f"--data_dir={root} is not a folder (expected ROOT/<split>/<label>/*.jpg)")
  split_dir = _find_split_dir(root, split)
  present = _list_classes(split_dir)
  train_dir = os.path.join(root, "train")
  class_names = _list_classes(train_dir) if tf.io.gfile.isdir(train_dir) else present
  if not present:
    flat = [f for f in tf.io.gfile.listdir(split_dir) if f.lower().endswith(IMAGE_EXTENSIONS)]
    raise UserError(f"split {split!r} is empty: {split_dir} has no label folders "
                    "(expected <label>/*.jpg)" + (
                        f"; its {len(flat)} images lie directly in it, as ImageNet's validation "
                        "tar unpacks: move each into the folder of its label" if flat else ""))
  unknown = sorted(set(present) - set(class_names))
  if unknown:
    raise UserError(f"label folders {unknown[:5]} of {split_dir} are not in {train_dir}")
  files, labels, ignored, unreadable = [], [], [], []
  for label, name in enumerate(class_names):
    if name not in present:
      continue
    class_dir = os.path.join(split_dir, name)
    entries, broken, folders = _list_files(class_dir)
    names = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS) and f not in folders]
    if not names:
      raise UserError(f"label folder {class_dir} has no images ("
                      + ", ".join("*" + e for e in IMAGE_EXTENSIONS) + ")")
    files.extend(os.path.join(class_dir, f) for f in names)
    labels.extend([label] * len(names))
    unreadable.extend(os.path.join(class_dir, f) for f in names if f in broken)
    ignored.extend(os.path.join(name, f) + ("/" if f in folders else "")
                   for f in sorted(set(entries) - set(names)))
  if ignored:  # A .tif, a .heic or a sub-folder is not read, and the user may not expect that.
    shown = ignored[:3]
    _log.warning("Ignored %d file(s) in %s that are not images (%s; sub-folders are not read): "
                 "%s", len(ignored), split_dir, ", ".join("*" + e for e in IMAGE_EXTENSIONS),
                 ", ".join(shown) + (", ..." if len(ignored) > 3 else ""))
  if unreadable:
    _log.warning("%d image file(s) in %s cannot be read (broken links); they are skipped and "
                 "counted as corrupt: %s", len(unreadable), split_dir,
                 ", ".join(os.path.relpath(f, split_dir) for f in unreadable[:3])
                 + (", ..." if len(unreadable) > 3 else ""))
  return FileListSource(name="folder", split=split, num_examples=len(files),
                        num_classes=len(class_names), class_names=class_names,
                        files=files, labels=labels, unreadable=unreadable)


def _list_files(folder: str) -> tuple[list[str], set[str], set[str]]:
  """The sorted names in `folder` (hidden ones left out), those of them that are broken
  links, and those that are folders. On a local disk the listing says which entries are
  links and folders, so only links cost a stat; elsewhere (gs://, ...) there are no links,
  and gfile marks folders with a trailing '/'."""
  if "://" in folder:
    names = [f for f in tf.io.gfile.listdir(folder) if not f.startswith(".")]
    return (sorted(f.rstrip("/") for f in names), set(),
            {f.rstrip("/") for f in names if f.endswith("/")})
  try:
    with os.scandir(folder) as entries:
      entries = [e for e in entries if not e.name.startswith(".")]
  except OSError as e:  # No permission, say.
    raise UserError(f"cannot list the label folder {folder}: {e.strerror}") from None
  broken = {e.name for e in entries if e.is_symlink() and not os.path.exists(e.path)}
  folders = {e.name for e in entries if e.is_dir()}
  return sorted(e.name for e in entries), broken, folders


def _tfrecord_files(data_dir: str, split: str) -> list[str]:
  data_dir = os.path.expanduser(data_dir)
  if tf.io.gfile.isdir(data_dir):
    # The folder's name is not a pattern: "imagenet [v2]" would otherwise match nothing.
    escaped = glob.escape(data_dir)
    for name in SPLIT_ALIASES.get(split, (split,)):
      for pattern in (f"{name}-*", f"{name}.*", os.path.join(name, "*")):
        files = sorted(f for f in tf.io.gfile.glob(os.path.join(escaped, pattern))
                       if not tf.io.gfile.isdir(f))
        if files:
          return files
    raise UserError(f"no TFRecord files for split {split!r} in --data_dir={data_dir} "
                    f"(expected {split}-* files, e.g. {split}-00000-of-00004.tfrecord)")
  pattern = data_dir.replace("{split}", split)
  files = sorted(tf.io.gfile.glob(pattern))
  if not files and split == "validation" and "{split}" in data_dir:
    for alias in SPLIT_ALIASES["validation"][1:]:
      files = sorted(tf.io.gfile.glob(data_dir.replace("{split}", alias)))
      if files:
        break
  if not files and tf.io.gfile.exists(pattern):
    files = [pattern]  # One file whose path has a glob character ('[', '*', '?').
  if not files:
    hint = (" ('[' starts a set of characters in a glob; write '[[]' for a literal '[')"
            if "[" in pattern else "")
    raise UserError(f"--data_dir={data_dir} matches no TFRecord files for split {split!r}"
                    + hint)
  return files


def _read_labels_file(directory: str) -> list[str] | None:
  path = os.path.join(directory, LABELS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    names = [line.strip() for line in f.read().splitlines()]
  while names and not names[-1]:
    names.pop()
  if not names or any(not n for n in names):
    raise UserError(f"{path} must list one class name per line (line i = label i)")
  return names


def _labels_file_or_metadata_names(from_file: list[str] | None, from_metadata: list | None,
                                   directory: str) -> list[str] | None:
  """The class names of TFRecords with both a labels.txt and make_tfrecords' metadata.json:
  the metadata's exact names (labels.txt lines are read stripped), unless the two disagree,
  which would label the records wrongly whichever one is right."""
  if not from_metadata:
    return from_file
  names = [str(n) for n in from_metadata]
  if from_file is None or from_file == [n.strip() for n in names]:
    return names
  k = next((i for i, (a, b) in enumerate(zip(from_file, names)) if a != b.strip()),
           min(len(from_file), len(names)))
  def shown(names_: list[str]) -> str:
    return repr(names_[k]) if k < len(names_) else f"no line (it has {len(names_)})"
  raise UserError(f"{directory}/{LABELS_FILE} and {directory}/{METADATA_FILE} disagree on the "
                  f"name of class {k}: {shown(from_file)} against {shown(names)}; fix or "
                  f"remove {LABELS_FILE}")


def _read_metadata(directory: str) -> dict | None:
  path = os.path.join(directory, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None


def _scan_labels(files: list[str], compression: str = "") -> tuple[list[int], int, int]:
  """One pass over the records: (count per file, min label, max label)."""
  counts, lo, hi = [], None, None
  feature = {"image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
  for path in files:
    ds = tf.data.TFRecordDataset(path, compression).batch(1024).map(
        lambda r: tf.io.parse_example(r, feature)["image/class/label"])
    init = (tf.constant(0, tf.int64), tf.constant(2**62, tf.int64), tf.constant(-2**62, tf.int64))
    try:
      n, a, b = ds.reduce(init, lambda s, y: (s[0] + tf.size(y, tf.int64),
                                               tf.minimum(s[1], tf.reduce_min(y)),
                                               tf.maximum(s[2], tf.reduce_max(y))))
    except PARSE_ERRORS as e:  # A label of another type or length, not an Example.
      raise malformed_record_error(*(first_malformed_record([path], compression)
                                     or (path, parse_error_reason(e)))) from None
    except tf.errors.DataLossError as e:
      raise damaged_file_error(path, compression, op_error_reason(e)) from None
    except tf.errors.OpError as e:
      raise UserError(f"cannot read TFRecord file {path}: {op_error_reason(e)}") from None
    counts.append(int(n))
    if int(n):
      lo = int(a) if lo is None else min(lo, int(a))
      hi = int(b) if hi is None else max(hi, int(b))
  return counts, (lo if lo is not None else 0), (hi if hi is not None else -1)


_COUNTS_CACHE_VERSION = 1


def _counts_cache_file(files: list[str]) -> str | None:
  """Where `_scan_labels(files)` is cached, keyed by each file's path, size and modification
  time (None where a file cannot be stat'ed)."""
  try:  # In threads: on a bucket each stat is a request.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      stats = list(pool.map(tf.io.gfile.stat, files))
  except tf.errors.OpError:
    return None
  key = [[f, s.length, s.mtime_nsec] for f, s in zip(files, stats)]
  digest = hashlib.sha256(json.dumps([_COUNTS_CACHE_VERSION, key]).encode()).hexdigest()[:32]
  return os.path.join(_shapes.cache_root(), "tfrecord_counts", digest + ".json")


def _read_counts_cache(path: str, num_files: int) -> tuple[list[int], int, int] | None:
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    counts, lo, hi = cached["counts"], int(cached["min"]), int(cached["max"])
  except (OSError, TypeError, ValueError, KeyError):  # Not cached (yet), or damaged.
    return None
  if len(counts) != num_files or not all(isinstance(n, int) and n >= 0 for n in counts):
    return None
  return counts, lo, hi


def _write_counts_cache(path: str, counts: list[int], lo: int, hi: int) -> None:
  # Whole (another process may read it now), or not at all: a read-only or full cache only
  # means that the next run counts again.
  with contextlib.suppress(OSError):
    write_whole(path, lambda f: json.dump({"counts": counts, "min": lo, "max": hi}, f))


def _scan_labels_cached(files: list[str], compression: str = "") -> tuple[list[int], int, int]:
  """`_scan_labels`, done once per set of files: a pass over ImageNet's TFRecords (~140 GB)
  takes minutes, and train.py would repeat it at every start and resume."""
  path = _counts_cache_file(files)
  cached = _read_counts_cache(path, len(files)) if path else None
  if cached:
    return cached
  _log.info("Counting the records of %d TFRecord file(s) (%s, ...) once: there is no %s beside "
            "them%s", len(files), files[0], METADATA_FILE, f"; cached in {path}" if path else "")
  counts, lo, hi = _scan_labels(files, compression)
  if path:
    _write_counts_cache(path, counts, lo, hi)
  return counts, lo, hi


def load_tfrecord(data_dir: str, split: str) -> TFRecordSource:
  """A `tfrecord` source (see the module docstring for the file layout)."""
  files = _tfrecord_files(data_dir, split)
  compression = _check_first_record(files)
  directory = os.path.dirname(files[0])
  class_names = _read_labels_file(directory)
  meta = _read_metadata(directory)
  counts = None
  num_classes = len(class_names) if class_names else None
  classes_from_labels = False
  if meta:
    per_file = meta.get("files", {})
    unlisted = [f for f in files if os.path.basename(f) not in per_file]
    if unlisted and per_file and tf.io.gfile.isdir(os.path.expanduser(data_dir)):
      raise UserError(f"{unlisted[0]} is not among the files that {directory}/{METADATA_FILE} "
                      "lists (left from an earlier make_tfrecords run?): remove it, or pass "
                      "the files to read as a glob in --data_dir")
    if not unlisted:
      counts = [int(per_file[os.path.basename(f)]) for f in files]
    if num_classes is None and meta.get("num_classes"):
      num_classes = int(meta["num_classes"])
    class_names = _labels_file_or_metadata_names(class_names, meta.get("class_names"), directory)
  if counts is None or num_classes is None:
    scanned, lo, hi = _scan_labels_cached(files, compression)
    counts = counts or scanned
    if lo < 0:
      raise UserError(f"TFRecords {files[0]}...: records without image/class/label or with "
                      "negative labels")
    if num_classes is None:
      num_classes, classes_from_labels = hi + 1, True
    elif hi >= num_classes:
      raise UserError(f"TFRecords {files[0]}...: labels go up to {hi}, but {directory}/"
                      f"{LABELS_FILE} names {num_classes} classes (label i is line i + 1). "
                      "TF-Slim's ImageNet shards count from 1 (0 is background): give them a "
                      "labels.txt of 1001 lines, or none")
  total = sum(counts)
  if total == 0:
    raise UserError(f"split {split!r} is empty: {len(files)} TFRecord files with no records "
                    f"({files[0]}...)")
  return TFRecordSource(name="tfrecord", split=split, num_examples=total,
                        num_classes=num_classes, class_names=class_names, files=files,
                        file_counts=counts, classes_from_labels=classes_from_labels,
                        compression=compression)


def _tfds_split_name(info, split: str) -> str:
  """Maps train/validation to the TFDS split (see the module docstring)."""
  available = list(info.splits.keys())
  if available == ["train"] and split in SPLITS:
    return "train[:90%]" if split == "train" else "train[90%:]"
  if not available or split in available or "[" in split or "+" in split:
    return split  # Unknown metadata (mocked) or TFDS syntax: TFDS validates it.
  if split == "validation":
    for alias in ("val", "test"):
      if alias in available:
        return alias
  raise UserError(f"TFDS dataset {info.name} has no split {split!r} (it has {available})")


def _default_manual_dir(builder) -> str:
  """Where TFDS looks for manually downloaded archives without --manual_dir."""
  root = getattr(builder, "_data_dir_root", None) or os.path.expanduser("~/tensorflow_datasets")
  return os.path.join(str(root), "downloads", "manual")


def _check_not_a_dataset_folder(builder, data_dir: str | None) -> None:
  """UserError when --data_dir is a prepared dataset's own folder, not the folder above it.

  TFDS would prepare the dataset again inside it (ImageNet: hours, or a request for the tars).
  Called only when the dataset is not prepared in data_dir.
  """
  if not data_dir or "://" in data_dir:
    return
  folder = os.path.abspath(os.path.expanduser(data_dir))
  dataset = builder.name
  parts = folder.split(os.sep)
  if dataset not in parts:
    return
  # The layout TFDS writes: DATA_DIR/NAME/[CONFIG/]VERSION/dataset_info.json.
  dataset_dir = os.sep.join(parts[:len(parts) - parts[::-1].index(dataset)])
  configs = [c.name for c in type(builder).BUILDER_CONFIGS]
  for versions_dir in [os.path.join(dataset_dir, c) for c in configs] or [dataset_dir]:
    for version in _prepared_versions(versions_dir):
      info = os.path.join(versions_dir, version, "dataset_info.json")
      try:
        with open(info, encoding="utf-8") as f:
          if json.load(f).get("name") != dataset:
            continue
      except (OSError, ValueError):
        continue
      raise UserError(f"--data_dir={data_dir} is within TFDS's own folder for {dataset} "
                      f"(prepared in {os.path.dirname(info)}), not a TFDS data dir; pass the "
                      f"folder that holds {dataset}/: --data_dir={os.path.dirname(dataset_dir)}")


def _prepared_versions(versions_dir: str) -> list[str]:
  """The sub-folders of DATA_DIR/NAME/[CONFIG] that hold a prepared version (dataset_info.json)."""
  if not os.path.isdir(versions_dir):
    return []
  return sorted(v for v in os.listdir(versions_dir)
                if os.path.isfile(os.path.join(versions_dir, v, "dataset_info.json")))


def _check_imagenet_manual(name: str, builder, manual_dir: str | None) -> None:
  if name.split(":")[0].split("/")[0] != "imagenet2012":
    return
  manual_dir = manual_dir or _default_manual_dir(builder)
  missing = [t for t in IMAGENET_TARS if not tf.io.gfile.exists(os.path.join(manual_dir, t))]
  if missing:
    raise UserError(
        "imagenet2012 must be downloaded by hand: put " + " and ".join(IMAGENET_TARS)
        + f" (from image-net.org) in {manual_dir} (--manual_dir); missing: "
        + ", ".join(missing))


def _prepare(name: str, builder, manual_dir: str | None) -> None:
  """`builder.download_and_prepare()`, its failures worded as UserErrors."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _check_imagenet_manual(name, builder, manual_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:  # TFDS reports missing manual files this way.
    raise UserError(f"cannot prepare TFDS dataset {name}: {e}") from None
  except ValueError as e:  # An older version TFDS can read but no longer generate.
    if "cannot be generated" not in str(e):
      raise  # A custom builder's own bug: its traceback is what its author needs.
    reason = re.sub(r"\.(?=[A-Z])", ". ", str(e).strip().splitlines()[0])  # "generated.Either"
    raise UserError(f"cannot prepare TFDS dataset {name}: {reason}") from None
  except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:  # A broken archive.
    default_manual = _default_manual_dir(builder)
    raise UserError(f"cannot prepare TFDS dataset {name}: an archive could not be read "
                    f"({type(e).__name__}: {e}); check the archives put in "
                    f"{manual_dir or default_manual} (--manual_dir), or delete a broken one "
                    f"TFDS downloaded (in {os.path.dirname(default_manual)}) to fetch it "
                    "again") from None
  except OSError as e:  # No network (requests' errors are OSErrors), a full or read-only disk.
    reason = (str(e).strip().splitlines() or [""])[0][:300]
    raise UserError(f"could not download and prepare TFDS dataset {name} in "
                    f"{builder.data_dir}: {type(e).__name__}: {reason}. Check the network "
                    "and the disk, or prepare it where there is a network "
                    f"(`tfds build {name}`) and pass its folder as --data_dir") from None


def _other_versions_hint(builder) -> str:
  """'; ... pass --dataset=NAME:VERSION' when another version TFDS can load is prepared.

  A TFDS upgrade moves a dataset's default version (imagenet2012: 5.0.0 → 5.1.0), and the one
  prepared before is not used: TFDS asks for the download again (for ImageNet, the tars).
  """
  versions_dir = os.path.dirname(str(builder.data_dir))  # DATA_DIR/NAME/[CONFIG/]VERSION
  if "://" in versions_dir:
    return ""
  loadable = {str(v) for v in builder.versions}
  found = sorted((v for v in _prepared_versions(versions_dir) if v in loadable),
                 key=lambda v: tuple(int(p) for p in v.split(".")))
  if not found:
    return ""
  config = getattr(builder, "builder_config", None)
  base = builder.name + (f"/{config.name}" if config else "")
  return (f"; {base} is prepared in {versions_dir} at version {', '.join(found)}: pass "
          f"--dataset={base}:{found[-1]} to use it")


def load_tfds(name: str, split: str, data_dir: str | None = None,
              manual_dir: str | None = None) -> TFDSSource:
  """A TFDS source, preparing the dataset on first use."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    own = name.lower() if name.lower() in ("shapes", "folder", "tfrecord") else None
    raise UserError(f"unknown --dataset={name}: "
                    + (f"did you mean --dataset={own}?" if own else
                       "use shapes, folder, tfrecord or a TFDS dataset name (see "
                       "tfds.list_builders())")) from None
  except (AssertionError, ValueError) as e:  # A version or config TFDS does not have.
    raise UserError(f"--dataset={name}: {_tfds_name_error(name, e)}") from None
  # The features are known before the data is: a dataset that is not image classification
  # is refused before a download.
  image_key, label_key = _image_and_label_keys(name, builder.info)
  if not _is_prepared(builder):
    _check_not_a_dataset_folder(builder, data_dir)
    try:
      _prepare(name, builder, manual_dir)
    except UserError as e:
      raise UserError(f"{e}{_other_versions_hint(builder)}") from None
  info = builder.info
  features = info.features
  tfds_split = _tfds_split_name(info, split)
  label_feature = features[label_key]
  num_classes = int(label_feature.num_classes)
  class_names = list(label_feature.names) if getattr(label_feature, "names", None) else None
  try:
    num_examples = int(info.splits[tfds_split].num_examples)
  except (KeyError, ValueError):  # Mocked or unprepared metadata: count the records.
    num_examples = int(builder.as_dataset(split=tfds_split, decoders={
        image_key: tfds.decode.SkipDecoding()}).reduce(0, lambda n, _: n + 1))
  if num_examples == 0:
    raise UserError(f"split {split!r} of TFDS dataset {name} is empty")
  return TFDSSource(name=name, split=split, num_examples=num_examples,
                    num_classes=num_classes, class_names=class_names, builder=builder,
                    tfds_split=tfds_split, image_key=image_key, label_key=label_key)


def _image_and_label_keys(name: str, info) -> tuple[str, str]:
  """The image and label feature names (the supervised keys, else "image" and "label");
  UserError unless they are an image and a ClassLabel."""
  keys = info.supervised_keys
  if not keys or len(keys) != 2 or not isinstance(keys[0], str):
    image_key, label_key = "image", "label"
  else:
    image_key, label_key = keys
  features = info.features
  if image_key not in features or label_key not in features:
    raise UserError(f"TFDS dataset {name} is not an image classification dataset "
                    f"(no {image_key!r}/{label_key!r} features)")
  _check_tfds_features(name, features[image_key], image_key, features[label_key], label_key)
  return image_key, label_key


def _tfds_name_error(name: str, error: Exception) -> str:
  """TFDS's reason for refusing NAME[/CONFIG][:VERSION], without its context, in one line."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  message = str(error)
  if message.startswith("Parsing builder name string"):
    return ("not a TFDS name; expected NAME[/CONFIG][:VERSION], e.g. imagenet2012, "
            "imagenet2012:5.1.0 or imagenette/320px-v2")
  # 'Failed to construct dataset "x", builder_kwargs "{...}": REASON'
  reason = re.sub(r'^Failed to construct dataset ".*?", builder_kwargs ".*?": ', "", message,
                  flags=re.S)
  reason = reason.split(" Here are ")[0].strip().splitlines()[0]  # TFDS's list comes out empty.
  reason = reason.rstrip(".")
  if "BuilderConfig" in reason:
    try:
      configs = [c.name for c in tfds.builder_cls(re.split(r"[/:]", name)[0]).BUILDER_CONFIGS]
    except Exception:  # pylint: disable=broad-except
      configs = []
    reason += (f" (its configs: {', '.join(configs)})" if configs else " (it has no configs)")
  return reason


def _check_tfds_features(name: str, image_feature, image_key: str, label_feature,
                         label_key: str) -> None:
  """Refuses features the pipeline cannot use: it needs encoded images and ClassLabel labels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  is_image = isinstance(image_feature, tfds.features.Image)
  dtype = np.dtype(image_feature.np_dtype) if is_image else None
  if not is_image or dtype not in (np.uint8, np.uint16):
    # A Tensor feature holds raw pixels (often not RGB: multispectral bands), and a float32
    # Image is stored as packed bytes in a 4-channel PNG; neither decodes to the image.
    kind = type(image_feature).__name__ + (f" of {dtype.name}" if is_image else "")
    raise UserError(f"TFDS dataset {name}: its {image_key!r} feature is tfds.features.{kind}, "
                    "but this package reads images stored as tfds.features.Image of uint8 or "
                    "uint16 (encoded JPEG/PNG); export the images to a folder or to TFRecords")
  if not isinstance(label_feature, tfds.features.ClassLabel) or not label_feature.num_classes:
    raise UserError(f"TFDS dataset {name}: its {label_key!r} feature is tfds.features."
                    f"{type(label_feature).__name__}, not a ClassLabel with its number of "
                    "classes, which the model needs; use a ClassLabel in the dataset's builder, "
                    "or export it to TFRecords (labels 0..N-1)")


def _is_prepared(builder) -> bool:
  try:
    return bool(builder.is_prepared())
  except AttributeError:
    return tf.io.gfile.exists(builder.data_dir)
