"""Tests of the dataset tools (make_tfrecords, dataset_stats) and alexnet_tf.flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import datasets, flags as data_flags, input_pipeline as ip
from alexnet_tf.errors import UserError
from alexnet_tf.tools import dataset_stats, make_tfrecords
from conftest import encode_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, home=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **({"HOME": str(home)} if home else {}))
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=240)


def test_make_tfrecords(image_folder, tmp_path):
  root = image_folder(classes=("a", "b"), per_class=3, sizes=((600, 400), (100, 120)))
  with open(os.path.join(root, "train", "a", "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xffnot really")
  logs = []
  with mock.patch.object(make_tfrecords, "PROGRESS_EVERY", 4):
    meta = make_tfrecords.convert(root, str(tmp_path / "out"), num_shards=2, log=logs.append)
  assert meta["splits"]["train"] == {"num_examples": 6, "num_shards": 2}
  assert [line for line in logs if "converted" in line] == [
      "train: 4 of 7 images converted", "validation: 4 of 6 images converted"]
  assert meta["skipped"]["train"] == [os.path.join("train", "a", "broken.jpg")]
  assert any("broken.jpg" in line for line in logs)
  src = datasets.load_source("tfrecord", "train", str(tmp_path / "out"))
  sizes = []
  for r in src.records():
    h, w, c = tf.image.extract_jpeg_shape(r["image"]).numpy()
    sizes.append((h, w))
    assert c == 3
  # Shorter side 256 (never upscaled), aspect ratio kept.
  assert sorted(set(sizes)) == [(100, 120), (384, 256)]
  images, labels = next(iter(ip.build_train_dataset(src, 4, seed=0)))
  assert images.shape == (4, 227, 227, 3)
  # Again with another shard count: refused (both runs' shards would be read as one dataset).
  with pytest.raises(UserError, match="already holds TFRecords"):
    make_tfrecords.convert(root, str(tmp_path / "out"), num_shards=1, log=logs.append)
  assert len(os.listdir(tmp_path / "out")) == 2 + 2 + 2  # Nothing written or removed.
  # Shards that metadata.json does not list (copied in by hand, say): refused, not read.
  tf.io.gfile.copy(str(tmp_path / "out" / "train-00000-of-00002.tfrecord"),
                   str(tmp_path / "out" / "train-00000-of-00001.tfrecord"))
  with pytest.raises(UserError, match="train-00000-of-00001.tfrecord is not among the files"):
    datasets.load_source("tfrecord", "train", str(tmp_path / "out"))
  # Named by a glob, the files are read as given.
  glob = str(tmp_path / "out" / "train-*-of-00002.tfrecord")
  assert datasets.load_source("tfrecord", "train", glob).num_examples == 6


def test_make_tfrecords_cli(image_folder, tmp_path):
  root = image_folder(per_class=1, splits=("train", "val"))
  out = _run("alexnet_tf.tools.make_tfrecords", root, str(tmp_path / "rec"), "--num_shards=1")
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "rec")) == [
      "labels.txt", "metadata.json", "train-00000-of-00001.tfrecord",
      "validation-00000-of-00001.tfrecord"]
  bad = _run("alexnet_tf.tools.make_tfrecords", str(tmp_path / "nowhere"), str(tmp_path / "x"))
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert f"error: SRC={tmp_path / 'nowhere'} is not a folder" in bad.stderr, bad.stderr
  # DST a file, or under one: one sentence before any image is read (was a traceback).
  (tmp_path / "file").write_text("")
  for dst, message in [(tmp_path / "file", f"DST '{tmp_path / 'file'}' exists and is not a "
                        "directory."),
                       (tmp_path / "file" / "x", f"DST '{tmp_path / 'file' / 'x'}' cannot be "
                        f"created: '{tmp_path / 'file'}' is not a directory.")]:
    bad = _run("alexnet_tf.tools.make_tfrecords", root, str(dst))
    assert bad.returncode == 1 and f"error: {message}" in bad.stderr, bad.stderr
  # A folder that cannot be created even by root (checks that trust os.access pass there).
  bad = _run("alexnet_tf.tools.make_tfrecords", root, "/proc/alexnet_tf_out")
  assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
  assert "error: " in bad.stderr and "/proc/alexnet_tf_out" in bad.stderr, bad.stderr
  # '~' quoted, or inside --flag=~/x, reaches the program unexpanded: it means HOME all the same
  # (it wrote a folder named '~' in the current one).
  home = tmp_path / "home"
  home.mkdir()
  out = _run("alexnet_tf.tools.make_tfrecords", root, "~/rec", home=home)
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.path.isfile(home / "rec" / "metadata.json") and not os.path.exists(
      os.path.join(REPO, "~"))


def test_make_tfrecords_skips_what_training_would_skip(image_folder, tmp_path):
  """A palette BMP decoded to grey was baked into the shards; the skipped list came out in
  shuffled order; a class name with a line break broke labels.txt."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = image_folder(classes=("a", "b"), per_class=2, splits=("train",))
  for name in ("z.bmp", "m.bmp"):
    Image.fromarray(np.full((20, 30, 3), (200, 50, 100), np.uint8)).convert("P").save(
        os.path.join(root, "train", "b", name))
  (tmp_path / "x.jpg").write_bytes(b"not an image")
  os.symlink(tmp_path / "x.jpg", os.path.join(root, "train", "a", "y.jpg"))
  meta = make_tfrecords.convert(root, str(tmp_path / "out"), log=lambda _: None)
  assert meta["skipped"]["train"] == [os.path.join("train", "a", "y.jpg"),
                                      os.path.join("train", "b", "m.bmp"),
                                      os.path.join("train", "b", "z.bmp")]
  assert meta["splits"]["train"]["num_examples"] == 4
  os.makedirs(os.path.join(root, "train", "new\nline"))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "train", "new\nline",
                                                                   "0.jpg"))
  with pytest.raises(UserError, match=re.escape(
      "the class folder 'new\\nline' in " + root + " has a line break in its name")):
    make_tfrecords.convert(root, str(tmp_path / "out2"), log=lambda _: None)


