"""Classifies images with an AlexNet served by TF Serving, over gRPC (port 8500).

  python examples/serving/grpc_client.py --server=localhost:8500 --model=alexnet cat.jpg dog.png

Uses `tensorflow-serving-api` (`pip install tensorflow-serving-api`): a `PredictRequest` whose
`image_bytes` input is a string tensor [N] of encoded JPEG/PNG images, sent to
`PredictionServiceStub.Predict`; the outputs are read back with `tf.make_ndarray`. Bytes that are
not an image come back as an `INVALID_ARGUMENT` error for that request.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

DEFAULT_SIGNATURE = "serving_default"
# Photos can be larger than gRPC's default 4 MiB message limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def build_request(images: Sequence[bytes], model: str = "alexnet",
                  signature_name: str = DEFAULT_SIGNATURE,
                  version: int | None = None) -> predict_pb2.PredictRequest:
  """A PredictRequest carrying encoded images (JPEG/PNG bytes) as `image_bytes`, string [N]."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  request.inputs["image_bytes"].CopyFrom(
      tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)]))
  return request


def parse_response(response) -> dict[str, np.ndarray]:
  """The outputs of a PredictResponse as numpy arrays (labels as bytes)."""
  return {key: tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}


def predict(server: str, request: predict_pb2.PredictRequest,
            timeout: float = 30.0) -> dict[str, np.ndarray]:
  """Sends `request` to TF Serving at host:port; grpc.RpcError on failure."""
  import grpc  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
             ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
  with grpc.insecure_channel(server, options=options) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return parse_response(stub.Predict(request, timeout=timeout))


def format_predictions(names: Sequence[str], outputs: dict[str, np.ndarray]) -> list[str]:
  lines = []
  labels = outputs.get("top_k_labels")
  for i, name in enumerate(names):
    parts = []
    for j, (c, s) in enumerate(zip(outputs["top_k_classes"][i], outputs["top_k_scores"][i])):
      label = f" {labels[i][j].decode('utf-8')}" if labels is not None else ""
      parts.append(f"{c}{label} {s:.4f}")
    lines.append(f"{name}: " + ", ".join(parts))
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("images", nargs="+", help="JPEG or PNG files")
  parser.add_argument("--server", default="localhost:8500")
  parser.add_argument("--model", default="alexnet", help="TF Serving's --model_name")
  parser.add_argument("--version", type=int, default=None, help="default: the latest")
  parser.add_argument("--signature", default=DEFAULT_SIGNATURE,
                      help="serving_default (centre crop) or serving_ten_crop")
  args = parser.parse_args(argv)
  images = []
  for path in args.images:
    try:
      with open(path, "rb") as f:
        images.append(f.read())
    except OSError as e:
      print(f"error: cannot read {path}: {e.strerror}", file=sys.stderr)
      return 1
  import grpc  # pylint: disable=g-import-not-at-top
  try:
    outputs = predict(args.server, build_request(images, args.model, args.signature,
                                                 args.version))
  except grpc.RpcError as e:
    print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1
  for line in format_predictions(args.images, outputs):
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
