"""Classifies images with an AlexNet served by TF Serving, over its REST API (port 8501).

  python examples/serving/rest_client.py --server=http://localhost:8501 --model=alexnet \
      cat.jpg dog.png

Sends `{"signature_name": ..., "instances": [{"image_bytes": {"b64": ...}}, ...]}` to
`/v1/models/<model>[/versions/<N>]:predict`; TF Serving base64-decodes `{"b64": ...}` itself and
the exported graph decodes, resizes and crops the images (SPEC §2). Prints each image's top-k
classes (with names when the export has them). Needs only the Python standard library.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Sequence

DEFAULT_SIGNATURE = "serving_default"


def build_request(images: Sequence[bytes], signature_name: str = DEFAULT_SIGNATURE) -> dict:
  """The JSON body of a REST predict request for encoded images (JPEG/PNG bytes)."""
  return {
      "signature_name": signature_name,
      "instances": [{"image_bytes": {"b64": base64.b64encode(b).decode("ascii")}}
                    for b in images],
  }


def predict_url(server: str, model: str, version: int | None = None) -> str:
  version_part = f"/versions/{version}" if version is not None else ""
  return f"{server.rstrip('/')}/v1/models/{model}{version_part}:predict"


def predict(url: str, body: dict, timeout: float = 30.0) -> list[dict[str, Any]]:
  """POSTs `body`; returns one dict of outputs per image. RuntimeError with the server's error."""
  request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                   headers={"Content-Type": "application/json"}, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      answer = json.load(response)
  except urllib.error.HTTPError as e:  # 400 for INVALID_ARGUMENT, e.g. bytes that are no image.
    try:
      message = json.load(e).get("error", e.reason)
    except ValueError:
      message = e.reason
    raise RuntimeError(f"HTTP {e.code}: {message}") from e
  except urllib.error.URLError as e:
    raise RuntimeError(f"cannot reach {url}: {e.reason}") from e
  return answer["predictions"]


def format_prediction(name: str, prediction: dict[str, Any]) -> str:
  labels = prediction.get("top_k_labels")
  parts = []
  for i, (c, s) in enumerate(zip(prediction["top_k_classes"], prediction["top_k_scores"])):
    label = f" {labels[i]}" if labels is not None else ""
    parts.append(f"{c}{label} {s:.4f}")
  return f"{name}: " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("images", nargs="+", help="JPEG or PNG files")
  parser.add_argument("--server", default="http://localhost:8501")
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
  try:
    predictions = predict(predict_url(args.server, args.model, args.version),
                          build_request(images, args.signature))
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for path, prediction in zip(args.images, predictions):
    print(format_prediction(path, prediction))
  return 0


if __name__ == "__main__":
  sys.exit(main())
