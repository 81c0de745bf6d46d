"""SavedModel export for TF Serving (SPEC §2).

  EXPORT_BASE/<version>/saved_model.pb
  EXPORT_BASE/<version>/variables/
  EXPORT_BASE/<version>/assets/labels.txt          class names, one a line (when known)
  EXPORT_BASE/<version>/assets/preprocessing.json  what the graph does to an image, model config

TF Serving polls EXPORT_BASE and loads the highest integer version. A version is written
to a temporary directory inside EXPORT_BASE whose name is not an integer (TF Serving
ignores it) and renamed to EXPORT_BASE/<version> only once complete, so a server never sees
half a version. An export that fails removes its temporary directory; one killed with
SIGKILL leaves a `.tmp-export-*` directory behind, which servers ignore.

Signatures (each output is a batch of the same size as the input):

  serving_default   image_bytes: string [None], encoded JPEG/PNG (also GIF/BMP/WebP; gray and
                    RGBA converted to RGB). In the graph: evaluate.py's preprocessing,
                    `alexnet_tf.preprocessing.preprocess_for_eval`: the central min(H, W)
                    square (only that window of a JPEG is decoded) resized to 256x256 (the
                    paper's shorter side to 256 and central 256x256 patch, up to resampling),
                    then the central image_size crop; the model subtracts the mean. The same
                    bytes give the same crop here and in evaluate.py.
  serving_images    images: float32 [None, S, S, 3], RGB 0..255, already cropped to the
                    model's input size S (227 or 224).
  serving_ten_crop  image_bytes as serving_default; the softmax averaged over the paper's ten
                    crops (four corners + centre, and their mirror images).

  outputs           probabilities float32 [None, classes], top_k_classes int32 [None, k],
                    top_k_scores float32 [None, k], top_k_labels string [None, k] (only when
                    class names are known; read from assets/labels.txt by a lookup table).
                    An empty batch gives empty outputs ([0, classes], [0, k]).

Bytes that are not an image, or an empty string, fail that call with InvalidArgumentError
(TF Serving answers INVALID_ARGUMENT); the loaded model keeps working. The graph has no
XLA-must-compile functions and only stock TensorFlow ops, so TF Serving CPU and GPU builds
both load it. Dropout is off (the model is called with training=False).

Command line:

  python -m alexnet_tf.export (--model_dir=DIR | --model=FILE.keras) --export_dir=BASE \
      [--version=N] [--top_k=5] [--checkpoint=PATH] [--labels=FILE] [--[no]ten_crop]

With --model=FILE.keras, the class names (and the model's settings, for preprocessing.json) come
from FILE.keras.json when `alexnet_tf.tools.import_weights` wrote one; --labels overrides the
names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import tensorflow as tf
import keras

from alexnet_tf import layers, preprocessing
from alexnet_tf.errors import (UserError, check_tf_can_read_back, check_writable_dir, first_line,
                               read_text_file)
from alexnet_tf.model import SUPPORTED_IMAGE_SIZES
from alexnet_tf.onnx_import import read_description, sidecar_path

DEFAULT_TOP_K = 5
SIGNATURE_BYTES = "serving_default"
SIGNATURE_IMAGES = "serving_images"
SIGNATURE_TEN_CROP = "serving_ten_crop"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "top_k_classes", "top_k_scores", "top_k_labels")
LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"
TMP_PREFIX = ".tmp-export-"
# Format version of preprocessing.json.
PREPROCESSING_FORMAT = 1


# ----------------------------------------------------------------------------- versions


def list_versions(export_base: str) -> list[int]:
  """The integer version directories in `export_base` (what TF Serving would load), sorted."""
  if not os.path.isdir(export_base):
    return []
  versions = []
  for name in os.listdir(export_base):
    if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(export_base, name)):
      versions.append(int(name))
  return sorted(versions)


def next_version(export_base: str) -> int:
  """One more than the highest version in `export_base`; 1 when there is none."""
  versions = list_versions(export_base)
  return versions[-1] + 1 if versions else 1


# ----------------------------------------------------------------------------- graph pieces


def decode_and_center_crop(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """One encoded image -> float32 [image_size, image_size, 3] RGB in 0..255 (not mean-subtracted).

  Exactly evaluate.py's centre crop (`alexnet_tf.preprocessing.preprocess_for_eval`), so a
  served answer is the evaluated one: the central min(H, W) square (only that window of a JPEG
  is decoded) resized to 256x256, then its central image_size crop. Resizing only the square
  also bounds the memory: resizing a whole 1x20000 image's shorter side to 256 would make a
  256x5,120,000 image (16 GB). Empty or non-image bytes raise InvalidArgumentError when run.

  Args:
    image_bytes: scalar tf.string.
    image_size: the model's input side (227 or 224).
  """
  return preprocessing.preprocess_for_eval(_checked_bytes(image_bytes), image_size, num_crops=1)


def decode_and_ten_crop(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """One encoded image -> float32 [10, image_size, image_size, 3]: the paper's ten test crops,
  as evaluate.py --ten_crop takes them (`preprocess_for_eval(..., num_crops=10)`)."""
  return preprocessing.preprocess_for_eval(_checked_bytes(image_bytes), image_size, num_crops=10)


def _checked_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
  """`image_bytes`, after asserting it is not empty (decode's own error covers non-images)."""
  check = tf.debugging.assert_greater(
      tf.strings.length(image_bytes), 0,
      message="image_bytes is empty; expected an encoded JPEG or PNG image")
  with tf.control_dependencies([check]):
    return tf.identity(image_bytes)


class _ServingFunctions:
  """The signature functions around one model; traced by `keras.export.ExportArchive`."""

  def __init__(self, model: keras.Model, image_size: int, classes: int, top_k: int,
               labels_table: tf.lookup.StaticHashTable | None, apply_softmax: bool):
    self.model = model
    self.image_size = image_size
    self.classes = classes
    self.top_k = top_k
    self.labels_table = labels_table
    self.apply_softmax = apply_softmax

  def _probabilities(self, images: tf.Tensor) -> tf.Tensor:
    def _run() -> tf.Tensor:
      outputs = self.model(images, training=False)  # Dropout off.
      outputs = tf.cast(outputs, tf.float32)
      return tf.nn.softmax(outputs, axis=-1) if self.apply_softmax else outputs

    # The grouped convolutions fail on an empty batch ("input depth must be evenly divisible
    # by filter depth: 3 vs 48"); an empty request gets empty outputs instead.
    return tf.cond(tf.shape(images)[0] > 0, _run,
                   lambda: tf.zeros([0, self.classes], tf.float32))

  def _outputs(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
    scores, classes = tf.math.top_k(probabilities, k=self.top_k)
    outputs = {
        "probabilities": tf.identity(probabilities, name="probabilities"),
        "top_k_classes": tf.cast(classes, tf.int32, name="top_k_classes"),
        "top_k_scores": tf.identity(scores, name="top_k_scores"),
    }
    if self.labels_table is not None:
      outputs["top_k_labels"] = self.labels_table.lookup(tf.cast(classes, tf.int64))
    return outputs

  def _crops(self, image_bytes: tf.Tensor, fn, shape: list[int]) -> tf.Tensor:
    return tf.map_fn(lambda b: fn(b, self.image_size), image_bytes,
                     fn_output_signature=tf.TensorSpec(shape, tf.float32))

  def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
    size = self.image_size
    images = self._crops(image_bytes, decode_and_center_crop, [size, size, 3])
    return self._outputs(self._probabilities(images))

  def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    return self._outputs(self._probabilities(images))

  def serve_ten_crop(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
    size = self.image_size
    crops = self._crops(image_bytes, decode_and_ten_crop, [10, size, size, 3])
    probabilities = self._probabilities(tf.reshape(crops, [-1, size, size, 3]))
    probabilities = tf.reduce_mean(tf.reshape(probabilities, [-1, 10, self.classes]), axis=1)
    return self._outputs(probabilities)


# ----------------------------------------------------------------------------- checks


def _output_activation(model: keras.Model) -> str:
  """"softmax" or "linear" (logits): what the model's last layer does."""
  last = model.layers[-1]
  activation = getattr(last, "activation", None)
  name = getattr(activation, "__name__", None)
  if name in ("softmax", "linear"):
    return name
  raise UserError(f"model {model.name!r} must end in a softmax (or linear, logits) layer to be "
                  f"exported for classification; its last layer {last.name!r} has activation "
                  f"{name or activation!r}.")


def _check_model(model: keras.Model, image_size: int | None) -> tuple[int, int]:
  """Returns (image_size, classes) of a classification model taking [None, S, S, 3]."""
  if not isinstance(model, keras.Model):
    raise UserError(f"export needs a keras.Model; got {type(model).__name__}.")
  in_shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
  if in_shape is None or len(in_shape) != 4 or in_shape[-1] != 3:
    raise UserError(f"the model's input must be images [batch, height, width, 3]; "
                    f"got {model.input_shape}.")
  out_shape = model.output_shape
  if not isinstance(out_shape, tuple) or len(out_shape) != 2 or out_shape[-1] is None:
    raise UserError(f"the model must output class scores [batch, classes] (include_top=True); "
                    f"got {out_shape}.")
  model_size = in_shape[1]
  if image_size is None:
    image_size = model_size
  if image_size is None or in_shape[1] != in_shape[2] or image_size != model_size:
    raise UserError(f"image_size {image_size} does not match the model's input "
                    f"{in_shape[1:3]}; it must be one of {list(SUPPORTED_IMAGE_SIZES)}.")
  if not 0 < int(image_size) <= preprocessing.FIXED_SIZE:
    raise UserError(f"image_size must be at most {preprocessing.FIXED_SIZE}; got {image_size}.")
  return int(image_size), int(out_shape[-1])


def _check_class_names(class_names: Sequence[str] | None, classes: int) -> list[str] | None:
  if class_names is None:
    return None
  names = [str(n) for n in class_names]
  if len(names) != classes:
    raise UserError(f"there are {len(names)} class names but the model has {classes} classes.")
  for n in names:
    if "\n" in n or "\r" in n:
      raise UserError(f"class name {n!r} contains a line break; {LABELS_FILE} holds one name "
                      "a line.")
  return names


def _check_target(export_base: str, version: int | None, top_k: int) -> None:
  """UserError for a bad --top_k / --version or a version that exists (checked before loading)."""
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
    raise UserError(f"--top_k must be a positive integer; got {top_k!r}.")
  if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                              or version < 1):
    raise UserError(f"--version must be a positive integer; got {version!r}.")
  if not export_base:
    raise UserError("--export_dir must not be empty.")
  if os.path.exists(export_base) and not os.path.isdir(export_base):
    raise UserError(f"--export_dir {export_base!r} is a file; it must be a directory.")
  # Before the model is loaded: a folder that cannot be written should not cost a load.
  check_writable_dir("--export_dir", export_base)
  check_tf_can_read_back("--export_dir", export_base)
  if version is not None and os.path.exists(os.path.join(export_base, str(version))):
    raise UserError(f"version {version} already exists in --export_dir {export_base!r}; pass "
                    "another --version or leave it out for the next one.")


def xla_must_compile_functions(export_dir: str) -> list[str]:
  """Names of the functions in `export_dir`/saved_model.pb marked `_XlaMustCompile`.

  TF Serving GPU builds reject such functions (tensorflow/serving#2214); the export must
  have none.
  """
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  found = []
  for meta_graph in saved_model.meta_graphs:
    library = meta_graph.graph_def.library
    for function in library.function:
      marked = function.attr.get("_XlaMustCompile")
      nodes = [n for n in function.node_def if n.attr.get("_XlaMustCompile") is not None
               and n.attr["_XlaMustCompile"].b]
      if (marked is not None and marked.b) or nodes:
        found.append(function.signature.name)
    for node in meta_graph.graph_def.node:
      if "_XlaMustCompile" in node.attr and node.attr["_XlaMustCompile"].b:
        found.append(node.name)
  return found


# ----------------------------------------------------------------------------- writing


def _write_file(path: str, content: str | bytes) -> None:
  if isinstance(content, bytes):
    with open(path, "wb") as f:
      f.write(content)
  else:
    # UTF-8 whatever the locale: the label table and read_labels_file read it as UTF-8.
    with open(path, "w", encoding="utf-8") as f:
      f.write(content)


def _write_extra_assets(assets_dir: str, extra_assets: Mapping[str, Any]) -> None:
  for name, value in extra_assets.items():
    if (not isinstance(name, str) or not name or os.path.basename(name) != name
        or name in (".", "..", LABELS_FILE, PREPROCESSING_FILE)):
      raise UserError(f"extra asset name {name!r} must be a plain file name other than "
                      f"{LABELS_FILE} and {PREPROCESSING_FILE}.")
    target = os.path.join(assets_dir, name)
    if isinstance(value, os.PathLike):
      shutil.copyfile(os.fspath(value), target)
    elif isinstance(value, (str, bytes)):
      _write_file(target, value)
    elif isinstance(value, (dict, list)):
      _write_file(target, json.dumps(value, indent=2, sort_keys=True) + "\n")
    else:
      raise UserError(f"extra asset {name!r} must be str, bytes, a JSON dict/list or a "
                      f"pathlib.Path; got {type(value).__name__}.")


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_archive(model: keras.Model, path: str, staging: str, *, image_size: int,
                   classes: int, class_names: list[str] | None, top_k: int, apply_softmax: bool,
                   ten_crop: bool) -> None:
  """Writes the SavedModel (signatures, variables, labels asset) to `path`."""
  labels_table = None
  if class_names is not None:
    labels_path = os.path.join(staging, LABELS_FILE)
    _write_file(labels_path, "".join(n + "\n" for n in class_names))
    labels_table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            labels_path, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            vocab_size=len(class_names)),
        default_value="")
  functions = _ServingFunctions(model, image_size, classes, top_k, labels_table, apply_softmax)
  archive = keras.export.ExportArchive()
  # Not archive.track(model): its Keras Variables would be saved a second time next to the
  # tf.Variables the endpoints capture (keras-team/keras#23553; measured here: 455 MB instead of
  # 228 MB, and twice the variable memory in TF Serving). The endpoints' variables are tracked
  # automatically.
  if labels_table is not None:
    archive.track(labels_table)
  bytes_spec = [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
  # The first endpoint is also registered as serving_default; name it so.
  archive.add_endpoint(SIGNATURE_BYTES, functions.serve_bytes, input_signature=bytes_spec)
  archive.add_endpoint(
      SIGNATURE_IMAGES, functions.serve_images,
      input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32,
                                     name=IMAGES_INPUT)])
  if ten_crop:
    archive.add_endpoint(SIGNATURE_TEN_CROP, functions.serve_ten_crop, input_signature=bytes_spec)
  with _quiet_tf_info():
    archive.write_out(path, verbose=False)


