"""Tests of alexnet_tf.input_pipeline: batching, sharding, reproducibility, corrupt files."""

from __future__ import annotations

import io
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import datasets, input_pipeline as ip, preprocessing as pp
from alexnet_tf.errors import UserError
from conftest import encode_image, smooth_image


@pytest.fixture(scope="module")
def train_source(shapes_root):
  return datasets.load_source("shapes", "train", shapes_root)


@pytest.fixture(scope="module")
def val_source(shapes_root):
  return datasets.load_source("shapes", "validation", shapes_root)


def test_per_replica_batch_size():
  assert ip.per_replica_batch_size(128, 2) == 64
  assert ip.per_replica_batch_size(128, 1) == 128
  with pytest.raises(UserError, match="divisible by the number of replicas"):
    ip.per_replica_batch_size(100, 3)
  with pytest.raises(UserError):
    ip.per_replica_batch_size(0, 1)


@pytest.mark.parametrize("size", [227, 224])
def test_train_shapes_and_dtypes(train_source, size):
  ds = ip.build_train_dataset(train_source, 16, size, seed=0)
  assert ds.element_spec == (tf.TensorSpec([16, size, size, 3], tf.float32),
                             tf.TensorSpec([16], tf.int64))
  images, labels = next(iter(ds))
  assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
  assert set(labels.numpy()) <= set(range(6))
  # Repeats forever: more batches than one epoch.
  assert sum(1 for _ in ds.take(5)) == 5


def test_finish_in_step_gives_the_same_images(train_source):
  """uint8 images + flips + shifts, finished by flip_and_light, equal the float32 pipeline's."""
  kw = dict(seed=5, deterministic=True)
  ds = ip.build_train_dataset(train_source, 8, finish_in_step=True, **kw)
  assert ds.element_spec == ((tf.TensorSpec([8, 227, 227, 3], tf.uint8),
                              tf.TensorSpec([8], tf.bool), tf.TensorSpec([8, 3], tf.float32)),
                             tf.TensorSpec([8], tf.int64))
  (images, flips, shifts), labels = next(iter(ds))
  float_images, float_labels = next(iter(ip.build_train_dataset(train_source, 8, **kw)))
  np.testing.assert_array_equal(pp.flip_and_light(images, flips, shifts).numpy(),
                                float_images.numpy())
  np.testing.assert_array_equal(labels.numpy(), float_labels.numpy())
  assert 0 < int(tf.reduce_sum(tf.cast(flips, tf.int32))) < 8  # Seed 5 flips some, not all.
  assert len({tuple(s) for s in shifts.numpy()}) == 8  # One shift per image.
  (_, unflipped, unlit), _ = next(iter(ip.build_train_dataset(
      train_source, 8, finish_in_step=True, pca_lighting=False, random_flip=False, **kw)))
  assert not unlit.numpy().any() and not unflipped.numpy().any()


def test_train_one_pass_drops_remainder(train_source):
  ds = ip.build_train_dataset(train_source, 16, seed=0, repeat=False, pca_lighting=False)
  batches = list(ds)
  assert len(batches) == 60 // 16 and all(b[0].shape[0] == 16 for b in batches)


def test_train_reproducible_with_seed(train_source):
  def first(seed):
    ds = ip.build_train_dataset(train_source, 8, seed=seed, deterministic=True)
    return [x.numpy() for x in next(iter(ds))]

  a, b, c = first(3), first(3), first(4)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_train_replicas_draw_different_augmentations():
  """The same record in two input pipelines gets different crops/flips/lighting."""
  data = encode_image(smooth_image(np.random.default_rng(0), 300, 300))
  src = datasets.in_memory_source([data, data], [0, 0])
  outs = []
  for i in range(2):
    ctx = tf.distribute.InputContext(2, i, 2)
    outs.append(next(iter(ip.build_train_dataset(src, 1, input_context=ctx, seed=1)))[0].numpy())
  assert not np.array_equal(outs[0], outs[1])


def test_eval_every_image_once(val_source):
  ds = ip.build_eval_dataset(val_source, 10)
  batches = list(ds)
  assert [b[0].shape[0] for b in batches] == [10, 10, 4]
  labels = np.concatenate([b[1].numpy() for b in batches])
  assert sorted(labels) == sorted(i % 6 for i in range(24))
  # Sharded over 3 input pipelines: together still every image once.
  seen = []
  for i in range(3):
    ctx = tf.distribute.InputContext(3, i, 3)
    for images, y in ip.build_eval_dataset(val_source, 5, input_context=ctx):
      seen += list(zip(y.numpy(), images.numpy()[:, 100, 100, 0]))
  assert len(seen) == 24 and sorted(y for y, _ in seen) == sorted(labels)


