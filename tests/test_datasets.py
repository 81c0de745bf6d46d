"""Tests of alexnet_tf.datasets and alexnet_tf.shapes: sources, sharding, errors."""

from __future__ import annotations

import os
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import datasets, input_pipeline, shapes
from alexnet_tf.errors import UserError
from conftest import encode_image, smooth_image

SPEC = {"image": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int64),
        "filename": tf.TensorSpec([], tf.string), "height": tf.TensorSpec([], tf.int64),
        "width": tf.TensorSpec([], tf.int64)}


def _all(ds):
  return [{k: v.numpy() for k, v in e.items()} for e in ds]


def test_folder_source(image_folder):
  root = image_folder(classes=("zebra", "ant", "cat"), per_class=2)
  src = datasets.load_source("folder", "train", root)
  assert (src.name, src.split, src.num_examples, src.num_classes) == ("folder", "train", 6, 3)
  assert src.class_names == ["ant", "cat", "zebra"]
  ds = src.records()
  assert ds.element_spec == SPEC
  recs = _all(ds)
  assert len(recs) == 6
  for r in recs:
    name = r["filename"].decode()
    assert src.class_names[r["label"]] == os.path.basename(os.path.dirname(name))
    assert r["image"] == open(name, "rb").read()


@pytest.mark.parametrize("alias", ["val", "test"])
def test_folder_validation_aliases(image_folder, alias):
  root = image_folder(splits=("train", alias), per_class=1)
  src = datasets.load_source("folder", "validation", root)
  assert src.num_examples == 2 and src.split == "validation"


def test_folder_validation_subset_of_train_classes(image_folder):
  root = image_folder(classes=("a", "b", "c"), per_class=1, splits=("train",))
  image_folder  # Validation has only class "c": its label must still be 2.
  os.makedirs(os.path.join(root, "validation", "c"))
  with open(os.path.join(root, "validation", "c", "x.png"), "wb") as f:
    f.write(encode_image(np.zeros((10, 10, 3), np.uint8), "PNG"))
  src = datasets.load_source("folder", "validation", root)
  assert src.num_classes == 3 and [r["label"] for r in _all(src.records())] == [2]