@contextlib.contextmanager
def _quiet_tf_info() -> Iterator[None]:
  """Hides the INFO lines TF logs while the SavedModel is written ("Assets written to:
  EXPORT/.tmp-export-.../model/assets", "Writing fingerprint to ...", input renamings): they
  name a temporary directory the user never sees, or TF's internals. TF logs them through its
  own logger and through absl's; warnings and errors of both still show. absl's level is set
  through its verbosity, which TF itself saves and restores while saving (a level set on the
  logger directly would be lost there)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  tf_logger = tf.get_logger()
  tf_level, absl_level = tf_logger.level, absl_logging.get_verbosity()
  if tf_logger.getEffectiveLevel() < logging.WARNING:
    tf_logger.setLevel(logging.WARNING)
  # absl's levels count down: INFO 0, WARNING -1.
  quieter_absl = absl_level > absl_logging.WARNING
  if quieter_absl:
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    yield
  finally:
    tf_logger.setLevel(tf_level)
    if quieter_absl:
      absl_logging.set_verbosity(absl_level)


def preprocessing_settings(image_size: int, *, top_k: int, class_names: list[str] | None,
                           classes: int, ten_crop: bool,
                           model_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The contents of assets/preprocessing.json: what a client needs to know about the model."""
  from alexnet_tf import __version__  # pylint: disable=g-import-not-at-top
  signatures = {
      SIGNATURE_BYTES: {"inputs": {BYTES_INPUT: "string [None]: encoded JPEG or PNG"}},
      SIGNATURE_IMAGES: {"inputs": {IMAGES_INPUT: f"float32 [None, {image_size}, {image_size}, "
                                                  "3]: RGB 0..255, already cropped"}},
  }
  if ten_crop:
    signatures[SIGNATURE_TEN_CROP] = {"inputs": {BYTES_INPUT: "string [None]: encoded JPEG or "
                                                              "PNG; 10-crop average"}}
  outputs = list(OUTPUT_KEYS if class_names is not None else OUTPUT_KEYS[:-1])
  for s in signatures.values():
    s["outputs"] = outputs
  settings: dict[str, Any] = {
      "format": PREPROCESSING_FORMAT,
      "exported_by": f"alexnet_tf {__version__}",
      "image_size": image_size,
      "channels": "RGB",
      "input_range": [0, 255],
      "decode": "tf.io.decode_image(channels=3, expand_animations=False)",
      "resize_shorter_side": preprocessing.FIXED_SIZE,
      "resize_method": "bilinear",
      "antialias": "only when shrinking by more than 2x (plain bilinear below)",
      "crop": f"the central min(H, W) square (only that window of a JPEG is decoded), resized "
              f"to {preprocessing.FIXED_SIZE}x{preprocessing.FIXED_SIZE} (the same as the "
              f"shorter side to {preprocessing.FIXED_SIZE} then the central "
              f"{preprocessing.FIXED_SIZE}x{preprocessing.FIXED_SIZE} patch, up to resampling), "
              f"then its central {image_size}x{image_size} crop",
      "same_as": "evaluate.py: alexnet_tf.preprocessing.preprocess_for_eval",
      "mean_subtraction": "inside the model",
      "classes": classes,
      "class_names": LABELS_FILE if class_names is not None else None,
      "top_k": top_k,
      "signatures": signatures,
  }
  if model_config is not None:
    mean = model_config.get("mean", "imagenet")
    settings["mean"] = ("the training set's per-pixel mean image, a variable of the model "
                        "(its central crop is subtracted)" if mean == "mean_image" else mean)
    settings["model"] = dict(model_config)
  return settings