def test_eval_ten_crop(val_source):
  images, labels = next(iter(ip.build_eval_dataset(val_source, 4, 224, ten_crop=True)))
  assert images.shape == (4, 10, 224, 224, 3) and labels.shape == (4,)
  np.testing.assert_array_equal(images[:, 5].numpy(), images[:, 1].numpy()[:, :, ::-1])


def test_distribute_datasets_from_function(train_source):
  strategy = tf.distribute.get_strategy()
  bs = ip.per_replica_batch_size(8, strategy.num_replicas_in_sync)
  dist = strategy.distribute_datasets_from_function(
      lambda ctx: ip.build_train_dataset(train_source, bs, input_context=ctx, seed=0))
  images, labels = next(iter(dist))
  assert images.shape == (8, 227, 227, 3)


def test_bad_arguments(train_source):
  with pytest.raises(UserError, match="image size"):
    ip.build_train_dataset(train_source, 8, 300)
  with pytest.raises(UserError, match="batch size"):
    ip.build_eval_dataset(train_source, 0)


@pytest.fixture
def corrupt_folder(image_folder):
  """3 good + 4 bad files in train/bad, 3 good in train/good."""
  root = image_folder(classes=("bad", "good"), per_class=3, splits=("train",))
  d = os.path.join(root, "train", "bad")
  good = open(os.path.join(d, "0.jpg"), "rb").read()
  png = encode_image(np.zeros((20, 20, 3), np.uint8), "PNG")
  for name, data in [("text.jpg", b"this is not an image"), ("empty.jpg", b""),
                     ("truncated.jpg", good[:len(good) // 2]),
                     ("truncated.png", png[:len(png) - 20])]:
    with open(os.path.join(d, name), "wb") as f:
      f.write(data)
  return root


def test_corrupt_files_are_skipped_and_counted(corrupt_folder):
  src = datasets.load_source("folder", "train", corrupt_folder)
  assert src.num_examples == 10
  counter = ip.CorruptCounter()
  batches = list(ip.build_train_dataset(src, 1, seed=0, repeat=False, counter=counter))
  assert len(batches) == 6
  assert counter.total == 4 and counter.pop() == 4 and counter.pop() == 0
  bad = ["empty.jpg", "text.jpg", "truncated.jpg", "truncated.png"]
  assert sorted(os.path.basename(f) for f in counter.recent_files) == bad
  # The records read, as far as the counter can tell: up to the last skipped one.
  order = [os.path.basename(r["filename"].numpy().decode())
           for r in src.records(shuffle=True, seed=0)]
  last_bad = max(i + 1 for i, name in enumerate(order) if name in bad)
  assert counter.records_read == last_bad
  counter.check(num_records=10)  # 40% < 50%.
  # The loop took 6 records, the pipeline read them all: 4 of 6 would be "mostly corrupt".
  assert 4 <= 0.5 * last_bad
  counter.check(num_records=6)
  with pytest.raises(UserError, match="4 of 10 images are corrupt"):
    counter.check(num_records=10, threshold=0.3)
  eval_counter = ip.CorruptCounter()
  n = sum(int(b[0].shape[0]) for b in ip.build_eval_dataset(src, 4, counter=eval_counter))
  assert n == 6 and eval_counter.total == 4
  # The default counters are process-wide singletons.
  assert ip.corrupt_counter("train") is ip.corrupt_counter("train")


def test_corrupt_fraction_is_of_the_records_read():
  counter = ip.CorruptCounter()
  for position in (3, 40, 9):   # One pipeline read at least 40 records, skipped 3 of them.
    counter.record(b"bad.jpg", position, pipeline=1)
  counter.record("other.jpg", 20, pipeline=2)
  assert counter.records_read == 60 and counter.total == 4
  counter.check(num_records=12)  # 4 of 60, not 4 of the 12 the loop took.
  counter.check(num_records=100)
  with pytest.raises(UserError) as e:
    counter.check(num_records=5, threshold=0.05)
  assert str(e.value).startswith("4 of 60 images are corrupt or not images (e.g. bad.jpg, "
                                 "other.jpg):")
  counter.reset()
  assert counter.records_read == 0 and counter.total == 0


def test_an_epochs_count_names_each_skipped_record_once():
  """A training epoch is (listed records // batch) steps of a repeated stream: with skipped
  records it reads into the next pass, and the pipeline reads ahead, so a corrupt file was
  counted two or three times in one epoch's "corrupt skipped" (21 for 9 files)."""
  counter = ip.CorruptCounter()
  for name in ("a.jpg", "b.jpg", "a.jpg", "", "", "a.jpg"):  # "": a record without a name.
    counter.record(name)
  assert counter.pop() == 4 and counter.total == 6
  counter.record("a.jpg")  # The next epoch counts it again.
  assert counter.pop() == 1


def _bmp(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, "BMP")
  return buf.getvalue()


def test_bmps_tf_decodes_wrong_or_not_at_all_are_corrupt():
  """TF takes an 8-bit BMP's pixels for grey levels whatever its palette says (a red image
  came out grey) and refuses 1-bit ones (skipped uncounted); 24-, 32-bit and grey 8-bit BMPs
  decode right."""
  rgb = np.zeros((12, 16, 3), np.uint8)
  rgb[:6] = (200, 50, 100)
  grey = np.tile(np.arange(16, dtype=np.uint8) * 15, (12, 1))
  blobs = {"palette": _bmp(Image.fromarray(rgb).convert("P")),
           "16 colours": _bmp(Image.fromarray(rgb).quantize(16)),
           "1-bit": _bmp(Image.fromarray(grey).convert("1")),
           "grey": _bmp(Image.fromarray(grey)), "rgb": _bmp(Image.fromarray(rgb)),
           "rgba": _bmp(Image.fromarray(rgb).convert("RGBA"))}
  valid = dict(zip(blobs, ip.is_valid_image(tf.constant(list(blobs.values()))).numpy()))
  assert valid == {"palette": False, "16 colours": False, "1-bit": False, "grey": True,
                   "rgb": True, "rgba": True}
  for name in ("grey", "rgb", "rgba"):
    reference = np.asarray(Image.open(io.BytesIO(blobs[name])).convert("RGB"))
    np.testing.assert_array_equal(pp.decode_rgb(blobs[name]).numpy(), reference)
  # A group without a BMP skips the header reads; one BMP among JPEGs is checked alone.
  jpeg = encode_image(rgb)
  assert ip.is_valid_image(tf.constant([jpeg, blobs["palette"], jpeg])).numpy().tolist() == [
      True, False, True]


def test_validity_check_of_a_vector_is_the_check_of_each_image(corrupt_folder):
  blobs = [r["image"] for r in datasets.load_source("folder", "train", corrupt_folder).records()]
  one_by_one = [bool(ip.is_valid_image(b)) for b in blobs]
  assert one_by_one.count(False) == 4
  assert ip.is_valid_image(tf.stack(blobs)).numpy().tolist() == one_by_one


def test_strict_mode_names_the_file(corrupt_folder):
  src = datasets.load_source("folder", "train", corrupt_folder)
  with pytest.raises(tf.errors.InvalidArgumentError, match="corrupt image file"):
    for _ in ip.build_train_dataset(src, 1, repeat=False, strict=True, deterministic=True):
      pass
  with pytest.raises(UserError, match=r"corrupt image file .*(text|empty|truncated)"):
    ip.check_source(src, strict=True)


def _strict_error(ds, in_function=False):
  iterator = iter(ds)
  get_next = tf.function(lambda: next(iterator)) if in_function else lambda: next(iterator)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    while True:
      get_next()
  return ip.strict_data_error(e.value)


def test_strict_data_error_is_one_sentence(corrupt_folder, image_folder):
  src = datasets.load_source("folder", "train", corrupt_folder)
  bad = [os.path.join(corrupt_folder, "train", "bad", n)
         for n in ("empty.jpg", "text.jpg", "truncated.jpg", "truncated.png")]
  # As the training step and evaluation meet them: the file named as check_source names it.
  for ds, in_function in [(ip.build_train_dataset(src, 2, strict=True, finish_in_step=True), True),
                          (ip.build_train_dataset(src, 2, strict=True, repeat=False), False),
                          (ip.build_eval_dataset(src, 4, strict=True), True)]:
    error = str(_strict_error(ds, in_function))
    assert error in [f"corrupt image file {name} (--strict_data)" for name in bad]
  # A file that passes the check but not the decode: TF's reason (it names no file).
  root = image_folder(classes=("x",), per_class=1, splits=("train",))
  with open(os.path.join(root, "train", "x", "bad.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not a JPEG body \xff\xd9")
  error = _strict_error(ip.build_eval_dataset(datasets.load_source("folder", "train", root), 2,
                                               strict=True))
  assert str(error).startswith("an image could not be read or decoded (--strict_data): "
                               "Invalid JPEG")
  # Not from a pipeline: not a data error.
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    tf.reshape(tf.zeros([3]), [2])
  assert ip.strict_data_error(e.value) is None


def _assert_strict_pipelines_stop_with(src, expected: str) -> None:
  """Strict training and evaluation pipelines over `src` raise what words as `expected`."""
  for ds in (ip.build_train_dataset(src, 2, strict=True, repeat=False),
             ip.build_eval_dataset(src, 4, strict=True)):
    with pytest.raises(ip.DATA_ERRORS) as e:
      list(ds)
    assert str(ip.strict_data_error(e.value)) == expected


def test_a_broken_link_is_counted_or_named(image_folder, caplog):
  """A broken link in a folder is found when the folder is listed: without --strict_data it
  is skipped and counted like a corrupt file (the listing logs it once); with it, one sentence
  names it and its target before anything is read."""
  root = image_folder(classes=("a", "b"), per_class=3, splits=("train",))
  link = os.path.join(root, "train", "a", "gone.jpg")
  target = os.path.join(root, "nowhere.jpg")
  os.symlink(target, link)
  with caplog.at_level("WARNING", logger="alexnet_tf.datasets"):
    src = datasets.load_source("folder", "train", root)
  assert src.num_examples == 7 and src.unreadable == [link]
  assert (f"1 image file(s) in {os.path.join(root, 'train')} cannot be read (broken links); "
          f"they are skipped and counted as corrupt: {os.path.join('a', 'gone.jpg')}"
          ) in caplog.text
  check = ip.check_source(src)
  assert (check.num_checked, check.corrupt_files) == (7, [link])
  counter = ip.CorruptCounter()
  train = ip.build_train_dataset(src, 2, seed=0, repeat=False, finish_in_step=True,
                                 counter=counter)
  assert sum(int(labels.shape[0]) for _, labels in train) == 6
  assert (counter.total, counter.recent_files) == (1, [link])
  eval_counter = ip.CorruptCounter()
  assert sum(int(labels.shape[0])
             for _, labels in ip.build_eval_dataset(src, 4, counter=eval_counter)) == 6
  assert eval_counter.total == 1
  expected = (f"an image could not be read (--strict_data): {link} is a broken link (to "
              f"{target}); rerun without --strict_data to skip such files")
  with pytest.raises(UserError) as e:
    ip.check_source(src, strict=True, sample_size=1)  # Named even outside the sample.
  assert str(e.value) == expected
  _assert_strict_pipelines_stop_with(src, expected)


def test_a_file_gone_after_the_listing_is_skipped_or_named(image_folder):
  """A file deleted after the folder was listed (or not readable) fails only its own record:
  skipped (TF logs it) without --strict_data, with it an error naming the file."""
  root = image_folder(classes=("a", "b"), per_class=3, splits=("train",))
  src = datasets.load_source("folder", "train", root)
  gone = src.files[1]
  os.remove(gone)
  assert src.num_examples == 6 and not src.unreadable
  assert ip.check_source(src).num_checked == 5
  train = ip.build_train_dataset(src, 2, seed=0, repeat=False, finish_in_step=True)
  assert sum(int(labels.shape[0]) for _, labels in train) == 4
  assert sum(int(labels.shape[0]) for _, labels in ip.build_eval_dataset(src, 4)) == 5
  expected = (f"an image could not be read or decoded (--strict_data): {gone}; No such file or "
              "directory; rerun without --strict_data to skip such files")
  with pytest.raises(UserError) as e:
    ip.check_source(src, strict=True)
  assert str(e.value) == expected
  _assert_strict_pipelines_stop_with(src, expected)


def test_a_damaged_tfrecord_shard_is_named(image_folder, tmp_path):
  """A truncated shard is not one bad record that could be skipped: one sentence naming it."""
  from alexnet_tf.tools import make_tfrecords
  root = image_folder(classes=("a", "b"), per_class=3, splits=("train",))
  dst = str(tmp_path / "records")
  make_tfrecords.convert(root, dst, num_shards=2, log=lambda _: None)
  damaged = os.path.join(dst, "train-00001-of-00002.tfrecord")
  data = open(damaged, "rb").read()
  with open(damaged, "wb") as f:
    f.write(data[:len(data) * 2 // 3])
  src = datasets.load_source("tfrecord", "train", dst)  # Counts from metadata.json: no read.
  assert src.first_damaged_file() == damaged
  message = f"TFRecord file {damaged} is damaged (truncated record at "
  with pytest.raises(UserError, match=re.escape(message)):
    ip.check_source(src, sample_size=None)
  with pytest.raises(tf.errors.DataLossError) as e:
    list(ip.build_eval_dataset(src, 4))
  assert str(ip.damaged_data_error(src, e.value)).startswith(message)
  # A source that cannot say which file: the dataset's name instead.
  folder = datasets.load_source("folder", "train", root)
  assert str(ip.damaged_data_error(folder, e.value)).startswith(
      "a data file of --dataset=folder is damaged (truncated record at ")
  # A shard rewritten with another compression: said so, not "damaged".
  with tf.io.TFRecordWriter(damaged, tf.io.TFRecordOptions(compression_type="ZLIB")) as w:
    w.write(b"any record")
  expected = (f"TFRecord file {damaged} is ZLIB, but the split's first file is uncompressed: "
              "write all files of a split with one compression")
  with pytest.raises(UserError) as e:
    ip.check_source(src, sample_size=None)
  assert str(e.value) == expected


@pytest.mark.parametrize("malformed, reason", [
    ("no image", "Feature: image/encoded (data type: string) is required but could not be found."),
    ("not an Example", "not a tf.train.Example"),
], ids=["no image", "not an Example"])
def test_a_malformed_tfrecord_record_is_named(tmp_path, malformed, reason):
  """Records are parsed in batches, so a record that is not an image record cannot be skipped
  alone: one sentence naming it, not the parser's traceback. (TF's error for a record that is
  not a tf.train.Example quotes it, and reaches Python as a UnicodeDecodeError.)"""
  label = tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))
  good = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[encode_image(np.zeros((8, 8, 3), np.uint8))])), "image/class/label": label}
  bad = (tf.train.Example(features=tf.train.Features(feature={"image/class/label": label}))
         .SerializeToString() if malformed == "no image" else b"\x0a\xff\xff not an Example")
  path = str(tmp_path / "train-00000-of-00001")
  with tf.io.TFRecordWriter(path) as w:
    for k in range(5):
      w.write(bad if k == 3 else
              tf.train.Example(features=tf.train.Features(feature=good)).SerializeToString())
  # Counts and classes from metadata.json, as make_tfrecords writes it: no label scan at load.
  (tmp_path / "metadata.json").write_text(json.dumps({"num_classes": 1,
                                                      "files": {os.path.basename(path): 5}}))
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  message = (f"TFRecord record {path}:3 is not an image record ({reason}): each needs "
             "image/encoded (bytes) and image/class/label (int64); write it again or remove its "
             "file")
  with pytest.raises(UserError) as e:
    ip.check_source(src)
  assert str(e.value) == message
  for ds in (ip.build_train_dataset(src, 2, repeat=False), ip.build_eval_dataset(src, 2)):
    with pytest.raises(ip.DATA_ERRORS) as e:
      list(ds)
    with pytest.raises(UserError) as raised:
      ip.raise_data_error(e.value, src, strict=False)
    assert str(raised.value) == message


