"""tf.data pipelines for training and evaluation (SPEC §1.4), fast enough not to starve the model.

Training (`build_train_dataset`), per input pipeline:
  source.records(input_context, shuffle=True)   # this pipeline's shard; file lists reshuffled
  → shuffle(shuffle_buffer)                      # unless the source already shuffles all records
  → repeat() → batch(CHECK_GROUP) → enumerate()  # groups of 32 records, group index g
  → map(draw the group's crops, flips and PCA lighting shifts; validity check)
  → interleave(per group: map(skip a record that failed the check; fused decode/crop + flip,
    in uint8) → ignore_errors() (non-strict)), AUTOTUNE parallel groups  # `decode_groups`
  → batch(per-replica, drop_remainder)
  → map(add the lighting shifts, to float32)
  → prefetch(AUTOTUNE)
  With finish_in_step (train.py) neither the flip nor the lighting happens in the pipeline: the
  training step does both, on the accelerator when there is one.
Evaluation (`build_eval_dataset`): records in order (every record exactly once over all
pipelines) → validity check in groups (`check_in_groups`) → interleave(per group: map(skip a
failed record; decode + shorter side 256 + centre crop or ten crops) → ignore_errors()
(non-strict)), parallel groups, in order → batch (partial last batch kept) → prefetch.

Why groups: in tf.data every op of a per-record map function costs a few microseconds, and the
check and the random draws are a few dozen small ops; on a group of records they cost the same
few dozen ops once. The per-record map keeps only what must see one image: the decode, the
crop window and the flip. Each group is then decoded by one worker, record after record, which
saves tf.data a thread hand-off per record (benchmarks/RESULTS.md has the measurements).

Use with a strategy:

  def dataset_fn(ctx):
    return build_train_dataset(source, per_replica_batch_size(global_batch, strategy.
        num_replicas_in_sync), image_size, ctx, seed=seed)
  dist = strategy.distribute_datasets_from_function(dataset_fn)

Reproducibility: augmentation is stateless, keyed by (seed, input_pipeline_id, g, j), with g the
index of the element's group in the repeated stream and j its place in the group, so
replicas/workers draw different augmentations and the same seed gives the same augmentation of
the same element. With `deterministic=True` and a seed the element order is reproducible too
(otherwise parallel map may reorder elements).

Corrupt files. A corrupt, truncated or non-image record must not kill a long run:
1. Every record first passes a cheap in-graph check (`is_valid_image`): it must be non-empty,
   start with a JPEG/PNG/GIF/BMP signature, and end with its format's trailer (JPEG EOI marker
   FF D9 / PNG IEND chunk / GIF ';' within the last 32 bytes). This catches non-image files,
   empty files and truncated files (the common cases) without decoding. The check runs on
   groups of records (`with_validity`); a record that fails is counted in a `CorruptCounter`
   and dropped where it would be decoded (its map call raises "corrupt image file, skipped"
   instead, which the group's `ignore_errors()` drops and logs; `checked_image_bytes`). The
   counter is a Python-side count incremented through a `tf.py_function` that runs only for
   failing records (no cost for good ones; no tf.Variable, so it works the same under any
   distribution strategy and outside strategy scopes).
   The last few skipped file names are kept (`CorruptCounter.recent_files`).
2. A record that passes the check but still fails to decode (e.g. a broken header) is dropped
   on its own by the same `ignore_errors()` as a backstop (the records around it are kept); TF
   logs a warning for it, but it is not counted. Run `check_source` to find those exactly (it
   decodes a sample fully and names the bad files).
3. With `strict=True` (`--strict_data`) a failing record raises instead:
   `tf.errors.InvalidArgumentError` whose message contains "corrupt image file" and the file
   name (from the check), or TF's decode error (no `ignore_errors()` in strict mode).

Reading the count in a training loop (counters are per process and shared by all pipelines
built with the same counter; by default `corrupt_counter("train")` for training pipelines and
`corrupt_counter("eval")` for evaluation pipelines):

  counter = input_pipeline.corrupt_counter("train")
  ... at the end of each epoch:
  skipped = counter.pop()          # skipped since the previous pop()
  if skipped: logging.warning("%d corrupt images skipped (%s)", skipped, counter.recent_files)
  counter.check(num_records=epochs_done * source.num_examples)   # UserError above 50%

Counts are taken when tf.data processes a record, which with prefetching may be a little ahead
of the training loop; totals are exact. Before training, `check_source(source)` decodes a
sample of the records and raises `UserError` when more than `threshold` (50%) of them are
corrupt (or, with strict=True, when any is).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import threading
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from alexnet_tf import preprocessing
from alexnet_tf.datasets import DatasetSource
from alexnet_tf.errors import UserError

_AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 10_000
DEFAULT_CORRUPT_THRESHOLD = 0.5
# Records per group for the validity check and the augmentation draws, which run on whole groups:
# per-record ops cost as much as a small JPEG's decode in tf.data (benchmarks/RESULTS.md).
CHECK_GROUP = 32


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
    self._recent: collections.deque[str] = collections.deque(maxlen=keep_files)

  def record(self, filename: bytes | str = b"") -> None:
    """Counts one skipped record (called from the pipeline through tf.py_function)."""
    if isinstance(filename, bytes):
      filename = filename.decode("utf-8", "replace")
    with self._lock:
      self._total += 1
      self._since_pop += 1
      if filename:
        self._recent.append(filename)

  @property
  def total(self) -> int:
    """Records skipped since creation (or `reset`)."""
    with self._lock:
      return self._total

  @property
  def recent_files(self) -> list[str]:
    """The names of the last few skipped records."""
    with self._lock:
      return list(self._recent)

  def pop(self) -> int:
    """Records skipped since the previous `pop` (e.g. in the epoch that just ended)."""
    with self._lock:
      n, self._since_pop = self._since_pop, 0
      return n

  def reset(self) -> None:
    with self._lock:
      self._total = self._since_pop = 0
      self._recent.clear()

  def check(self, num_records: int, threshold: float = DEFAULT_CORRUPT_THRESHOLD) -> None:
    """Raises UserError when more than `threshold` of `num_records` records were skipped."""
    check_corrupt_fraction(self.total, num_records, threshold, self.recent_files)

  def _py_record(self, filename: tf.Tensor) -> tf.Tensor:
    def _fn(name):
      self.record(name.numpy())
      return np.bool_(False)
    return tf.py_function(_fn, [filename], Tout=tf.bool)


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
    where = f" (e.g. {', '.join(list(examples)[:3])})" if examples else ""
    raise UserError(f"{num_corrupt} of {num_records} images are corrupt or not images{where}: "
                    f"more than {threshold:.0%}; check --data_dir")


def _tail_contains(image_bytes: tf.Tensor, n: tf.Tensor, marker: bytes) -> tf.Tensor:
  tail = tf.strings.substr(image_bytes, tf.maximum(n - 32, 0), tf.fill(tf.shape(n), 32))
  found = tf.strings.split(tf.reshape(tail, [-1]), sep=marker).row_lengths() > 1
  return tf.reshape(found, tf.shape(n))


def is_valid_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """Cheap validity check of encoded images (tf.bool of the input's shape), without decoding.

  True for a JPEG ending with its EOI marker, a PNG ending with IEND, a GIF ending with ';'
  or a BMP larger than its headers. Catches empty, non-image and truncated files. Works on one
  image (a scalar) or on a vector of them at the cost of one.
  """
  n = tf.strings.length(image_bytes)
  head8 = tf.strings.substr(image_bytes, 0, 8)
  head6 = tf.strings.substr(image_bytes, 0, 6)
  is_jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
  is_png = head8 == b"\x89PNG\r\n\x1a\n"
  is_gif = tf.logical_or(head6 == b"GIF87a", head6 == b"GIF89a")
  is_bmp = tf.logical_and(tf.strings.substr(image_bytes, 0, 2) == b"BM", n > 54)
  return tf.logical_or(
      tf.logical_or(
          tf.logical_and(is_jpeg, _tail_contains(image_bytes, n, b"\xff\xd9")),
          tf.logical_and(is_png, _tail_contains(image_bytes, n, b"IEND"))),
      tf.logical_or(tf.logical_and(is_gif, _tail_contains(image_bytes, n, b";")), is_bmp))


def with_validity(group: dict) -> dict:
  """A group of records (a dict of [k] tensors with "image") plus "valid": `is_valid_image`."""
  return dict(group, valid=is_valid_image(group["image"]))


def checked_image_bytes(record: dict, strict: bool, counter: CorruptCounter) -> tf.Tensor:
  """The record's encoded image, passed on only if its "valid" flag (`with_validity`) is set.

  A failing record raises InvalidArgumentError ("corrupt image file ...", with the file name)
  before anything decodes it; without `strict` it is counted first, and the pipeline's
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
                 lambda: counter._py_record(record["filename"]))  # pylint: disable=protected-access
  with tf.control_dependencies([tf.debugging.Assert(ok, [what, record["filename"]])]):
    return tf.identity(record["image"])


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