def export_saved_model(model: keras.Model, export_base: str, *, version: int | None = None,
                       class_names: list[str] | None = None, top_k: int = DEFAULT_TOP_K,
                       image_size: int | None = None, extra_assets: dict | None = None,
                       ten_crop: bool = True,
                       model_config: Mapping[str, Any] | None = None) -> str:
  """Exports `model` for TF Serving as `export_base/<version>`, atomically.

  Args:
    model: an AlexNet classifier (float32 RGB 0..255 in, softmax or logits out).
    export_base: the directory TF Serving watches (`--model_base_path`); created if needed.
    version: the version number (a positive integer not already in export_base); None for
      one more than the highest present (1 if none).
    class_names: one name per class, for `top_k_labels` and assets/labels.txt; None to leave
      them out.
    top_k: k of the top_k_* outputs (at least 1; models with fewer classes give all of them).
    image_size: the model's input side; None to read it from the model. Must match the model.
    extra_assets: more files for assets/: {file name: str or bytes contents, a JSON dict/list,
      or a pathlib.Path to copy}.
    ten_crop: also add the `serving_ten_crop` signature.
    model_config: the model dir's config["model"], recorded in assets/preprocessing.json.

  Returns:
    The path of the new version directory.

  Raises:
    UserError: bad arguments, a version that exists, or a model TF Serving cannot load.
  """
  image_size, classes = _check_model(model, image_size)
  class_names = _check_class_names(class_names, classes)
  export_base = os.fspath(export_base)
  _check_target(export_base, version, top_k)
  top_k = min(top_k, classes)  # A 3-class model has no top 5.
  apply_softmax = _output_activation(model) == "linear"
  try:
    os.makedirs(export_base, exist_ok=True)
  except OSError as e:
    raise UserError(f"--export_dir {export_base!r} cannot be created: {e.strerror}.") from e

  try:
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=export_base)
  except OSError as e:  # Checked before, but a folder can change in the meantime.
    raise UserError(f"--export_dir {export_base!r} cannot be written: {e.strerror}.") from e
  staging = tempfile.mkdtemp(prefix=".tmp-labels-")  # Outside export_base; copied into assets/.
  try:
    saved_model_dir = os.path.join(tmp, "model")
    with layers.lrn_without_xla(model):  # TF Serving GPU builds reject XLA functions.
      _write_archive(model, saved_model_dir, staging, image_size=image_size, classes=classes,
                     class_names=class_names, top_k=top_k, apply_softmax=apply_softmax,
                     ten_crop=ten_crop)
    xla = xla_must_compile_functions(saved_model_dir)
    if xla:
      raise UserError(f"the exported graph has XLA-must-compile functions ({xla[0]}, ...), "
                      "which TF Serving GPU builds reject; build the model without "
                      "Conv2D(groups=...) or jit_compile.")
    assets_dir = os.path.join(saved_model_dir, "assets")
    os.makedirs(assets_dir, exist_ok=True)
    settings = preprocessing_settings(image_size, top_k=top_k, class_names=class_names,
                                      classes=classes, ten_crop=ten_crop,
                                      model_config=model_config)
    _write_file(os.path.join(assets_dir, PREPROCESSING_FILE),
                json.dumps(settings, indent=2, sort_keys=True) + "\n")
    if extra_assets:
      _write_extra_assets(assets_dir, extra_assets)
    _fsync_dir(saved_model_dir)
    return _publish(saved_model_dir, export_base, version)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _publish(saved_model_dir: str, export_base: str, version: int | None) -> str:
  """Renames the finished `saved_model_dir` to export_base/<version> (one atomic rename)."""
  explicit = version is not None
  for _ in range(100):
    if version is None:
      version = next_version(export_base)
    target = os.path.join(export_base, str(version))
    # os.rename replaces an empty directory; never take over a name that exists.
    if not os.path.exists(target):
      try:
        os.rename(saved_model_dir, target)
      except OSError:
        if explicit or not os.path.exists(target):
          raise
      else:
        _fsync_dir(export_base)
        return target
    if explicit:
      raise UserError(f"version {version} already exists in --export_dir {export_base!r}.")
    version = None  # Another exporter took it: try the next one.
  raise UserError(f"could not find a free version number in --export_dir {export_base!r}.")


