r"""Imports the BVLC AlexNet reference weights from ONNX into the two-tower model.

  python -m alexnet_tf.tools.import_weights --onnx=bvlcalexnet-12.onnx \
      --output=bvlc_alexnet.keras [--classes=synset_words.txt]

Writes OUTPUT (`.keras`, a full model: `keras.models.load_model(OUTPUT)`; or
`.weights.h5`, weights only) and OUTPUT.json (the `AlexNet(...)` kwargs, the
source file and the class names), and prints the kwargs. The model takes
227x227 RGB images in 0..255 and subtracts Caffe's mean itself. See
`alexnet_tf/onnx_import.py` and docs/pretrained.md. `python -m alexnet_tf.export
--model=OUTPUT.keras` reads the class names (and kwargs) from OUTPUT.json.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import flags

from alexnet_tf import flags as data_flags
from alexnet_tf.errors import UserError, read_text_file, run_cli

FLAGS = flags.FLAGS

data_flags.define_path("onnx", None, "The ONNX bvlc_alexnet file (e.g. the ONNX model zoo's "
                       "bvlcalexnet-12.onnx).")
data_flags.define_path("output", None, "Where to write: FILE.keras (full model, preferred) or "
                       "FILE.weights.h5 (weights; build with the kwargs in FILE.weights.h5.json).")
data_flags.define_path("classes", None, "Optional text file of class names, one per line in "
                       "fc8's order (e.g. Caffe's synset_words.txt); stored in OUTPUT.json.")
flags.DEFINE_list("mean", None, "The RGB mean (0..255) the model subtracts, as R,G,B. "
                  "Default: the graph's own mean subtraction if it has one, else Caffe's "
                  "BGR 104,117,123 as RGB 123,117,104.")
flags.DEFINE_enum("input_channel_order", "bgr", ["bgr", "rgb"],
                  "Channel order of the ONNX graph's input (bgr for Caffe's models).")


def read_class_names(path: str) -> list[str]:
  """One class name per non-empty line of a UTF-8 text file."""
  return [line.strip() for line in read_text_file("--classes", path).split("\n")
          if line.strip()]


def parse_mean(values: Sequence[str] | None) -> list[float] | None:
  if values is None:
    return None
  try:
    mean = [float(v) for v in values]
  except ValueError as e:
    raise UserError(f"--mean must be 3 numbers R,G,B; got {','.join(values)!r}.") from e
  if len(mean) != 3:
    raise UserError(f"--mean must be 3 numbers R,G,B; got {len(mean)}.")
  return mean


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; use --onnx and --output.")
  if not FLAGS.onnx or not FLAGS.output:
    raise UserError("--onnx=FILE.onnx and --output=FILE.keras (or FILE.weights.h5) are required.")
  from alexnet_tf.onnx_import import import_onnx_weights, sidecar_path  # Imports TensorFlow.
  class_names = read_class_names(FLAGS.classes) if FLAGS.classes else None
  description = import_onnx_weights(FLAGS.onnx, FLAGS.output, class_names=class_names,
                                    mean_rgb=parse_mean(FLAGS.mean),
                                    input_channel_order=FLAGS.input_channel_order)
  kwargs = description["alexnet_kwargs"]
  print(f"wrote {FLAGS.output} and {sidecar_path(FLAGS.output)}")
  print("AlexNet kwargs: " + json.dumps(kwargs))
  if FLAGS.output.endswith(".keras"):
    print(f"load it with keras.models.load_model({os.fspath(FLAGS.output)!r})")
  else:
    print(f"load it with alexnet_tf.onnx_import.load_imported({os.fspath(FLAGS.output)!r}), "
          f"or AlexNet(**kwargs, weights={os.fspath(FLAGS.output)!r})")


def run_main() -> None:
  run_cli(main)


if __name__ == "__main__":
  run_main()