def test_folder_errors(image_folder, tmp_path):
  with pytest.raises(UserError, match="not a folder"):
    datasets.load_source("folder", "train", str(tmp_path / "missing"))
  with pytest.raises(UserError, match="--data_dir"):
    datasets.load_source("folder", "train", None)
  root = image_folder(splits=("train",), per_class=1)
  with pytest.raises(UserError, match="no folder for split 'validation'"):
    datasets.load_source("folder", "validation", root)
  os.makedirs(os.path.join(root, "train", "empty_class"))
  with open(os.path.join(root, "train", "empty_class", "notes.txt"), "w") as f:
    f.write("not an image")
  with pytest.raises(UserError, match="empty_class has no images"):
    datasets.load_source("folder", "train", root)
  # A label folder that cannot be listed (no permission; tests run as root, so simulated).
  real_scandir = os.scandir

  def scandir(path):
    if path.endswith("empty_class"):
      raise PermissionError(13, "Permission denied", path)
    return real_scandir(path)

  with mock.patch.object(datasets.os, "scandir", scandir), pytest.raises(UserError) as e:
    datasets.load_source("folder", "train", root)
  assert str(e.value) == ("cannot list the label folder "
                          f"{os.path.join(root, 'train', 'empty_class')}: Permission denied")
  empty = tmp_path / "empty" / "train"
  empty.mkdir(parents=True)
  with pytest.raises(UserError, match="empty"):
    datasets.load_source("folder", "train", str(tmp_path / "empty"))
  # Two layouts users bring, each with the fix in the message.
  for i in range(3):  # Images directly in the split folder (ImageNet's validation tar).
    (empty / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(b"")
  with pytest.raises(UserError, match=re.escape(
      f"{empty} has no label folders (expected <label>/*.jpg); its 3 images lie directly in it, "
      "as ImageNet's validation tar unpacks: move each into the folder of its label")):
    datasets.load_source("folder", "train", str(tmp_path / "empty"))
  with pytest.raises(UserError, match=re.escape(
      "(--data_dir is a split folder itself; pass the folder above it, " + root + ")")):
    datasets.load_source("folder", "train", os.path.join(root, "train"))


def test_unknown_dataset_and_imagenet_message(tmp_path):
  with pytest.raises(UserError, match="unknown --dataset=no_such_dataset_xyz"):
    datasets.load_source("no_such_dataset_xyz", "train", str(tmp_path))
  with pytest.raises(UserError) as e:
    datasets.load_source("imagenet2012", "train", str(tmp_path), str(tmp_path / "manual"))
  msg = str(e.value)
  assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
  assert str(tmp_path / "manual") in msg


@pytest.mark.parametrize("name, start, part", [
    ("imagenet2012:5.9.9", "--dataset=imagenet2012:5.9.9: Dataset imagenet2012 cannot be loaded "
                           "at version 5.9.9, only: ", ""),
    ("imagenette/bogus", "--dataset=imagenette/bogus: BuilderConfig bogus not found with version ",
     " (its configs: full-size-v2, 320px-v2, "),
    ("cifar10/x", "--dataset=cifar10/x: BuilderConfig x not found with version ",
     " (it has no configs)"),
    ("imagenet2012//", "--dataset=imagenet2012//: not a TFDS name; expected "
                       "NAME[/CONFIG][:VERSION], e.g. ", "imagenette/320px-v2"),
])
def test_tfds_version_or_config_it_does_not_have(tmp_path, name, start, part):
  # These were AssertionError/ValueError tracebacks, with TFDS's list of close configs empty.
  with pytest.raises(UserError) as e:
    datasets.load_source(name, "train", str(tmp_path))
  message = str(e.value)
  assert message.startswith(start) and part in message and "\n" not in message, message


_TINY_TFDS: list = []


def _tiny_tfds_dataset() -> str:
  """A TFDS dataset generated here (no download), registered once: version 1.1.0, and 1.0.0."""
  import tensorflow_datasets as tfds
  if not _TINY_TFDS:

    class AlexnetTfTinyImages(tfds.core.GeneratorBasedBuilder):  # Registered by its name.
      VERSION = tfds.core.Version("1.1.0")
      SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"),
                                     features=tfds.features.FeaturesDict({
                                         "image": tfds.features.Image(shape=(None, None, 3)),
                                         "label": tfds.features.ClassLabel(names=["a", "b"])}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(4), "validation": self._generate_examples(2)}

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {"image": np.full((8 + i, 9, 3), 40 * i, np.uint8), "label": i % 2}

    _TINY_TFDS.append("alexnet_tf_tiny_images")
  return _TINY_TFDS[0]


def test_data_dir_inside_a_prepared_tfds_dataset_is_refused(tmp_path):
  # --data_dir=~/tensorflow_datasets/NAME[/VERSION] made TFDS prepare the dataset again, inside
  # it (for imagenet2012: a request for the tars, or hours of preparation).
  name = _tiny_tfds_dataset()
  root = tmp_path / "tfds"
  assert datasets.load_source(name, "train", str(root)).num_examples == 4
  for inside in (root / name, root / name / "1.1.0"):
    with pytest.raises(UserError, match=re.escape(
        f"--data_dir={inside} is within TFDS's own folder for {name} (prepared in "
        f"{root / name / '1.1.0'}), not a TFDS data dir; pass the folder that holds {name}/: "
        f"--data_dir={root}")):
      datasets.load_source(name, "train", str(inside))
  assert not (root / name / name).exists() and not (root / name / "1.1.0" / name).exists()
  # A data dir that is only named like the dataset is one.
  named_alike = tmp_path / name
  assert datasets.load_source(name, "validation", str(named_alike)).num_examples == 2
  assert datasets.load_source(name, "validation", str(named_alike)).num_examples == 2


def test_another_prepared_tfds_version_is_named(tmp_path, monkeypatch):
  # After a TFDS upgrade moves the default version, the one prepared before was not mentioned:
  # the user only saw the download fail (for imagenet2012: "put the tars in ...").
  import requests
  import tensorflow_datasets as tfds
  name = _tiny_tfds_dataset()
  with pytest.raises(UserError, match=re.escape(  # Was a ValueError traceback.
      f"cannot prepare TFDS dataset {name}:1.0.0: The version of the dataset you are trying to "
      f"use ({name}/1.0.0) is too old for this version of TFDS so cannot be generated. Either")):
    datasets.load_source(f"{name}:1.0.0", "train", str(tmp_path))
  # Prepared by an earlier TFDS: this one's files, labelled 1.0.0.
  assert datasets.load_source(name, "train", str(tmp_path / "now")).num_examples == 4
  shutil.copytree(tmp_path / "now" / name / "1.1.0", tmp_path / name / "1.0.0")
  info = tmp_path / name / "1.0.0" / "dataset_info.json"
  info.write_text(info.read_text().replace('"1.1.0"', '"1.0.0"'))
  assert datasets.load_source(f"{name}:1.0.0", "train", str(tmp_path)).num_examples == 4

  def no_network(self, **kwargs):
    raise requests.exceptions.ConnectionError("Max retries exceeded")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with pytest.raises(UserError) as e:
    datasets.load_source(name, "train", str(tmp_path))
  assert str(e.value).startswith(f"could not download and prepare TFDS dataset {name} in "
                                 f"{tmp_path / name / '1.1.0'}: ConnectionError")
  assert str(e.value).endswith(f"; {name} is prepared in {tmp_path / name} at version 1.0.0: "
                               f"pass --dataset={name}:1.0.0 to use it"), str(e.value)
  assert datasets.load_source(f"{name}:1.0.0", "validation", str(tmp_path)).num_examples == 2


def test_tfds_download_failure_is_one_sentence(tmp_path, monkeypatch):
  import requests
  import tensorflow_datasets as tfds

  def no_network(self, **kwargs):
    raise requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='download.tensorflow.org', port=80): Max retries exceeded\n...")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with pytest.raises(UserError) as e:
    datasets.load_source("tf_flowers", "train", str(tmp_path))
  msg = str(e.value)
  assert msg.startswith(f"could not download and prepare TFDS dataset tf_flowers in {tmp_path}")
  assert "ConnectionError: HTTPConnectionPool" in msg and "\n" not in msg
  assert "--data_dir" in msg