def _check_image_size(image_size: int) -> None:
  if not isinstance(image_size, (int, np.integer)) or not 0 < image_size <= 256:
    raise UserError(f"image size must be an integer in 1..256 (227 or 224), got {image_size}")


def _shard(input_context) -> tuple[int, int]:
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def _finish(ds: tf.data.Dataset, batch_size: int, drop_remainder: bool,
            deterministic: bool) -> tf.data.Dataset:
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
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
  _, pipeline_id = _shard(input_context)
  aug_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
  ds = source.records(input_context, shuffle=True, seed=seed)
  if not source.shuffles_records and shuffle_buffer > 1:
    ds = ds.shuffle(shuffle_buffer, seed=None if seed is None else seed + 1 + pipeline_id,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  base_seed = tf.constant([aug_seed, pipeline_id], tf.int64)

  def _draw_and_check(group_index, group):
    group_seed = tf.random.experimental.stateless_fold_in(base_seed, group_index)
    draws = preprocessing.draw_train_augmentation(
        group_seed, tf.shape(group["label"])[0], image_size, crop=random_crop,
        flip=random_flip, lighting=pca_lighting, alphastd=alphastd, eigval=eigval,
        eigvec=eigvec)
    return with_validity(dict(group, **draws))

  def _decode(record):
    image = preprocessing.decode_for_train(checked_image_bytes(record, strict, counter),
                                           record["offset"],
                                           None if finish_in_step else record["flip"],
                                           image_size)
    if finish_in_step:
      return (image, record["flip"], record["shift"]), record["label"]
    return (image, record["shift"]), record["label"]

  ds = ds.batch(CHECK_GROUP).enumerate().map(_draw_and_check)
  ds = decode_groups(ds, _decode, strict=strict, deterministic=deterministic)
  ds = _finish(ds, batch_size, True, deterministic)
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

  ds = check_in_groups(source.records(input_context))
  ds = decode_groups(ds, _decode, strict=strict, deterministic=True)
  return _finish(ds, batch_size, False, True).prefetch(_AUTOTUNE)


@dataclasses.dataclass
class SourceCheck:
  """Result of `check_source`."""
  num_checked: int
  num_corrupt: int
  corrupt_files: list[str]


@tf.function(reduce_retracing=True)
def _full_decode(image_bytes):
  image = preprocessing.decode_rgb(image_bytes)
  tf.debugging.assert_positive(tf.reduce_prod(tf.shape(image)[:2]), "empty image")
  return tf.shape(image)


def check_source(source: DatasetSource, *, sample_size: int | None = 256,
                 threshold: float = DEFAULT_CORRUPT_THRESHOLD, strict: bool = False,
                 seed: int = 0) -> SourceCheck:
  """Fully decodes a sample of the records (all with sample_size=None) before training.

  Exact (a full decode, not only the cheap check) and names the bad files.

  Raises:
    UserError: when more than `threshold` of the sample is corrupt, or with `strict` when any
      record of the sample is corrupt (naming it).
  """
  ds = source.records(shuffle=sample_size is not None, seed=seed)
  if sample_size is not None:
    ds = ds.take(sample_size)
  checked, bad = 0, []
  for record in ds:
    checked += 1
    ok = bool(is_valid_image(record["image"]))
    if ok:
      try:
        _full_decode(record["image"])
      except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        ok = False
    if not ok:
      name = record["filename"].numpy().decode("utf-8", "replace")
      if strict:
        raise UserError(f"corrupt image file {name} (--strict_data)")
      bad.append(name)
  if checked == 0:
    raise UserError(f"dataset {source.name} split {source.split} has no records")
  check_corrupt_fraction(len(bad), checked, threshold, bad)
  return SourceCheck(checked, len(bad), bad)