def test_eval_keeps_the_record_order_across_groups(train_source):
  # 60 records: two groups decoded by parallel workers, still in the source's order.
  order = [int(r["label"]) for r in train_source.records()]
  assert len(order) > ip.CHECK_GROUP and len(set(order)) > 1
  for strict in (False, True):
    ds = ip.build_eval_dataset(train_source, 7, strict=strict)
    assert np.concatenate([y.numpy() for _, y in ds]).tolist() == order


def test_check_source(corrupt_folder, image_folder):
  src = datasets.load_source("folder", "train", corrupt_folder)
  result = ip.check_source(src, sample_size=None)
  assert (result.num_checked, result.num_corrupt) == (10, 4)
  # Mostly corrupt: refused before training.
  root = image_folder(classes=("x",), per_class=1, splits=("train",))
  for i in range(3):
    with open(os.path.join(root, "train", "x", f"junk{i}.png"), "wb") as f:
      f.write(b"\x89PNG\r\n\x1a\n garbage IEND")  # Passes the cheap check, fails to decode.
  with pytest.raises(UserError, match="3 of 4 images are corrupt"):
    ip.check_source(datasets.load_source("folder", "train", root))


def _write_tfrecord(path, blobs, sizes):
  with tf.io.TFRecordWriter(path) as writer:
    for i, (blob, (height, width)) in enumerate(zip(blobs, sizes)):
      feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[blob])),
                 "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                 "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
                 "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[width]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())