def test_imagenet_with_broken_archives_is_one_sentence(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  for tar in datasets.IMAGENET_TARS:
    (manual / tar).write_bytes(b"")
  with pytest.raises(UserError) as e:
    datasets.load_source("imagenet2012", "train", str(tmp_path / "data"), str(manual))
  assert str(e.value).startswith("cannot prepare TFDS dataset imagenet2012: an archive could not "
                                 f"be read (ReadError: empty file); check the archives put in "
                                 f"{manual} (--manual_dir)")


def _make_records(root, tmp_path, name="rec", num_shards=2):
  from alexnet_tf.tools import make_tfrecords
  dst = str(tmp_path / name)
  make_tfrecords.convert(root, dst, num_shards=num_shards, log=lambda s: None)
  return dst


def test_tfrecord_source(image_folder, tmp_path):
  root = image_folder(classes=("a", "b"), per_class=3)
  dst = _make_records(root, tmp_path)
  src = datasets.load_source("tfrecord", "train", dst)
  assert (src.num_examples, src.num_classes, src.class_names) == (6, 2, ["a", "b"])
  ds = src.records()
  assert ds.element_spec == SPEC
  recs = _all(ds)
  assert sorted(r["filename"].decode() for r in recs) == sorted(
      os.path.join("train", c, f"{i}.jpg") for c in "ab" for i in range(3))
  for r in recs:
    assert r["filename"].decode().split(os.sep)[1] == "ab"[r["label"]]
    assert min(tf.image.extract_jpeg_shape(r["image"]).numpy()[:2]) <= 256
    # The stored size (image/height, image/width) is the JPEG's.
    assert [r["height"], r["width"]] == list(tf.image.extract_jpeg_shape(r["image"]).numpy()[:2])
  # Without metadata.json and labels.txt: counted by one pass, classes = max label + 1.
  os.remove(os.path.join(dst, "metadata.json"))
  os.remove(os.path.join(dst, "labels.txt"))
  src = datasets.load_source("tfrecord", "validation", dst)
  assert (src.num_examples, src.num_classes, src.class_names) == (6, 2, None)
  # A glob with {split}.
  src = datasets.load_source("tfrecord", "validation", os.path.join(dst, "{split}-*"))
  assert src.num_examples == 6
  with pytest.raises(UserError, match="matches no TFRecord"):
    datasets.load_source("tfrecord", "train", os.path.join(dst, "nothing-*"))


def test_tfrecord_folder_whose_name_has_glob_characters(image_folder, tmp_path):
  # The folder was globbed unescaped: "imagenet [v2]" matched nothing ("no TFRecord files").
  root = image_folder(classes=("a", "b"), per_class=3)
  dst = _make_records(root, tmp_path, name="imagenet [v2] *?", num_shards=1)
  assert datasets.load_source("tfrecord", "train", dst).num_examples == 6
  assert datasets.load_source("tfrecord", "validation", dst).num_examples == 6
  # One file named in full reads as itself; a glob is the user's own pattern, with a hint.
  shard = os.path.join(dst, "train-00000-of-00001.tfrecord")
  assert datasets.load_source("tfrecord", "train", shard).num_examples == 6
  with pytest.raises(UserError, match=re.escape("write '[[]' for a literal '['")):
    datasets.load_source("tfrecord", "train", os.path.join(dst, "train-*"))
  escaped = os.path.join(str(tmp_path), "imagenet [[]v2] [*][?]", "{split}-*")
  assert datasets.load_source("tfrecord", "validation", escaped).num_examples == 6


@pytest.mark.parametrize("compression", ["GZIP", "ZLIB"])
def test_compressed_tfrecords_are_read(image_folder, tmp_path, isolated_cache, compression):
  """TFRecords written with TFRecordOptions(compression_type=...) read like uncompressed ones
  (they were refused with "corrupted record at 0"); the compression is found at load."""
  plain = _make_records(image_folder(classes=("a", "b"), per_class=3, splits=("train",)),
                        tmp_path, num_shards=2)
  out = tmp_path / "compressed"
  out.mkdir()
  (out / "train-00000-of-00003.tfrecord").write_bytes(b"")  # An empty file tells nothing.
  for k in (0, 1):
    name = f"train-0000{k}-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(out / f"train-0000{k + 1}-of-00003.tfrecord"),
                              tf.io.TFRecordOptions(compression_type=compression)) as w:
      for record in tf.data.TFRecordDataset(os.path.join(plain, name)):
        w.write(record.numpy())
  src = datasets.load_source("tfrecord", "train", str(out))  # No metadata.json: counted.
  assert (src.compression, src.num_examples, src.num_classes) == (compression, 6, 2)
  expected = sorted((r["filename"], r["image"]) for r in _all(
      datasets.load_source("tfrecord", "train", plain).records()))
  assert sorted((r["filename"], r["image"]) for r in _all(src.records())) == expected
  assert src.first_damaged_file() is None and src.first_malformed_record() is None
  images, _ = next(iter(input_pipeline.build_train_dataset(src, 4, seed=0)))
  assert images.shape == (4, 227, 227, 3)
  # A truncated compressed shard is named; a file that is not a TFRecord in any of the three
  # ways: one sentence, without TF's graph context.
  damaged = out / "train-00002-of-00003.tfrecord"
  damaged.write_bytes(damaged.read_bytes()[:-100])
  assert src.first_damaged_file() == str(damaged)
  with pytest.raises(UserError, match=re.escape(f"TFRecord file {damaged} is damaged (")):
    datasets.load_source("tfrecord", "train", str(out))
  # A shard of another compression than the split's first file is named as such (it was
  # "corrupted record at 0", as if damaged).
  with tf.io.TFRecordWriter(str(damaged)) as w:
    for record in tf.data.TFRecordDataset(os.path.join(plain, "train-00000-of-00002.tfrecord")):
      w.write(record.numpy())
  with pytest.raises(UserError) as e:
    datasets.load_source("tfrecord", "train", str(out))
  assert str(e.value) == (f"TFRecord file {damaged} is uncompressed, but the split's first file "
                          f"is {compression}: write all files of a split with one compression")
  (out / "train-00000-of-00003.tfrecord").write_bytes(b"not a TFRecord file at all")
  with pytest.raises(UserError, match=re.escape(
      f"cannot read TFRecord file {out / 'train-00000-of-00003.tfrecord'}: corrupted record at 0 "
      "(Is this even a TFRecord file?) (read uncompressed, and as GZIP and ZLIB)")):
    datasets.load_source("tfrecord", "train", str(out))