class _FailingWriter(tf.io.TFRecordWriter):
  """A TFRecordWriter whose writes fail after the first few, as on a full disk or a Ctrl-C."""

  writes = 0
  error: BaseException = tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  def write(self, record):
    type(self).writes += 1
    if type(self).writes > 3:
      raise type(self).error
    super().write(record)


@pytest.mark.parametrize("error", [tf.errors.ResourceExhaustedError(None, None, "disk full"),
                                   KeyboardInterrupt()])
def test_make_tfrecords_interrupted_leaves_no_shards(image_folder, tmp_path, monkeypatch, error):
  # The shards of an interrupted run used to stay in DST, and `--dataset=tfrecord` read them
  # (without metadata.json) as a smaller dataset; a full disk was a traceback.
  root = image_folder(classes=("a", "b"), per_class=3, splits=("train", "val"))
  out = tmp_path / "out"
  out.mkdir()
  (out / ".train-00000-of-00009.tfrecord.partial").write_bytes(b"left by a killed run")
  monkeypatch.setattr(_FailingWriter, "writes", 0)
  monkeypatch.setattr(_FailingWriter, "error", error)
  monkeypatch.setattr(tf.io, "TFRecordWriter", _FailingWriter)
  expected = (pytest.raises(KeyboardInterrupt) if isinstance(error, KeyboardInterrupt) else
              pytest.raises(UserError, match=re.escape(
                  f"cannot write the TFRecords in DST={out}: disk full (nothing was kept)")))
  with expected:
    make_tfrecords.convert(root, str(out), num_shards=2, log=lambda _: None)
  assert os.listdir(out) == []
  with pytest.raises(UserError, match="no TFRecord files for split 'train'"):
    datasets.load_source("tfrecord", "train", str(out))
  # The next run writes everything, also over a killed run's leftovers.
  (out / ".train-00000-of-00009.tfrecord.partial").write_bytes(b"left by a killed run")
  monkeypatch.setattr(_FailingWriter, "writes", -100)
  meta = make_tfrecords.convert(root, str(out), num_shards=2, log=lambda _: None)
  assert sorted(os.listdir(out)) == [
      "labels.txt", "metadata.json", "train-00000-of-00002.tfrecord",
      "train-00001-of-00002.tfrecord", "validation-00000-of-00002.tfrecord",
      "validation-00001-of-00002.tfrecord"]
  assert meta["splits"]["train"]["num_examples"] == 6
  assert datasets.load_source("tfrecord", "validation", str(out)).num_examples == 6