def test_train_decode_paths_give_the_same_images(tmp_path):
  """Records at the fixed resolution (stored size, branch-free decode) and all others (full-size
  JPEG, PNG, unknown size) come out as `decode_for_train` makes them; a corrupt one is counted."""
  rng = np.random.default_rng(8)
  arrays = [smooth_image(rng, 256, 300), smooth_image(rng, 280, 256), smooth_image(rng, 400, 330),
            smooth_image(rng, 256, 256), smooth_image(rng, 300, 256)]
  blobs = [encode_image(arrays[0]), encode_image(arrays[1]), encode_image(arrays[2]),
           encode_image(arrays[3], "PNG"), encode_image(arrays[4]), b"\xff\xd8\xffjunk"]
  sizes = [(256, 300), (280, 256), (400, 330), (256, 256), (0, 0), (256, 256)]
  _write_tfrecord(str(tmp_path / "train-00000-of-00001"), blobs, sizes)
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  group = ip.with_validity(next(iter(src.records().batch(6))))
  unresized, others = ip.split_unresized(group, 227)
  assert unresized["label"].numpy().tolist() == [0, 1]
  assert others["label"].numpy().tolist() == [2, 3, 4, 5]
  counter = ip.CorruptCounter()
  kw = dict(seed=3, random_flip=False, pca_lighting=False, repeat=False, deterministic=True,
            counter=counter)
  # The whole epoch: the corrupt record may be counted after the good ones' batch is out.
  labels = [y for _, batch in ip.build_train_dataset(src, 5, **kw) for y in batch.numpy()]
  assert sorted(labels) == [0, 1, 2, 3, 4] and counter.total == 1
  # The same crops from the centre (random_crop=False), one path or the other; with
  # finish_in_step (train.py) the unresized records' decode runs inline (`map_inline`).
  for finish_in_step in (False, True):
    images, labels = next(iter(ip.build_train_dataset(
        src, 5, random_crop=False, finish_in_step=finish_in_step, **kw)))
    if finish_in_step:
      images = images[0]
    for image, label in zip(images.numpy(), labels.numpy()):
      expected = pp.decode_for_train(tf.constant(blobs[label]), tf.constant([14, 14]))
      np.testing.assert_array_equal(image, expected.numpy().astype(image.dtype), str(label))