def test_tfrecord_counts_without_metadata_are_cached(image_folder, tmp_path, isolated_cache,
                                                    monkeypatch):
  """Shards without metadata.json (the Model Garden's) are counted in one pass over them, once:
  for ImageNet that pass takes minutes, at every start and resume of train.py."""
  dst = _make_records(image_folder(classes=("a", "b"), per_class=3), tmp_path, num_shards=2)
  os.remove(os.path.join(dst, "metadata.json"))
  scans = []
  real_scan = datasets._scan_labels
  monkeypatch.setattr(datasets, "_scan_labels", lambda files, compression: scans.append(files)
                      or real_scan(files, compression))
  first = datasets.load_source("tfrecord", "train", dst)
  assert (first.num_examples, first.file_counts, len(scans)) == (6, [3, 3], 1)
  cached = os.listdir(os.path.join(isolated_cache, "tfrecord_counts"))
  assert len(cached) == 1 and cached[0].endswith(".json")
  again = datasets.load_source("tfrecord", "train", dst)
  assert (again.num_examples, again.file_counts, again.num_classes, len(scans)) == (6, [3, 3], 2, 1)
  # A shard written again (another size or time) is counted again, as is a damaged cache file.
  shard = first.files[0]
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  with tf.io.TFRecordWriter(shard) as w:
    for record in records[:2]:
      w.write(record)
  assert datasets.load_source("tfrecord", "train", dst).num_examples == 5 and len(scans) == 2
  for cache_file in os.listdir(os.path.join(isolated_cache, "tfrecord_counts")):
    with open(os.path.join(isolated_cache, "tfrecord_counts", cache_file), "w") as f:
      f.write('{"counts": [2')
  assert datasets.load_source("tfrecord", "train", dst).num_examples == 5 and len(scans) == 3
  # A cache that cannot be written: counted each time, no error.
  monkeypatch.setenv("ALEXNET_TF_CACHE", os.path.join(dst, "labels.txt", "cache"))
  assert datasets.load_source("tfrecord", "train", dst).num_examples == 5 and len(scans) == 4


