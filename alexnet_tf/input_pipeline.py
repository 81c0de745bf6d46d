"""tf.data pipelines for training and evaluation (SPEC §1.4), fast enough not to starve the model.

Training (`build_train_dataset`), per input pipeline:
  source.records(input_context, shuffle=True)   # this pipeline's shard; file lists reshuffled
  → shuffle(shuffle_buffer)                      # unless the source already shuffles all records
  → repeat() → batch(group) → enumerate()      # groups of min(batch, 128) records, index g
  → map(draw the group's crops, flips and PCA lighting shifts; validity check; split off the
    valid JPEGs whose stored size needs no resize)                      # `split_unresized`
  → interleave(per group: map(their window decode, no branches) + map(the others: skip a
    record that failed the check; fused decode/crop/resize) → ignore_errors() (non-strict)
    → one batch), AUTOTUNE parallel groups                               # `decode_batches`
  → rebatch(per-replica, drop_remainder)
  → map(add the lighting shifts, to float32)
  → prefetch(AUTOTUNE)
  With finish_in_step (train.py) neither the flip nor the lighting happens in the pipeline: the
  training step does both, on the accelerator when there is one; the unresized records' decode,
  then free of branches, runs inline on the interleave's worker (`map_inline`).
Evaluation (`build_eval_dataset`): records in order (every record exactly once over all
pipelines) → validity check in groups (`check_in_groups`) → interleave(per group: map(skip a
failed record; decode + shorter side 256 + centre crop or ten crops) → ignore_errors()
(non-strict)), parallel groups, in order → batch (partial last batch kept) → prefetch.

Why groups: in tf.data every op of a per-record map function costs a few microseconds, and the
check and the random draws are a few dozen small ops; on a group of records they cost the same
few dozen ops once. The per-record map keeps only what must see one image: the decode, the
crop window and the flip. Each group is then decoded by one worker, record after record, which
saves tf.data a thread hand-off per record; in training the worker also batches the group, and
records already at the fixed resolution (256-pixel TFRecords) skip the per-record branches
(benchmarks/RESULTS.md has the measurements).

Use with a strategy:

  def dataset_fn(ctx):
    return build_train_dataset(source, per_replica_batch_size(global_batch, strategy.
        num_replicas_in_sync), image_size, ctx, seed=seed)
  dist = strategy.distribute_datasets_from_function(dataset_fn)

Reproducibility: augmentation is stateless, keyed by (seed, input_pipeline_id, g, j), with g the
index of the element's group in the repeated stream and j its place in the group (before the
split of `split_unresized`), so replicas/workers draw different augmentations and the same seed
gives the same augmentation of the same element. With `deterministic=True` and a seed the
element order is reproducible too (otherwise parallel map may reorder elements).

Corrupt files. A corrupt, truncated or non-image record must not kill a long run:
1. Every record first passes a cheap in-graph check (`is_valid_image`): it must be non-empty,
   start with a JPEG/PNG/GIF/BMP/WebP signature, and end with its format's trailer (JPEG EOI
   marker FF D9 / PNG IEND chunk / GIF ';' within the last 32 bytes) or, for WebP, be as long as
   its RIFF header says and not animated (TF cannot decode those to RGB). This catches
   non-image files, empty files and truncated files (the common cases) without decoding. The
   check runs on groups of records (`with_validity`); a record that fails is counted in a
   `CorruptCounter` and dropped where it would be decoded (its map call raises "corrupt image
   file, skipped" instead, which the group's `ignore_errors()` drops and logs;
   `checked_image_bytes`). The counter is a Python-side count incremented through a
   `tf.py_function` that runs only for failing records (no cost for good ones; no tf.Variable,
   so it works the same under any distribution strategy and outside strategy scopes). The last
   few skipped file names are kept (`CorruptCounter.recent_files`).
2. A record that passes the check but still fails to decode (e.g. a broken header) is dropped
   on its own by the same `ignore_errors()` as a backstop (the records around it are kept); TF
   logs a warning for it, but it is not counted. Run `check_source` to find those exactly (it
   decodes a sample fully and names the bad files).
3. With `strict=True` (`--strict_data`) a failing record raises instead:
   `tf.errors.InvalidArgumentError` whose message contains "corrupt image file" and the file
   name (from the check), or TF's decode error (no `ignore_errors()` in strict mode).
   `raise_data_error` re-raises either as one sentence (train.py and evaluate.py do).
4. A folder source's broken links are found when the folder is listed
   (`FileListSource.unreadable`): their records come with empty bytes, so the check counts
   and drops them like corrupt files (with `strict`, `check_source` names the first before
   anything is read). A file that cannot be read for another reason (deleted after the
   listing, no permission) has no bytes to check: `source_records` drops its record (TF logs
   a warning naming it), uncounted; with `strict` it raises NotFoundError/PermissionDeniedError
   (`DATA_ERRORS`).

Reading the count in a training loop (counters are per process and shared by all pipelines
built with the same counter; by default `corrupt_counter("train")` for training pipelines and
`corrupt_counter("eval")` for evaluation pipelines):

  counter = input_pipeline.corrupt_counter("train")
  ... at the end of each epoch:
  skipped = counter.pop()          # skipped since the previous pop()
  if skipped: logging.warning("%d corrupt images skipped (%s)", skipped, counter.recent_files)
  counter.check(num_records=epochs_done * source.num_examples)   # UserError above 50%

Counts are taken when tf.data processes a record, which with prefetching may be ahead of the
training loop (by more than an epoch of a small dataset under a step cap); totals are exact,
and `check` takes the fraction of the records the pipelines read. Before training,
`check_source(source)` decodes a sample of the records and raises `UserError` when more than
`threshold` (50%) of them are corrupt (or, with strict=True, when any is).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import os
import random
import re
import threading
from typing import Any, Callable, NoReturn, Sequence

import numpy as np
import tensorflow as tf

from alexnet_tf import datasets, preprocessing
from alexnet_tf.datasets import DatasetSource
from alexnet_tf.errors import UserError

_AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 10_000
DEFAULT_CORRUPT_THRESHOLD = 0.5
# Records per group for the validity check and the augmentation draws, which run on whole groups:
# per-record ops cost as much as a small JPEG's decode in tf.data (benchmarks/RESULTS.md).
CHECK_GROUP = 32
# Most records per group of the training pipeline, which decodes each group into one batch in
# one tf.data worker (`decode_batches`): the per-replica batch size, up to this. Bounds what
# the groups in flight (2 per core) hold.
MAX_TRAIN_GROUP = 128


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
  """global_batch_size / num_replicas, which must be a whole number.

  Raises:
    UserError: when the global batch size is not positive or not divisible.
  """
  if global_batch_size < 1:
    raise UserError(f"--batch_size must be positive, got {global_batch_size}")
  if num_replicas < 1:
    raise UserError(f"number of replicas must be positive, got {num_replicas}")
  if global_batch_size % num_replicas:
    raise UserError(f"--batch_size={global_batch_size} (global) must be divisible by the "
                    f"number of replicas ({num_replicas}); e.g. use "
                    f"{max(1, global_batch_size // num_replicas) * num_replicas}")
  return global_batch_size // num_replicas


class CorruptCounter:
  """Counts records skipped as corrupt by the pipelines it is given to (thread-safe)."""

  def __init__(self, name: str = "images", keep_files: int = 10):
    self.name = name
    self._lock = threading.Lock()
    self._total = 0
    self._since_pop = 0
    self._named_since_pop: set[str] = set()
    self._recent: collections.deque[str] = collections.deque(maxlen=keep_files)
    self._read: dict[int, int] = {}

  def record(self, filename: bytes | str = b"", position: int = 0, pipeline: int = 0) -> None:
    """Counts one skipped record (called from the pipeline through tf.py_function).

    `position`: where the record is in its pipeline's stream (1 for the first record read),
    where the pipeline knows it (training); `pipeline` tells apart the pipelines that share
    this counter.
    """
    if isinstance(filename, bytes):
      filename = filename.decode("utf-8", "replace")
    with self._lock:
      self._total += 1
      if filename not in self._named_since_pop:  # Counted once between pops.
        self._since_pop += 1
      if filename:
        self._named_since_pop.add(filename)
        self._recent.append(filename)
      if position > self._read.get(pipeline, 0):
        self._read[pipeline] = int(position)

  @property
  def total(self) -> int:
    """Records skipped since creation (or `reset`)."""
    with self._lock:
      return self._total

  @property
  def records_read(self) -> int:
    """At least how many records the pipelines have read: for each pipeline, the stream position
    of its last skipped record (0 where none was skipped, or positions are unknown)."""
    with self._lock:
      return sum(self._read.values())

  @property
  def recent_files(self) -> list[str]:
    """The names of the last few skipped records."""
    with self._lock:
      return list(self._recent)

  def pop(self) -> int:
    """Records skipped since the previous `pop` (e.g. in the epoch that just ended), each
    named record once: a training epoch is (listed records // batch) steps of a repeated
    stream, so with skipped records it reads a few records of the next pass, and the
    pipeline reads ahead of the step."""
    with self._lock:
      n, self._since_pop = self._since_pop, 0
      self._named_since_pop.clear()
      return n

  def reset(self) -> None:
    with self._lock:
      self._total = self._since_pop = 0
      self._named_since_pop.clear()
      self._recent.clear()
      self._read.clear()

  def check(self, num_records: int, threshold: float = DEFAULT_CORRUPT_THRESHOLD) -> None:
    """Raises UserError when more than `threshold` of the records read were skipped.

    `num_records`: how many records the caller has taken from the pipelines (e.g. steps ×
    this process's records per step). The pipelines read ahead of that (prefetching, a step
    cap), and every record they read may have been counted, so the fraction is of
    `max(num_records, records_read)`: without it, a short run of a small dataset with a few
    corrupt files could stop as "mostly corrupt".
    """
    check_corrupt_fraction(self.total, max(num_records, self.records_read), threshold,
                           self.recent_files)

  def _py_record(self, filename: tf.Tensor, position: tf.Tensor, pipeline: int) -> tf.Tensor:
    def _fn(name, pos):
      self.record(name.numpy(), int(pos.numpy()), pipeline)
      return np.bool_(False)
    return tf.py_function(_fn, [filename, position], Tout=tf.bool)


_COUNTERS: dict[str, CorruptCounter] = {}
_COUNTERS_LOCK = threading.Lock()


def corrupt_counter(name: str = "train") -> CorruptCounter:
  """The process-wide counter `name` (default counters: "train" and "eval")."""
  with _COUNTERS_LOCK:
    if name not in _COUNTERS:
      _COUNTERS[name] = CorruptCounter(name)
    return _COUNTERS[name]


def check_corrupt_fraction(num_corrupt: int, num_records: int,
                           threshold: float = DEFAULT_CORRUPT_THRESHOLD,
                           examples: Sequence[str] = ()) -> None:
  """Raises UserError when num_corrupt > threshold * num_records (with num_records > 0)."""
  if num_records > 0 and num_corrupt > threshold * num_records:
    examples = list(dict.fromkeys(examples))[:3]  # A file skipped in several epochs, once.
    where = f" (e.g. {', '.join(examples)})" if examples else ""
    raise UserError(f"{num_corrupt} of {num_records} images are corrupt or not images{where}: "
                    f"more than {threshold:.0%}; check --data_dir")


def _tail_contains(image_bytes: tf.Tensor, n: tf.Tensor, marker: bytes) -> tf.Tensor:
  tail = tf.strings.substr(image_bytes, tf.maximum(n - 32, 0), tf.fill(tf.shape(n), 32))
  found = tf.strings.split(tf.reshape(tail, [-1]), sep=marker).row_lengths() > 1
  return tf.reshape(found, tf.shape(n))


def _zero_padded(image_bytes: tf.Tensor, size: int, start: Any = 0) -> tf.Tensor:
  """The `size` bytes of each image from `start` (an int, or an int64 per image; at most the
  image's length), zero-padded where the image ends first: strings of equal length, which
  `tf.strings.substr` can index and `_byte_values` decode."""
  length: Any = size
  if not isinstance(start, int):
    start, length = tf.cast(start, tf.int32), tf.fill(tf.shape(start), size)
  part = tf.strings.substr(image_bytes, start, length)
  return tf.strings.substr(tf.strings.join([part, b"\0" * size]), 0, size)


def _byte_values(strings: tf.Tensor) -> tf.Tensor:
  """Equal-length strings as int64 byte values, [..., length]."""
  return tf.cast(tf.io.decode_raw(strings, tf.uint8), tf.int64)


def _little_endian(head_bytes: tf.Tensor, start: int, size: int) -> tf.Tensor:
  return tf.reduce_sum(head_bytes[..., start:start + size]
                       * [1 << (8 * i) for i in range(size)], axis=-1)


def _is_decodable_webp(image_bytes: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """Whether images are WebPs as long as their RIFF header says and not animated (TF 2.21
  cannot decode an animated WebP to RGB: "WebP Animation must be 4 channel RGBA")."""
  head = _zero_padded(image_bytes, 21)
  is_webp = tf.logical_and(tf.strings.substr(head, 0, 4) == b"RIFF",
                           tf.strings.substr(head, 8, 4) == b"WEBP")
  head_bytes = _byte_values(head)
  # The RIFF size: the file's length - 8. "WEBP", then a chunk: its 8-byte header and at
  # least one byte.
  size = _little_endian(head_bytes, 4, 4)
  complete = tf.logical_and(size > 12, tf.cast(n, tf.int64) >= size + 8)
  # An extended header (VP8X) with its animation flag.
  animated = tf.logical_and(tf.strings.substr(head, 12, 4) == b"VP8X",
                            tf.bitwise.bitwise_and(head_bytes[..., 20], 2) > 0)
  return tf.logical_and(tf.logical_and(is_webp, complete), tf.logical_not(animated))


def _is_decodable_bmp(image_bytes: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """Whether images are BMPs that TF 2.21 decodes to the right colours: 24- or 32-bit, or
  8-bit with the identity grey palette (TF takes 8-bit pixels for grey levels whatever the
  palette says, and refuses 1-, 4- and 16-bit ones). The headers are read only for a group
  that has a BMP."""
  is_bmp = tf.logical_and(tf.strings.substr(image_bytes, 0, 2) == b"BM", n > 54)

  def decodable():
    head = _byte_values(_zero_padded(image_bytes, 54))
    bits = _little_endian(head, 28, 2)
    colours = _little_endian(head, 46, 4)
    colours = tf.where(tf.logical_or(colours == 0, colours > 256), tf.constant(256, tf.int64),
                       colours)
    # The palette (up to 256 entries of B, G, R, 0) follows the info header.
    start = tf.minimum(14 + _little_endian(head, 14, 4), tf.cast(n, tf.int64))
    entries = tf.reshape(_byte_values(_zero_padded(image_bytes, 1024, start)),
                         tf.concat([tf.shape(n), [256, 4]], 0))[..., :3]
    index = tf.range(256, dtype=tf.int64)[:, tf.newaxis]
    unused = index >= colours[..., tf.newaxis, tf.newaxis]
    grey = tf.reduce_all(tf.logical_or(entries == index, unused), axis=[-2, -1])
    return tf.logical_and(is_bmp, tf.logical_or(tf.logical_or(bits == 24, bits == 32),
                                                tf.logical_and(bits == 8, grey)))

  return tf.cond(tf.reduce_any(is_bmp), decodable, lambda: is_bmp)


def is_valid_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """Cheap validity check of encoded images (tf.bool of the input's shape), without decoding.

  True for a JPEG ending with its EOI marker, a PNG ending with IEND, a GIF ending with ';',
  a BMP of a kind TF decodes right (`_is_decodable_bmp`) or a WebP as long as its RIFF header
  says and not animated. Catches empty, non-image and truncated files. Works on one image (a
  scalar) or on a vector of them at the cost of one.
  """
  n = tf.strings.length(image_bytes)
  head8 = tf.strings.substr(image_bytes, 0, 8)
  head6 = tf.strings.substr(image_bytes, 0, 6)
  is_jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
  is_png = head8 == b"\x89PNG\r\n\x1a\n"
  is_gif = tf.logical_or(head6 == b"GIF87a", head6 == b"GIF89a")
  is_bmp = _is_decodable_bmp(image_bytes, n)
  return tf.logical_or(
      tf.logical_or(
          tf.logical_and(is_jpeg, _tail_contains(image_bytes, n, b"\xff\xd9")),
          tf.logical_and(is_png, _tail_contains(image_bytes, n, b"IEND"))),
      tf.logical_or(
          tf.logical_or(tf.logical_and(is_gif, _tail_contains(image_bytes, n, b";")), is_bmp),
          _is_decodable_webp(image_bytes, n)))


def with_validity(group: dict) -> dict:
  """A group of records (a dict of [k] tensors with "image") plus "valid": `is_valid_image`."""
  return dict(group, valid=is_valid_image(group["image"]))


def checked_image_bytes(record: dict, strict: bool, counter: CorruptCounter,
                        pipeline: int = 0) -> tf.Tensor:
  """The record's encoded image, passed on only if its "valid" flag (`with_validity`) is set.

  A failing record raises InvalidArgumentError ("corrupt image file ...", with the file name)
  before anything decodes it; without `strict` it is counted first, with its "position" in the
  stream where the record has one (`CorruptCounter.record`), and the pipeline's
  `ignore_errors()` then drops it. Counting here, where the record is decoded, keeps the count
  as close to the training loop as the decode is (a group stage would count up to a group of
  records ahead, across an epoch's end).
  """
  ok = record["valid"]
  if strict:
    what = "corrupt image file (--strict_data):"
  else:
    what = "corrupt image file, skipped:"
    ok = tf.cond(ok, lambda: tf.constant(True),
                 lambda: counter._py_record(  # pylint: disable=protected-access
                     record["filename"], record.get("position", tf.constant(0, tf.int64)),
                     pipeline))
  with tf.control_dependencies([tf.debugging.Assert(ok, [what, record["filename"]])]):
    return tf.identity(record["image"])


# What a pipeline raises for bad data: a record that failed the check, an undecodable image, a
# file that cannot be read (these three with `strict=True`; otherwise such records are
# skipped), a damaged TFRecord shard or a TFRecord record that is not an image record (always;
# `datasets.PARSE_ERRORS`). `raise_data_error` words them.
DATA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
               tf.errors.PermissionDeniedError, tf.errors.DataLossError, UnicodeDecodeError)


def source_records(source: DatasetSource, input_context=None, *, shuffle: bool = False,
                   seed: int | None = None, strict: bool = False) -> tf.data.Dataset:
  """`source.records(...)`; unless `strict`, without the records whose file cannot be read
  (deleted after the listing, no permission: TF logs each, naming the file; they are not
  counted as corrupt, since no bytes reach the check; broken links found by the listing are
  counted, see the module docstring)."""
  ds = source.records(input_context, shuffle=shuffle, seed=seed)
  if source.reads_file_per_record and not strict:
    ds = ds.ignore_errors(log_warning=True)
  return ds


def check_in_groups(records: tf.data.Dataset) -> tf.data.Dataset:
  """`records` in groups of `CHECK_GROUP`, each with its records' "valid" flags
  (`with_validity`): the check costs a few ops per group rather than a few dozen per record."""
  return records.batch(CHECK_GROUP).map(with_validity)


def decode_groups(groups: tf.data.Dataset, decode: Callable[[dict], Any], *, strict: bool,
                  deterministic: bool) -> tf.data.Dataset:
  """`decode(record)` for every record of `groups` (dicts of [k] tensors), one element each.

  Each group is decoded by one tf.data worker, record after record, and the workers run in
  parallel (AUTOTUNE). Without `strict` a record whose decode raises is dropped on its own
  (`ignore_errors()` on the group's records), the records around it are kept.
  With `deterministic` the records come out in their input order, group after group.

  Why per group: a parallel map of one record per call, with `ignore_errors()` between it and
  the batch, hands every record from a worker thread to the batching thread and cannot be fused
  into the batch; on 2 cores that cost 6–14% of the rate against decoding a group per worker
  (benchmarks/RESULTS.md).
  """
  def _decode_group(group):
    records = tf.data.Dataset.from_tensor_slices(group).map(decode)
    return records if strict else records.ignore_errors(log_warning=True)

  return groups.interleave(_decode_group, cycle_length=2 * _usable_cores(),
                           block_length=CHECK_GROUP, num_parallel_calls=_AUTOTUNE,
                           deterministic=deterministic)


def split_unresized(group: dict, image_size: int) -> tuple[dict, dict]:
  """A checked group (`with_validity`) as (records whose crop needs no resize, the others).

  The first are valid JPEGs whose stored size (`height`, `width`; TFRecords store it) puts the
  crop at exactly image_size² pixels: 256-pixel images, as `make_tfrecords` writes them.
  `preprocessing.decode_unresized_jpeg_for_train` decodes them without the per-record branches
  of `decode_for_train`. Records with no stored size (0) are among the others. A record whose
  stored size is not its image's fails that decode (dropped, or an error with `strict`);
  `check_source` looks for such records before training.
  """
  unresized = tf.logical_and(group["valid"], tf.io.is_jpeg(group["image"]))
  if "height" in group and "width" in group:
    unresized = tf.logical_and(unresized, preprocessing.crop_needs_no_resize(
        group["height"], group["width"], image_size))
  else:  # A custom source's records without a stored size.
    unresized = tf.zeros_like(unresized)
  others = tf.logical_not(unresized)
  return ({k: tf.boolean_mask(v, unresized) for k, v in group.items()},
          {k: tf.boolean_mask(v, others) for k, v in group.items()})


def decode_batches(groups: tf.data.Dataset, decode_unresized: Callable[[dict], Any],
                   decode: Callable[[dict], Any], *, group_size: int, strict: bool,
                   deterministic: bool, inline_unresized: bool = False) -> tf.data.Dataset:
  """One batch per group of `groups` ((unresized, others) pairs from `split_unresized`):
  `decode_unresized` of the first records, then `decode` of the others.

  Each group is decoded and batched by one tf.data worker, and the workers run in parallel
  (AUTOTUNE); `Dataset.rebatch` then makes batches of the wanted size. Without `strict` a
  record whose decode raises is dropped on its own (`ignore_errors()` on the group's records),
  the records around it are kept. With `deterministic` the order is the groups' order, in each
  group its unresized records first. With `inline_unresized`, `decode_unresized` runs inline
  (`map_inline`; it must have no branches).

  Why a batch per worker: the batching thread then waits for one batch per group, not for one
  record at a time from the workers; with the unresized records' map free of branches, 3–4%
  faster on 256-pixel TFRecords (2 cores, and one) than decoding each group record by record
  into a shared batch (`decode_groups`; benchmarks/RESULTS.md).
  """
  def _decode_group(unresized, others):
    unresized = tf.data.Dataset.from_tensor_slices(unresized)
    unresized = (map_inline(unresized, decode_unresized) if inline_unresized
                 else unresized.map(decode_unresized))
    records = unresized.concatenate(tf.data.Dataset.from_tensor_slices(others).map(decode))
    if not strict:
      records = records.ignore_errors(log_warning=True)
    return records.batch(group_size)

  return groups.interleave(_decode_group, cycle_length=2 * _usable_cores(), block_length=1,
                           num_parallel_calls=_AUTOTUNE, deterministic=deterministic)


def map_inline(dataset: tf.data.Dataset, fn: Callable[..., Any]) -> tf.data.Dataset:
  """`dataset.map(fn)`, with fn's ops run one after another on the thread that asks for the
  element, none handed to tf.data's thread pool.

  `Dataset.map` runs fn's ops through the pool, handing work between threads inside every
  call; for a JPEG window decode (a handful of small ops around one large one), running it
  inline made the 256-pixel TFRecord pipeline 1.06–1.12× as fast on 2 cores and 1.03–1.06× on
  one (benchmarks/RESULTS.md).
  TF has no public switch for it: this is `_MapDataset`'s `use_inter_op_parallelism=False`, a
  private argument, so where a TF version lacks it this is a plain `map`. fn must have no
  tf.cond/switch_case: TF's single-threaded executor, which runs it then, refuses their lowered
  form (FailedPreconditionError). Its work runs on the asking thread (in the training pipeline,
  an interleave worker), outside the `threading.private_threadpool_size` pool.
  """
  if _MapDataset is None:
    return dataset.map(fn)
  return _MapDataset(dataset, fn, use_inter_op_parallelism=False)


def _private_map_dataset():
  """tf.data's MapDataset class, if it takes `use_inter_op_parallelism` (see `map_inline`)."""
  try:
    from tensorflow.python.data.ops import map_op  # pylint: disable=g-import-not-at-top
    cls = map_op._MapDataset  # pylint: disable=protected-access
    inspect.signature(cls).bind_partial(use_inter_op_parallelism=False)
  except (ImportError, AttributeError, TypeError, ValueError):
    return None
  return cls


_MapDataset = _private_map_dataset()
# Tells apart the training pipelines that share a `CorruptCounter` (one per build).
_PIPELINE_KEYS = itertools.count(1)


def _check_image_size(image_size: int) -> None:
  if not isinstance(image_size, (int, np.integer)) or not 0 < image_size <= 256:
    raise UserError(f"image size must be an integer in 1..256 (227 or 224), got {image_size}")


def _shard(input_context) -> tuple[int, int]:
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def _finish(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool,
            deterministic: bool) -> tf.data.Dataset:
  return _with_options(ds.batch(batch_size, drop_remainder=drop_remainder), deterministic)


def _with_options(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  # TF 2.21's autotuner kept the decode at one call at a time (half of a 2-core machine's rate)
  # once a map ran between the shuffle buffer and it, as the group stage does; with at least one
  # call per core it uses the machine (benchmarks/RESULTS.md).
  options.autotune.min_parallelism = _usable_cores()
  return ds.with_options(options)


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _light_batch(inputs, labels):
  return preprocessing.apply_lighting(*inputs), labels


def build_train_dataset(source: DatasetSource, batch_size: int, image_size: int = 227,
                        input_context: tf.distribute.InputContext | None = None, *,
                        seed: int | None = None, random_crop: bool = True,
                        random_flip: bool = True, pca_lighting: bool = True,
                        eigval: Sequence[float] | None = None,
                        eigvec: Sequence[Sequence[float]] | None = None,
                        alphastd: float = 0.1, deterministic: bool = False,
                        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, repeat: bool = True,
                        strict: bool = False, counter: CorruptCounter | None = None,
                        finish_in_step: bool = False) -> tf.data.Dataset:
  """The training pipeline: (images float32 [batch, size, size, 3] in 0..255, labels int64 [batch]).

  With `finish_in_step=True` (what train.py uses) the elements are instead
  `((images uint8 [batch, size, size, 3], flips bool [batch], shifts float32 [batch, 3]),
  labels)`: the images are cropped but neither mirrored nor lit, and
  `preprocessing.flip_and_light(images, flips, shifts)` in the training step
  (`training.make_train_step` does it) gives the same float32 images. That work then runs in
  the step (on the accelerator, when there is one) and the pipeline and the host-to-device copy
  carry 4× fewer bytes: on a CPU core the pipeline's per-image cost drops to little more than
  the JPEG decode (benchmarks/RESULTS.md). Without it, the pipeline mirrors each image where it
  decodes it (cheapest on a CPU) and lights the batch.

  Args:
    source: from `alexnet_tf.datasets.load_source(..., "train")`.
    batch_size: PER-REPLICA batch size (see `per_replica_batch_size`); the last partial batch
      of the stream is dropped.
    image_size: crop size, 227 (default) or 224.
    input_context: from `distribute_datasets_from_function`; None for one pipeline.
    seed: makes shuffling and augmentation reproducible; None = random.
    random_crop: random crop of the 256×256 image (else the centre crop).
    random_flip: random horizontal flip.
    pca_lighting: the paper's PCA lighting noise with `alphastd`, `eigval`, `eigvec` (default
      ImageNet's; eigenvalues on the [0, 1] or the 0..255 scale, e.g. from `--stats`, see
      `preprocessing.pca_lighting`).
    deterministic: keep element order reproducible (slower); else parallel map may reorder.
    shuffle_buffer: records in the shuffle buffer (encoded bytes) for sources that do not
      shuffle all records themselves (TFRecord, TFDS); folder sources shuffle their full file
      list each epoch instead.
    repeat: repeat forever (epochs are delimited by the training loop's step count); False
      gives exactly one pass.
    strict: raise on a corrupt record instead of skipping it (--strict_data).
    counter: where skipped records are counted; default `corrupt_counter("train")`.
    finish_in_step: leave the images uint8, unmirrored and unlit, and return the flips and the
      lighting shifts (above).
  """
  _check_image_size(image_size)
  if batch_size < 1:
    raise UserError(f"batch size must be positive, got {batch_size}")
  counter = counter or corrupt_counter("train")
  counter_key = next(_PIPELINE_KEYS)
  _, pipeline_id = _shard(input_context)
  aug_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
  ds = source_records(source, input_context, shuffle=True, seed=seed, strict=strict)
  if not source.shuffles_records and shuffle_buffer > 1:
    ds = ds.shuffle(shuffle_buffer, seed=None if seed is None else seed + 1 + pipeline_id,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  base_seed = tf.constant([aug_seed, pipeline_id], tf.int64)

  def _draw_and_check(group_index, group):
    group_seed = tf.random.experimental.stateless_fold_in(base_seed, group_index)
    n = tf.shape(group["label"])[0]
    draws = preprocessing.draw_train_augmentation(
        group_seed, n, image_size, crop=random_crop, flip=random_flip, lighting=pca_lighting,
        alphastd=alphastd, eigval=eigval, eigvec=eigvec)
    # Where each record is in the stream, for the count of records read (`CorruptCounter`).
    position = group_index * group_size + tf.range(1, tf.cast(n, tf.int64) + 1)
    unresized, others = split_unresized(with_validity(dict(group, position=position, **draws)),
                                        image_size)
    del unresized["position"]  # Only failed records are counted, and none of these failed.
    return unresized, others

  def _element(record, image):
    if finish_in_step:
      return (image, record["flip"], record["shift"]), record["label"]
    return (image, record["shift"]), record["label"]

  def _decode_unresized(record):
    return _element(record, preprocessing.decode_unresized_jpeg_for_train(
        record["image"], record["offset"], None if finish_in_step else record["flip"],
        image_size))

  def _decode(record):
    return _element(record, preprocessing.decode_for_train(
        checked_image_bytes(record, strict, counter, counter_key), record["offset"],
        None if finish_in_step else record["flip"], image_size))

  group_size = min(batch_size, MAX_TRAIN_GROUP)
  ds = ds.batch(group_size).enumerate().map(_draw_and_check)
  # Inline only without the flip: its tf.cond would stop the inline map.
  ds = decode_batches(ds, _decode_unresized, _decode, group_size=group_size, strict=strict,
                      deterministic=deterministic, inline_unresized=finish_in_step)
  ds = _with_options(ds.rebatch(batch_size, drop_remainder=True), deterministic)
  if not finish_in_step:
    ds = ds.map(_light_batch, num_parallel_calls=_AUTOTUNE, deterministic=deterministic)
  return ds.prefetch(_AUTOTUNE)


def build_eval_dataset(source: DatasetSource, batch_size: int, image_size: int = 227,
                       input_context: tf.distribute.InputContext | None = None, *,
                       ten_crop: bool = False, strict: bool = False,
                       counter: CorruptCounter | None = None) -> tf.data.Dataset:
  """The evaluation pipeline: (images, labels int64 [b]), every record once, in order.

  Images are float32 in 0..255, [b, size, size, 3] (centre crop of the 256×256 image) or
  [b, 10, size, size, 3] with `ten_crop` (order of `preprocessing.ten_crop`). The last batch
  may be smaller; corrupt records are skipped and counted in `counter` (default
  `corrupt_counter("eval")`), or raise with `strict`.
  """
  _check_image_size(image_size)
  if batch_size < 1:
    raise UserError(f"batch size must be positive, got {batch_size}")
  counter = counter or corrupt_counter("eval")
  num_crops = 10 if ten_crop else 1
  shape = [10, image_size, image_size, 3] if ten_crop else [image_size, image_size, 3]

  def _decode(record):
    image = preprocessing.preprocess_for_eval(checked_image_bytes(record, strict, counter),
                                              image_size, num_crops=num_crops)
    image.set_shape(shape)
    return image, record["label"]

  ds = check_in_groups(source_records(source, input_context, strict=strict))
  ds = decode_groups(ds, _decode, strict=strict, deterministic=True)
  return _finish(ds, batch_size, False, True).prefetch(_AUTOTUNE)


_STRICT_CORRUPT = re.compile(r"assertion failed: \[corrupt image file \(--strict_data\):\] "
                             r"\[(.*)\]$", re.MULTILINE)
_PIPELINE_ERROR = re.compile(r"transformation with iterator: \S+: (.*)$", re.MULTILINE)


def strict_data_error(error: tf.errors.OpError) -> UserError | None:
  """The one-sentence error for what a strict pipeline raised, None if it did not come from one.

  A record that failed the check: "corrupt image file NAME (--strict_data)", as `check_source`
  says it. An image that passed the check but could not be decoded: TF's reason (its message
  does not name the file). A file that could not be read: TF's reason (with the file name).
  Anything else: None.
  """
  message = str(error)
  corrupt = _STRICT_CORRUPT.search(message)
  if corrupt:
    return _bad_file_error(corrupt.group(1))
  failed = _PIPELINE_ERROR.search(message)
  if failed:
    reason = failed.group(1)
  elif isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)):
    reason = datasets.op_error_reason(error)  # "PATH; No such file or directory"
  else:
    return None
  return UserError(f"an image could not be read or decoded (--strict_data): {reason}; rerun "
                   "without --strict_data to skip such files")


def raise_data_error(error: Exception, source: DatasetSource, strict: bool) -> NoReturn:
  """Re-raises one of `DATA_ERRORS`, caught from a loop over pipelines of `source` built with
  `strict`, as its one-sentence UserError (`damaged_data_error`, `malformed_record_error`,
  `strict_data_error`) where it is a data error; else as it is."""
  if isinstance(error, tf.errors.DataLossError):
    raise damaged_data_error(source, error) from None
  if isinstance(error, UnicodeDecodeError) or "ParseExample" in str(error):
    malformed = malformed_record_error(source, error)
    if malformed is not None:
      raise malformed from None
  data_error = strict_data_error(error) if strict else None
  if data_error is not None:
    raise data_error from None
  raise error


def damaged_data_error(source: DatasetSource, error: tf.errors.DataLossError) -> UserError:
  """The one-sentence error for a damaged data file of `source` (a truncated TFRecord shard):
  not one record's image, so it cannot be skipped like a corrupt record. Names the file where
  the source can find it (`TFRecordSource.first_damaged_file` reads each file once)."""
  reason = datasets.op_error_reason(error)
  find = getattr(source, "first_damaged_file", None)
  damaged = find() if find else None
  if damaged:
    return datasets.damaged_file_error(damaged, source.compression, reason)
  return UserError(f"a data file of --dataset={source.name} is damaged ({reason}); "
                   "prepare the dataset again")


def malformed_record_error(source: DatasetSource, error: Exception) -> UserError | None:
  """The one-sentence error for a TFRecord record that is not an image record (no image/encoded,
  a label of another type, not a tf.train.Example): records are parsed in batches, so it cannot
  be skipped alone. Names the record (`TFRecordSource.first_malformed_record` reads every record
  once). None where the source has no such records (not a TFRecord source), and for a
  UnicodeDecodeError (`datasets.PARSE_ERRORS`) where no record is malformed: it came from
  elsewhere."""
  find = getattr(source, "first_malformed_record", None)
  if find is None:
    return None
  found = find()
  if found is None and isinstance(error, UnicodeDecodeError):
    return None
  return datasets.malformed_record_error(*(found or (f"of --dataset={source.name}",
                                                     datasets.parse_error_reason(error))))


@dataclasses.dataclass
class SourceCheck:
  """Result of `check_source`."""
  num_checked: int
  num_corrupt: int
  corrupt_files: list[str]


def _check_stored_size(record: dict, shape: list[int], name: str) -> None:
  stored = [int(record[k]) for k in ("height", "width") if k in record]
  # A 0 in either means unknown (the parser's default for a missing feature); the pipeline then
  # takes the normal decode (`crop_needs_no_resize`), so only known sizes must match.
  if len(stored) == 2 and 0 not in stored and stored != shape:
    raise UserError(
        f"record {name} stores its image size as {stored[0]}x{stored[1]} (image/height x "
        f"image/width) but its image is {shape[0]}x{shape[1]}; rewrite the TFRecords with "
        "python -m alexnet_tf.tools.make_tfrecords, or without those two features")


@tf.function(reduce_retracing=True)
def _full_decode(image_bytes):
  image = preprocessing.decode_rgb(image_bytes)
  tf.debugging.assert_positive(tf.reduce_prod(tf.shape(image)[:2]), "empty image")
  return tf.shape(image)


def check_source(source: DatasetSource, *, sample_size: int | None = 256,
                 threshold: float = DEFAULT_CORRUPT_THRESHOLD, strict: bool = False,
                 seed: int = 0) -> SourceCheck:
  """Fully decodes a sample of the records (all with sample_size=None) before training.

  Exact (a full decode, not only the cheap check) and names the bad files. Also compares each
  decoded size with the record's stored size, where it has one (TFRecords): the training
  pipeline trusts it to pick a record's decode path (`split_unresized`).

  Raises:
    UserError: when more than `threshold` of the sample is corrupt, with `strict` when any
      record of the sample is corrupt (naming it) or the listing found a broken link (naming
      the first), or when a record's stored size is not its image's (naming it).
  """
  unreadable = getattr(source, "unreadable", None)
  if strict and unreadable:  # Known from the listing: no need to wait for the sample.
    raise _bad_file_error(unreadable[0])
  ds = source_records(source, shuffle=sample_size is not None, seed=seed, strict=strict)
  if sample_size is not None:
    ds = ds.take(sample_size)
  checked, bad = 0, []
  try:
    for record in ds:
      checked += 1
      bad += _check_record(record, strict)
  except DATA_ERRORS as e:  # A damaged shard; strict: a file that cannot be read.
    raise_data_error(e, source, strict)
  if checked == 0:
    raise UserError(f"dataset {source.name} split {source.split} has no records")
  check_corrupt_fraction(len(bad), checked, threshold, bad)
  return SourceCheck(checked, len(bad), bad)


def _check_record(record: dict, strict: bool) -> list[str]:
  """[the record's name] if it is corrupt (UserError with `strict`), else []."""
  ok = bool(is_valid_image(record["image"]))
  name = record["filename"].numpy().decode("utf-8", "replace")
  if ok:
    try:
      shape = _full_decode(record["image"]).numpy()[:2].tolist()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
      ok = False
    else:
      _check_stored_size(record, shape, name)
  if ok:
    return []
  if strict:
    raise _bad_file_error(name)
  return [name]


def _bad_file_error(name: str) -> UserError:
  """The --strict_data error for the record `name` that failed: "corrupt image file NAME
  (--strict_data)", or, where NAME is a broken link, a sentence saying so and where it points."""
  if os.path.islink(name) and not os.path.exists(name):
    return UserError(f"an image could not be read (--strict_data): {name} is a broken link "
                     f"(to {os.readlink(name)}); rerun without --strict_data to skip such files")
  return UserError(f"corrupt image file {name} (--strict_data)")