@pytest.mark.parametrize("finish_in_step", [False, True])
def test_a_wrong_stored_size_loses_only_its_record(tmp_path, finish_in_step):
  """A full-size JPEG whose TFRecord says 256 pixels takes the unresized decode (inline with
  finish_in_step), fails there and is dropped on its own; with strict it stops the pipeline."""
  rng = np.random.default_rng(9)
  blobs = [encode_image(smooth_image(rng, 256, 300)), encode_image(smooth_image(rng, 400, 330)),
           encode_image(smooth_image(rng, 300, 256))]
  _write_tfrecord(str(tmp_path / "train-00000-of-00001"), blobs,
                  [(256, 300), (256, 330), (300, 256)])
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  kw = dict(seed=1, repeat=False, deterministic=True, finish_in_step=finish_in_step)
  assert sorted(int(y[0]) for _, y in ip.build_train_dataset(src, 1, **kw)) == [0, 2]
  with pytest.raises(tf.errors.InvalidArgumentError):
    list(ip.build_train_dataset(src, 1, strict=True, **kw))


@pytest.mark.parametrize("private_api", [True, False])
def test_map_inline_is_map(monkeypatch, private_api):
  """Also where TF lacks the private argument (`map_inline` falls back to `map`)."""
  if not private_api:
    monkeypatch.setattr(ip, "_MapDataset", None)
  ds = tf.data.Dataset.range(5)
  assert list(ip.map_inline(ds, lambda x: x * 2).as_numpy_iterator()) == [0, 2, 4, 6, 8]