def test_tfrecord_labels_beyond_labels_txt_are_refused(tmp_path):
  """TF-Slim's ImageNet shards count labels from 1: with a labels.txt of one name per class,
  the highest label has no class (a traceback in the first training step on a CPU, NaN on a
  GPU), so it is refused when the source is loaded."""
  jpeg = encode_image(smooth_image(np.random.default_rng(0), 8, 8), "JPEG")
  with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as writer:
    for label in (1, 2, 1):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
          "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      })).SerializeToString())
  (tmp_path / "labels.txt").write_text("cat\ndog\n")
  with pytest.raises(UserError, match=r"labels go up to 2, but .*labels.txt names 2 classes"):
    datasets.load_source("tfrecord", "train", str(tmp_path))
  (tmp_path / "labels.txt").write_text("background\ncat\ndog\n")
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  assert (src.num_examples, src.num_classes) == (3, 3)
  os.remove(tmp_path / "labels.txt")
  assert datasets.load_source("tfrecord", "train", str(tmp_path)).num_classes == 3


def _write_examples(path, features_per_record):
  with tf.io.TFRecordWriter(path) as w:
    for features in features_per_record:
      w.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def _bytes(*values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


@pytest.mark.parametrize("features, message", [
    ({"image": _bytes(b"x"), "label": _ints(0)},
     r"its first record has image, label \(Feature: image/class/label \(data type: int64\) is "
     r"required but could not be found.\); TFDS's own files are read with --dataset=NAME"),
    ({"image/encoded": _ints(1, 2), "image/class/label": _ints(0)},
     r"its first record has image/class/label, image/encoded \(Key: image/encoded, Data types "
     r"don't match"),
    ({"image/encoded": _bytes(b"x"), "image/class/label": _ints(0, 1)},
     r"its first record has .* \(Key: image/class/label, Number of int64 values != expected. "
     r"Values size: 2"),
    ({"image/encoded": _bytes(b"x"), "image/class/label": _bytes(b"cat")},
     r"its first record has .* \(Key: image/class/label, Data types don't match. Data type: "
     r"string"),
    (None, r"its first record is not a tf.train.Example"),
], ids=["TFDS's keys", "int image", "two labels", "string label", "not an Example"])
def test_tfrecords_of_another_convention_are_refused(tmp_path, features, message):
  """Before anything reads them (was: a traceback from the parser, mid-check or mid-run)."""
  path = str(tmp_path / "train-00000-of-00001")
  if features is None:
    with tf.io.TFRecordWriter(path) as w:
      w.write(b"\x0a\xff\xff not a protocol buffer")
  else:
    _write_examples(path, [features])
  with pytest.raises(UserError, match=f"TFRecord file {re.escape(path)} is not of image records: "
                     "each needs image/encoded \\(bytes\\) and image/class/label \\(int64\\), "
                     f"but {message}"):
    datasets.load_source("tfrecord", "train", str(tmp_path))


def test_a_malformed_tfrecord_record_is_named(tmp_path):
  """A bad record after a good first one: found on the error path, named FILE:K."""
  good = {"image/encoded": _bytes(encode_image(np.zeros((8, 8, 3), np.uint8))),
          "image/class/label": _ints(1)}
  paths = [str(tmp_path / f"train-0000{i}-of-00002") for i in range(2)]
  _write_examples(paths[0], [good] * 3)
  _write_examples(paths[1], [good] * 2 + [{"image/class/label": _ints(0)}] + [good])
  src = datasets.load_source("tfrecord", "train", str(tmp_path))
  assert src.num_examples == 7
  assert src.first_malformed_record() == (
      f"{paths[1]}:2", "Feature: image/encoded (data type: string) is required but could not "
      "be found.")
  _write_examples(paths[1], [good])
  assert datasets.load_source("tfrecord", "train", str(tmp_path)).first_malformed_record() is None
  # Not a tf.train.Example at all (TF's message then is not UTF-8), found by the label scan.
  good_record = tf.train.Example(features=tf.train.Features(feature=good)).SerializeToString()
  with tf.io.TFRecordWriter(paths[1]) as w:
    for record in (good_record, b"\x0a\xff\xff not a protocol buffer", good_record):
      w.write(record)
  with pytest.raises(UserError, match=f"^TFRecord record {re.escape(paths[1])}:1 is not an image "
                     r"record \(not a tf.train.Example\): each needs image/encoded \(bytes\) and "
                     r"image/class/label \(int64\); write it again or remove its file$"):
    datasets.load_source("tfrecord", "train", str(tmp_path))


def test_tfds_mock_source():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=5):
    src = datasets.load_source("tf_flowers", "train")
    assert src.num_examples == 5 and src.num_classes == 5 and len(src.class_names) == 5
    ds = src.records()
    assert ds.element_spec == SPEC
    recs = _all(ds)
    assert len(recs) == 5
    assert all(tf.io.decode_image(r["image"]).shape[-1] == 3 for r in recs)