_CTRL_C_AFTER_FIRST_RECORD = """
import os, runpy, signal, sys, time
import tensorflow as tf

# As in a terminal: a background job (CI started with `&`) inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Writer(tf.io.TFRecordWriter):
  def write(self, record):
    super().write(record)
    os.kill(os.getpid(), signal.SIGINT)  # A real Ctrl-C, mid-conversion.
    time.sleep(5)

tf.io.TFRecordWriter = Writer
sys.argv = ["make_tfrecords", *sys.argv[1:]]
runpy.run_module("alexnet_tf.tools.make_tfrecords", run_name="__main__")
"""


def test_ctrl_c_in_a_tool_is_one_line_and_keeps_nothing(image_folder, tmp_path):
  # Ctrl-C used to print Python's KeyboardInterrupt traceback (the cleanup itself was right).
  root = image_folder(classes=("a", "b"), per_class=2, splits=("train", "val"))
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-c", _CTRL_C_AFTER_FIRST_RECORD, root, str(out)],
                        capture_output=True, text=True, cwd=REPO, timeout=240,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 130, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C).", proc.stderr
  assert os.listdir(out) == []


def _flat_colour_dataset(root, colours):
  """PNG images of one flat colour each: their pixel covariance is exactly that of `colours`."""
  for i, c in enumerate(colours):
    d = os.path.join(root, "train", "c")
    os.makedirs(d, exist_ok=True)
    image = np.broadcast_to(np.asarray(c, np.uint8), (256, 256 + 64 * (i % 2), 3))
    with open(os.path.join(d, f"{i}.png"), "wb") as f:
      f.write(encode_image(image, "PNG"))
  return root


def test_dataset_stats_recovers_known_covariance(tmp_path):
  rng = np.random.default_rng(0)
  # Colours from a known anisotropic Gaussian, rounded to integers.
  mix = np.array([[40.0, 0, 0], [20, 15, 0], [-10, 5, 4]])
  colours = np.clip(np.round(np.array([120, 110, 100]) + rng.normal(size=(40, 3)) @ mix.T),
                    0, 255).astype(np.uint8)
  root = _flat_colour_dataset(str(tmp_path / "flat"), colours)
  logs = []
  with mock.patch.object(dataset_stats, "PROGRESS_EVERY", 15):
    stats = dataset_stats.compute_stats(datasets.load_source("folder", "train", root),
                                        mean_image=True, batch_size=16, log=logs.append)
  assert logs == ["16 of 40 images", "32 of 40 images"]  # Progress, each 15 images.
  c = colours.astype(np.float64)
  expected_cov = np.cov(c, rowvar=False, bias=True)
  np.testing.assert_allclose(stats["mean"], c.mean(0), atol=1e-6)
  np.testing.assert_allclose(stats["covariance"], expected_cov, atol=1e-6 * expected_cov.max())
  values = stats["eigenvalues"]
  vectors = stats["eigenvectors"]
  assert list(values) == sorted(values, reverse=True) and stats["num_images"] == 40
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=0), 1.0, atol=1e-9)
  np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, expected_cov,
                             atol=1e-6 * expected_cov.max())
  np.testing.assert_allclose(stats["mean_image"][100, 7], c.mean(0), atol=1e-6)
  # The JSON round-trips through load_stats.
  doc = dataset_stats.write_stats(stats, str(tmp_path / "s.json"), dataset="folder",
                                  split="train", mean_image_path=str(tmp_path / "m.npy"))
  loaded = data_flags.load_stats(str(tmp_path / "s.json"))
  assert loaded["mean"] == doc["mean"] and loaded["mean_image"] == str(tmp_path / "m.npy")
  assert np.load(loaded["mean_image"]).shape == (256, 256, 3)
  # A write that fails half-way (a full disk) leaves the earlier files as they were (it used
  # to leave a truncated JSON, which train.py --stats then refused).
  before = (tmp_path / "s.json").read_bytes(), (tmp_path / "m.npy").read_bytes()

  def dump_half_then_fail(obj, f, **kwargs):
    f.write(json.dumps(obj, **kwargs)[:50])
    raise OSError(28, "No space left on device")

  with mock.patch.object(dataset_stats.json, "dump", dump_half_then_fail):
    with pytest.raises(OSError, match=re.escape(f"No space left on device: "
                                                f"'{tmp_path / 's.json'}'")):
      dataset_stats.write_stats(dict(stats, num_images=39), str(tmp_path / "s.json"),
                                dataset="folder", split="train")
  assert ((tmp_path / "s.json").read_bytes(), (tmp_path / "m.npy").read_bytes()) == before
  assert sorted(os.listdir(tmp_path)) == ["flat", "m.npy", "s.json"]