def test_check_source_refuses_a_wrong_stored_size(tmp_path):
  """A known stored size must be the image's; one with a 0 in it is unknown (the pipeline then
  decodes the normal way), so it is accepted."""
  blob = encode_image(smooth_image(np.random.default_rng(0), 256, 300))
  _write_tfrecord(str(tmp_path / "train-00000-of-00001"), [blob, blob, blob],
                  [(256, 300), (0, 300), (256, 0)])
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  check = ip.check_source(src)
  assert (check.num_checked, check.num_corrupt) == (3, 0)
  kw = dict(seed=0, repeat=False, deterministic=True, strict=True)
  assert sorted(int(y[0]) for _, y in ip.build_train_dataset(src, 1, **kw)) == [0, 1, 2]
  _write_tfrecord(str(tmp_path / "train-00000-of-00001"), [blob, blob], [(256, 300), (300, 256)])
  with pytest.raises(UserError, match=r"stores its image size as 300x256 .* image is 256x300"):
    ip.check_source(src)


def test_undecodable_file_with_valid_markers_does_not_kill_the_run(image_folder):
  root = image_folder(classes=("x",), per_class=2, splits=("train",))
  with open(os.path.join(root, "train", "x", "junk.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n garbage IEND")
  src = datasets.load_source("folder", "train", root)
  # Only the undecodable record is dropped, not the batch it would have been in.
  assert [len(y) for _, y in ip.build_train_dataset(src, 2, repeat=False, seed=0)] == [2]
  assert [len(y) for _, y in ip.build_eval_dataset(src, 3)] == [2]


def test_webp_images_are_read_and_checked(tmp_path, caplog):
  """WebP files are images (a folder source ignored them, and a WebP record was "corrupt"); a
  truncated one is skipped and counted like any corrupt file; other files are ignored with a
  warning that names them (they were ignored silently)."""
  rng = np.random.default_rng(0)
  pixels = smooth_image(rng, 300, 260)
  webp = encode_image(pixels, "WEBP")
  files = {"a/0.png": encode_image(pixels, "PNG"), "a/1.webp": webp, "a/2.webp": webp[:-10],
           "b/0.webp": encode_image(smooth_image(rng, 240, 320), "WEBP"), "b/notes.txt": b"x",
           "b/scan.tif": b"II*\0"}
  for name, data in files.items():
    path = tmp_path / "data" / "train" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  (tmp_path / "data" / "train" / "b" / "more").mkdir()
  with caplog.at_level(logging.WARNING, logger="alexnet_tf.datasets"):
    src = datasets.load_source("folder", "train", str(tmp_path / "data"))
  assert src.num_examples == 4
  assert "Ignored 3 file(s)" in caplog.text and "b/more/, b/notes.txt, b/scan.tif" in caplog.text
  counter = ip.CorruptCounter()
  images = np.concatenate([x.numpy() for x, _ in ip.build_eval_dataset(src, 2, counter=counter)])
  assert len(images) == 3 and counter.total == 1
  assert [os.path.basename(f) for f in counter.recent_files] == ["2.webp"]
  np.testing.assert_array_equal(images[0], images[1])  # A PNG and a lossless WebP, same pixels.
  counter = ip.CorruptCounter()
  train = ip.build_train_dataset(src, 1, seed=0, repeat=False, counter=counter)
  assert sum(len(y) for _, y in train) == 3 and counter.total == 1
  # The check reads the RIFF header's size: a file shorter than it says, or another RIFF
  # format, is not a WebP. Nor is an animated WebP, which TF cannot decode to RGB (it was
  # dropped uncounted).
  frames = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (10, 200)]
  buf = io.BytesIO()
  frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
  animated = buf.getvalue()
  with pytest.raises(tf.errors.InvalidArgumentError, match="WebP Animation"):
    pp.decode_rgb(animated)
  assert ip.is_valid_image(tf.constant([webp, webp[:-1], webp + b"\0", b"RIFF",
                                        b"RIFF\x04\0\0\0WAVE", animated])).numpy().tolist() == [
                                            True, False, True, False, False, False]
  assert [bool(ip.is_valid_image(b)) for b in (webp, webp[:-1], animated)] == [True, False, False]