def _tfds_builder(builder_name, image_feature, label_feature, images):
  """A real TFDS builder class of one train split holding `images` (label i % 2)."""
  import tensorflow_datasets as tfds

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    name = builder_name

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": image_feature, "label": label_feature}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, image in enumerate(images):
        yield i, {"image": image, "label": i % 2}

  return Builder


def test_tfds_dataset_prepared_locally(tmp_path):
  """A TFDS dataset read by name from --data_dir (no code registered): greyscale 28×28 PNGs,
  only a train split, as MNIST-like datasets and tf_flowers have."""
  import tensorflow_datasets as tfds
  images = [np.full((28, 28, 1), 10 * i, np.uint8) for i in range(20)]
  builder = _tfds_builder("alexnet_tf_test_grey", tfds.features.Image(shape=(28, 28, 1)),
                          tfds.features.ClassLabel(names=["even", "odd"]), images)
  builder(data_dir=str(tmp_path)).download_and_prepare()
  src = datasets.load_source("alexnet_tf_test_grey", "validation", str(tmp_path))
  assert (src.tfds_split, src.num_examples, src.class_names) == ("train[90%:]", 2, ["even", "odd"])
  assert src.records().element_spec == SPEC
  batches = list(input_pipeline.build_eval_dataset(src, batch_size=2))
  assert len(batches) == 1
  pixels, labels = batches[0][0].numpy(), batches[0][1].numpy()
  assert pixels.shape == (2, 227, 227, 3)
  for image, label in zip(pixels, labels):  # Upscaled and made RGB: image i is grey 10 * i.
    assert np.all(image == image[0, 0, 0]) and image[0, 0, 0] % 10 == 0
    assert label == image[0, 0, 0] // 10 % 2


@pytest.mark.parametrize("image_feature, label_feature, message", [
    (lambda f: f.Tensor(shape=(8, 8, 3), dtype=np.uint8), lambda f: f.ClassLabel(num_classes=2),
     r"its 'image' feature is tfds.features.Tensor, but .* reads .*tfds.features.Image of uint8"),
    (lambda f: f.Image(shape=(8, 8, 1), dtype=np.float32), lambda f: f.ClassLabel(num_classes=2),
     r"its 'image' feature is tfds.features.Image of float32, but"),
    (lambda f: f.Image(shape=(8, 8, 3)), lambda f: f.Tensor(shape=(), dtype=np.int64),
     r"its 'label' feature is tfds.features.Tensor, not a ClassLabel with its number of"),
], ids=["raw pixel tensor", "float32 image", "tensor label"])
def test_tfds_dataset_the_pipeline_cannot_read_is_refused(tmp_path, image_feature, label_feature,
                                                          message):
  """Raw pixel tensors, float images (packed bytes in a PNG) and labels without a class count
  would otherwise give a traceback mid-pipeline, or worse, garbage pixels."""
  import tensorflow_datasets as tfds
  image = image_feature(tfds.features)
  value = np.zeros(image.shape, image.np_dtype)
  _tfds_builder("alexnet_tf_test_unusable", image, label_feature(tfds.features),
                [value, value])(data_dir=str(tmp_path)).download_and_prepare()
  with pytest.raises(UserError, match="TFDS dataset alexnet_tf_test_unusable: " + message):
    datasets.load_source("alexnet_tf_test_unusable", "train", str(tmp_path))