# ----------------------------------------------------------------------------- sources


def read_labels_file(path: str) -> list[str]:
  """Class names from a UTF-8 text file, one a line (trailing newline optional)."""
  names = read_text_file("--labels", path).split("\n")
  if names and names[-1] == "":
    names.pop()
  return [n.rstrip("\r") for n in names]


def export_model_dir(model_dir: str, export_base: str, *, checkpoint: str | None = None,
                     version: int | None = None, top_k: int = DEFAULT_TOP_K,
                     class_names: list[str] | None = None, ten_crop: bool = True) -> str:
  """Exports the latest (or given) checkpoint of a model dir written by train.py.

  Class names come from the model dir's config.json unless `class_names` is given.
  Raises UserError when the dir has no config or no checkpoint.
  """
  from alexnet_tf.model_dir import restore_model  # pylint: disable=g-import-not-at-top
  _check_target(os.fspath(export_base), version, top_k)
  model, config = restore_model(model_dir, checkpoint)
  if class_names is None:
    class_names = config.get("class_names")
  return export_saved_model(model, export_base, version=version, class_names=class_names,
                            top_k=top_k, image_size=config["model"].get("image_size"),
                            ten_crop=ten_crop, model_config=config["model"])


def export_keras_file(path: str, export_base: str, *, version: int | None = None,
                      top_k: int = DEFAULT_TOP_K, class_names: list[str] | None = None,
                      ten_crop: bool = True) -> str:
  """Exports a model saved with `model.save("FILE.keras")`.

  When `alexnet_tf.tools.import_weights` wrote FILE.keras.json beside it, its class names
  are used unless `class_names` is given, and its AlexNet kwargs go into preprocessing.json.
  """
  _check_target(os.fspath(export_base), version, top_k)
  if not os.path.isfile(path):
    raise UserError(f"--model {path!r} does not exist.")
  if not path.endswith(".keras"):
    raise UserError(f"--model {path!r} must be a .keras file saved with model.save(); for a "
                    "training directory use --model_dir.")
  description = read_description(path) or {"class_names": None, "model": None}
  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--model {path!r} cannot be loaded: {first_line(e)}") from e
  model_config = description["model"]
  if model_config is not None:
    model_config = dict(model_config)
    shape = model_config.get("input_shape")
    if isinstance(shape, list) and shape and isinstance(shape[0], int):
      model_config.setdefault("image_size", shape[0])
  if class_names is None and description["class_names"] is not None:
    class_names = description["class_names"]
    classes = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if len(class_names) != classes:
      raise UserError(f"{sidecar_path(path)!r} has {len(class_names)} class names but "
                      f"--model {path!r} has {classes} classes; pass --labels.")
  return export_saved_model(model, export_base, version=version, class_names=class_names,
                            top_k=top_k, ten_crop=ten_crop, model_config=model_config)