def test_dataset_stats_on_damaged_tfrecords_is_one_sentence(image_folder, tmp_path):
  """A truncated shard, or a record that is not an image record, stops it with the sentence
  train.py and evaluate.py give (was: DataLossError / InvalidArgumentError tracebacks)."""
  dst = str(tmp_path / "records")
  make_tfrecords.convert(image_folder(per_class=3, splits=("train",)), dst, num_shards=1,
                         log=lambda _: None)
  shard = os.path.join(dst, "train-00000-of-00001.tfrecord")
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  with tf.io.TFRecordWriter(shard) as w:
    for k, record in enumerate(records):
      w.write(b"\x0a\xff\xff not an Example" if k == 4 else record)
  with pytest.raises(UserError, match=f"^TFRecord record {re.escape(shard)}:4 is not an image "
                     "record"):
    dataset_stats.compute_stats(datasets.load_source("tfrecord", "train", dst), log=print)
  data = open(shard, "rb").read()
  with open(shard, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UserError, match=f"^TFRecord file {re.escape(shard)} is damaged"):
    dataset_stats.compute_stats(datasets.load_source("tfrecord", "train", dst), log=print)


def test_dataset_stats_cli(shapes_root, tmp_path):
  out = _run("alexnet_tf.tools.dataset_stats", "--dataset=shapes", f"--data_dir={shapes_root}",
             f"--output={tmp_path}/stats.json", f"--mean_image={tmp_path}/mean.npy")
  assert out.returncode == 0, out.stderr[-2000:]
  stats = data_flags.load_stats(str(tmp_path / "stats.json"))
  assert stats["num_images"] == 60 and stats["split"] == "train"
  assert all(0 < m < 255 for m in stats["mean"])
  bad = _run("alexnet_tf.tools.dataset_stats", "--dataset=folder",
             f"--data_dir={tmp_path}/none", f"--output={tmp_path}/x.json")
  assert bad.returncode == 1 and "is not a folder" in bad.stderr
  bad = _run("alexnet_tf.tools.dataset_stats", "--dataset=shapes", f"--data_dir={shapes_root}",
             f"--output={tmp_path}/x.json", "--max_images=0")
  assert bad.returncode == 1 and "--max_images=0 must be at least 1" in bad.stderr, bad.stderr
  assert not os.path.exists(tmp_path / "x.json")
  # Outputs that cannot be written: said before the pass over the data (was a traceback after).
  for flag, message in [(f"--output={tmp_path}", f"--output '{tmp_path}' is a directory; give a "
                         "file name."),
                        (f"--mean_image={tmp_path}/stats.json/m.npy", f"--mean_image "
                         f"'{tmp_path}/stats.json' exists and is not a directory.")]:
    bad = _run("alexnet_tf.tools.dataset_stats", "--dataset=shapes", f"--data_dir={shapes_root}",
               f"--output={tmp_path}/y.json", flag)
    assert bad.returncode == 1 and f"error: {message}" in bad.stderr, bad.stderr
    assert "images" not in bad.stdout and not os.path.exists(tmp_path / "y.json")