def test_same_element_spec_everywhere(image_folder, tmp_path, shapes_root):
  root = image_folder(per_class=1)
  specs = [
      datasets.load_source("folder", "train", root).records().element_spec,
      datasets.load_source("tfrecord", "train", _make_records(root, tmp_path)).records()
      .element_spec,
      datasets.load_source("shapes", "train", shapes_root).records().element_spec,
      datasets.in_memory_source([b"x"], [0]).records().element_spec,
  ]
  assert all(s == SPEC for s in specs)


def _shard_union(src, n):
  names = []
  for i in range(n):
    ctx = tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i,
                                     num_replicas_in_sync=n)
    part = [r["filename"] for r in _all(src.records(ctx))]
    assert len(part) == src.shard_num_examples(ctx)
    names += part
  return names


@pytest.mark.parametrize("num_shards", [1, 3])
def test_tfrecord_sharding_covers_each_record_once(image_folder, tmp_path, num_shards):
  root = image_folder(per_class=4, splits=("train",))
  src = datasets.load_source("tfrecord", "train", _make_records(root, tmp_path,
                                                                num_shards=num_shards))
  names = _shard_union(src, 2)
  assert sorted(names) == sorted(r["filename"] for r in _all(src.records()))
  assert len(set(names)) == 8


def test_folder_sharding_and_shuffle(shapes_root):
  src = datasets.load_source("shapes", "train", shapes_root)
  names = _shard_union(src, 3)
  assert len(names) == len(set(names)) == src.num_examples
  a = [r["filename"] for r in _all(src.records(shuffle=True, seed=1))]
  b = [r["filename"] for r in _all(src.records(shuffle=True, seed=1))]
  assert a == b and sorted(a) == sorted(names) and a != sorted(a)


def test_tfds_sharding_with_one_file():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=7):
    src = datasets.load_source("tf_flowers", "train")
    ctx = tf.distribute.InputContext(2, 1, 2)
    assert src.shard_num_examples(ctx) == 3


def test_shapes_generate(tmp_path, shapes_root):
  assert sorted(os.listdir(os.path.join(shapes_root, "train"))) == sorted(shapes.CLASS_NAMES)
  files = tf.io.gfile.glob(os.path.join(shapes_root, "train", "*", "*.jpg"))
  assert len(files) == 60
  for f in files[:10]:
    h, w, _ = tf.image.extract_jpeg_shape(tf.io.read_file(f)).numpy()
    assert 256 <= min(h, w) <= 320 and max(h, w) <= 1.5 * min(h, w) + 1
  src = datasets.load_source("shapes", "validation", shapes_root)
  assert (src.name, src.num_examples, src.num_classes) == ("shapes", 24, 6)
  # Deterministic: the same seed gives the same bytes; idempotent: not rewritten.
  other = shapes.generate(str(tmp_path / "again"), 60, 24)
  same = os.path.join(other, "train", "star", "train_000004.jpg")
  assert open(same, "rb").read() == open(os.path.join(shapes_root, "train", "star",
                                                        "train_000004.jpg"), "rb").read()
  mtime = os.path.getmtime(same)
  shapes.generate(other, 60, 24)
  assert os.path.getmtime(same) == mtime
  # A cache of other parameters is replaced.
  shapes.generate(other, 66, 24)
  assert shapes.is_complete(other, 66, 24) and not shapes.is_complete(other, 60, 24)
  # Shapes images without the marker are a copy (generate writes the folder whole, marker
  # included): a user's subset of shapes, given to evaluate.py without --dataset=folder, was
  # replaced by the whole dataset and evaluated without a word.
  subset = tmp_path / "subset"
  shutil.copytree(os.path.join(other, "validation"), subset / "validation")
  with pytest.raises(UserError, match=re.escape(
      f"--data_dir={subset} holds files that are not the built-in shapes dataset's (e.g. "
      f"{os.path.join('validation', '')}")):
    shapes.generate(str(subset), 60, 24)
  assert len(os.listdir(subset / "validation" / "circle")) == 4
  # A folder with foreign files is refused, not deleted.
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "mine.txt").write_text("x")
  with pytest.raises(UserError, match="holds files that are not the built-in shapes dataset's"):
    shapes.generate(str(foreign), 60, 24)