# ----------------------------------------------------------------------------- command line


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from alexnet_tf import flags as data_flags  # pylint: disable=g-import-not-at-top
  data_flags.define_path("model_dir", None, "A model directory written by train.py.")
  data_flags.define_path("model", None, "A .keras file saved with model.save() (instead of "
                                        "--model_dir).")
  data_flags.define_path("export_dir", None, "Base directory TF Serving watches; the model is "
                                             "written to EXPORT_DIR/<version>.")
  flags.DEFINE_integer("version", None, "Version number; default one more than the highest "
                                        "in --export_dir.")
  flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "k of the top_k_* outputs.")
  data_flags.define_path("checkpoint", None, "Checkpoint path prefix (with --model_dir); default "
                                             "the latest.")
  data_flags.define_path("labels", None, "Text file of class names (UTF-8), one a line; "
                                         "overrides the model dir's (or FILE.keras.json's).")
  flags.DEFINE_bool("ten_crop", True, "Also add the serving_ten_crop signature.")


def main(argv: Sequence[str]) -> None:
  """Entry point: validates flags and calls `export_model_dir` / `export_keras_file`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; pass flags only.")
  if (f.model_dir is None) == (f.model is None):
    raise UserError("pass exactly one of --model_dir (a training directory) or --model "
                    "(a .keras file).")
  if not f.export_dir:
    raise UserError("--export_dir is required (the base directory TF Serving watches).")
  if f.checkpoint is not None and f.model is not None:
    raise UserError("--checkpoint goes with --model_dir, not --model.")
  class_names = read_labels_file(f.labels) if f.labels else None
  if f.model_dir is not None:
    path = export_model_dir(f.model_dir, f.export_dir, checkpoint=f.checkpoint,
                            version=f.version, top_k=f.top_k, class_names=class_names,
                            ten_crop=f.ten_crop)
  else:
    path = export_keras_file(f.model, f.export_dir, version=f.version, top_k=f.top_k,
                             class_names=class_names, ten_crop=f.ten_crop)
  print(f"exported {path}")


def run_main() -> None:
  from alexnet_tf.errors import run_cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  run_cli(main)


if __name__ == "__main__":
  run_main()