GOOD = {"mean": [120.0, 110.0, 100.0], "eigenvalues": [3.0, 2.0, 1.0],
        "eigenvectors": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"mean": [1, 2, 3]}), "lacks eigenvalues, eigenvectors"),
    (json.dumps(dict(GOOD, mean=[1, 2])), "'mean' must be 3 numbers"),
    (json.dumps(dict(GOOD, mean=[1, 2, 300])), "0..255"),
    (json.dumps(dict(GOOD, mean=[0.485, 0.456, 0.406])), re.escape(
        "mean [0.485, 0.456, 0.406] is on the [0, 1] scale; this file takes 0..255 values")),
    (json.dumps(dict(GOOD, eigenvalues=[1, "a", 2])), "'eigenvalues' must be 3 numbers"),
    (json.dumps(dict(GOOD, eigenvalues=[1, -1, 2])), ">= 0"),
    (json.dumps(dict(GOOD, eigenvectors=[[1, 0, 0], [0, 1, 0]])), "3x3"),
    (json.dumps(dict(GOOD, eigenvectors=[[2, 0, 0], [0, 1, 0], [0, 0, 1]])), "unit length"),
])
def test_load_stats_validation(tmp_path, content, match):
  path = tmp_path / "stats.json"
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=match):
    data_flags.load_stats(str(path))


def _stats_with_mean_image(tmp_path, image, **extra):
  np.save(tmp_path / "m.npy", image)
  path = tmp_path / "stats.json"
  path.write_text(json.dumps(dict(GOOD, mean_image="m.npy", **extra)))
  return str(path)


@pytest.mark.parametrize("image,match", [
    (None, "does not exist"),
    (np.full((256, 256), 100.0), r"must be a numeric \[H, W, 3\] RGB array with H and W at "
                                 r"least 227; it is float64 \[256, 256\]"),
    (np.full((200, 256, 3), 100.0), r"must be .* at least 227; it is float64 \[200, 256, 3\]"),
    (np.full((256, 256, 3), np.nan), "must hold finite RGB values in 0..255"),
    (np.full((256, 256, 3), 300.0), "must hold finite RGB values in 0..255"),
    (np.full((256, 256, 3), 0.45), r"is on the \[0, 1\] scale"),
])
def test_load_stats_checks_the_mean_image(tmp_path, image, match):
  path = _stats_with_mean_image(tmp_path, np.zeros((256, 256, 3)) if image is None else image)
  if image is None:
    os.remove(tmp_path / "m.npy")
  with pytest.raises(UserError, match=f"^--stats={re.escape(path)}: its mean image "
                     f"{re.escape(str(tmp_path / 'm.npy'))} {match}"):
    data_flags.load_stats(path)


def test_stats_mean_picks_the_mean_image_or_the_channel_mean(tmp_path):
  path = _stats_with_mean_image(tmp_path, np.full((256, 256, 3), 100.0, np.float32))
  # The mean image is found beside the JSON, whatever the working directory.
  assert data_flags.load_stats(path)["mean_image"] == str(tmp_path / "m.npy")
  assert data_flags.load_stats(path, "image")["mean_image"] == str(tmp_path / "m.npy")
  assert "mean_image" not in data_flags.load_stats(path, "channel")
  # A broken mean image does not matter where the per-channel mean is asked for.
  (tmp_path / "m.npy").write_bytes(b"not npy")
  assert data_flags.load_stats(path, "channel")["mean"] == GOOD["mean"]
  with pytest.raises(UserError, match="is not a .npy array"):
    data_flags.load_stats(path)
  plain = tmp_path / "plain.json"
  plain.write_text(json.dumps(GOOD))
  with pytest.raises(UserError, match=f"^--stats_mean=image: --stats={re.escape(str(plain))} "
                     "names no mean image"):
    data_flags.load_stats(str(plain), "image")
  assert "mean_image" not in data_flags.load_stats(str(plain))


def test_dark_dataset_stats_written_by_the_tool_are_allowed(tmp_path):
  path = tmp_path / "stats.json"
  path.write_text(json.dumps(dict(GOOD, mean=[0.5, 0.25, 1.0], num_images=10)))
  assert data_flags.load_stats(str(path))["mean"] == [0.5, 0.25, 1.0]


def test_load_stats_good(tmp_path):
  path = tmp_path / "stats.json"
  path.write_text(json.dumps(GOOD))
  stats = data_flags.load_stats(str(path))
  assert stats["eigenvectors"][1] == [0.0, 1.0, 0.0]


def test_define_dataset_flags_idempotent():
  from absl import flags
  data_flags.define_dataset_flags()
  data_flags.define_dataset_flags()
  fv = flags.FLAGS
  assert fv["dataset"].default == "shapes"
  for name in ("data_dir", "manual_dir", "strict_data", "stats"):
    assert name in fv