def test_shapes_default_dir(isolated_cache):
  assert shapes.default_dir() == os.path.join(isolated_cache, "shapes")


def test_shapes_in_an_unwritable_place_is_one_sentence(tmp_path):
  (tmp_path / "a_file").write_text("")
  for root in (tmp_path / "a_file" / "shapes", tmp_path / "a_file"):
    with pytest.raises(UserError, match=f"cannot write the shapes dataset to {root}: .*; pass "
                                        r"--data_dir \(or set \$ALEXNET_TF_CACHE\)"):
      shapes.generate(str(root), num_train=6, num_validation=6)
  assert sorted(os.listdir(tmp_path)) == ["a_file"]  # No partial folder left behind.


def test_in_memory_source_errors():
  with pytest.raises(UserError):
    datasets.in_memory_source([], [])
  with pytest.raises(UserError):
    datasets.in_memory_source([b"x"], [0, 1])
  src = datasets.in_memory_source([encode_image(smooth_image(np.random.default_rng(0), 9, 9))],
                                  [3])
  assert src.num_classes == 4


def test_shapes_never_replaces_a_users_folder(tmp_path, image_folder):
  """--dataset=shapes is the default, so `train.py --data_dir=mydata` without --dataset=folder
  pointed shapes at the user's own train/ and validation/, which it deleted and regenerated."""
  root = image_folder(classes=("cat", "dog"), per_class=1)
  before = sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)
  with pytest.raises(UserError, match=re.escape(
      f"--data_dir={root} holds files that are not the built-in shapes dataset's (e.g. "
      f"{os.path.join('train', 'cat')}, {os.path.join('train', 'dog')}); for your own images "
      "pass --dataset=folder")):
    datasets.load_source("shapes", "train", root)
  assert sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files) == before


def test_a_folder_named_like_an_image_is_not_an_image(image_folder):
  """A sub-folder `x.jpg` was listed as an image: counted in the split, skipped as corrupt,
  and a traceback ("Is a directory") with --strict_data."""
  root = image_folder(classes=("cat", "dog"), per_class=2)
  os.makedirs(os.path.join(root, "train", "cat", "more.jpg"))
  with mock.patch.object(datasets._log, "warning") as warning:
    src = datasets.load_source("folder", "train", root)
  assert src.num_examples == 4 and not any(f.endswith("more.jpg") for f in src.files)
  assert warning.call_args[0][-1] == os.path.join("cat", "more.jpg") + "/"
  assert input_pipeline.check_source(src, strict=True).num_corrupt == 0


def test_tfds_features_are_checked_before_a_download(tmp_path):
  """glue has no image: it was downloaded and prepared (minutes, or retries offline) before
  being refused."""
  with mock.patch.object(datasets, "_prepare", side_effect=AssertionError("prepared")), \
      pytest.raises(UserError, match="TFDS dataset glue is not an image classification dataset"):
    datasets.load_source("glue", "train", str(tmp_path))


@pytest.mark.parametrize("name", ["Folder", "TFRecord", "SHAPES"])
def test_a_builtin_dataset_in_other_case_is_suggested(name, tmp_path):
  with pytest.raises(UserError, match=re.escape(
      f"unknown --dataset={name}: did you mean --dataset={name.lower()}?")):
    datasets.load_source(name, "train", str(tmp_path))


def test_labels_txt_and_metadata_json_must_agree(image_folder, tmp_path):
  """labels.txt is read line by line, stripped; make_tfrecords' metadata.json keeps the exact
  names, so it gives them, and a labels.txt that names other classes is refused."""
  from alexnet_tf.tools import make_tfrecords
  root = image_folder(classes=(" lead", "trail ", "z"), per_class=1)
  out = str(tmp_path / "rec")
  make_tfrecords.convert(root, out, log=lambda _: None)
  assert datasets.load_source("tfrecord", "train", out).class_names == [" lead", "trail ", "z"]
  with open(os.path.join(out, "labels.txt"), "w") as f:
    f.write("lead\nz\ntrail\n")
  with pytest.raises(UserError, match=re.escape(
      f"{out}/labels.txt and {out}/metadata.json disagree on the name of class 1: 'z' against "
      "'trail '; fix or remove labels.txt")):
    datasets.load_source("tfrecord", "train", out)
