"""Weight files and the Caffe-layout interchange (SPEC §1).

Caffe's grouped `bvlc_alexnet` is the lingua franca of AlexNet weights. Its
parameters, as numpy arrays:

  conv1 (W[96, 3, 11, 11], b[96])     conv4 (W[384, 192, 3, 3], b[384])  group 2
  conv2 (W[256, 48, 5, 5], b[256])    conv5 (W[256, 192, 3, 3], b[256])  group 2
  conv3 (W[384, 256, 3, 3], b[384])   fc6 (W[4096, 9216], b), fc7 (W[4096, 4096], b),
                                      fc8 (W[classes, 4096], b)

Convolutions are OIHW, fully connected layers (out, in). In grouped layers the
first half of the output channels is tower `a`, whose inputs are the first half
of the previous layer's channels. fc6's 9216 inputs are in Caffe's C, H, W
flatten order of the 256-channel pool5 (Keras flattens H, W, C). A one-tower
model uses the ungrouped shapes (conv2 W[256, 96, 5, 5], ...).

conv1's input channels are in the model's RGB order by default; pass
`input_channel_order="bgr"` for weights in Caffe's native BGR order.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import keras

ParamDict = dict[str, tuple[np.ndarray, np.ndarray]]

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DENSE_LAYERS = ("fc6", "fc7", "fc8")
_PER_TOWER = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def _tower_layers(model: keras.Model, name: str) -> list[keras.layers.Layer]:
  """The layers that together form Caffe layer `name` (one per tower)."""
  names = {layer.name for layer in model.layers}
  if name in _PER_TOWER and f"{name}_a" in names:
    return [model.get_layer(f"{name}_a"), model.get_layer(f"{name}_b")]
  if name in names:
    return [model.get_layer(name)]
  return []


def _pool5_shape(model: keras.Model) -> tuple[int, int, int]:
  shape = model.get_layer("pool5").output.shape if "pool5" in {
      l.name for l in model.layers} else None
  if shape is None:  # One-tower model: pool5 is a MaxPooling2D layer.
    shape = model.get_layer("pool5").output.shape
  return tuple(int(d) for d in shape[1:])


def to_caffe_layout(model: keras.Model, input_channel_order: str = "rgb") -> ParamDict:
  """Returns the model's weights in Caffe's layout (see the module docstring).

  Args:
    model: an `AlexNet(...)` model (one or two towers, with or without top).
    input_channel_order: "rgb" (the model's own) or "bgr" (Caffe's) for conv1.

  Returns:
    {"conv1": (W, b), ..., "fc8": (W, b)}; the fc layers only with a top.
  """
  _check_order(input_channel_order)
  params: ParamDict = {}
  for name in CONV_LAYERS:
    towers = _tower_layers(model, name)
    kernels = [np.asarray(t.kernel.numpy()) for t in towers]  # HWIO
    biases = [np.asarray(t.bias.numpy()) for t in towers]
    w = np.concatenate([k.transpose(3, 2, 0, 1) for k in kernels], axis=0)
    if name == "conv1" and input_channel_order == "bgr":
      w = w[:, ::-1]
    params[name] = (np.ascontiguousarray(w), np.concatenate(biases))
  if _tower_layers(model, "fc6"):
    h, w_, c = _pool5_shape(model)
    for name in DENSE_LAYERS:
      towers = _tower_layers(model, name)
      kernels = [np.asarray(t.kernel.numpy()) for t in towers]  # (in, out)
      k = np.concatenate(kernels, axis=1)
      if name == "fc6":  # Keras (H, W, C) inputs -> Caffe (C, H, W) inputs.
        k = k.reshape(h, w_, c, -1).transpose(2, 0, 1, 3).reshape(h * w_ * c, -1)
      params[name] = (np.ascontiguousarray(k.T),
                      np.concatenate([np.asarray(t.bias.numpy()) for t in towers]))
  return params


def from_caffe_layout(model: keras.Model, params: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      input_channel_order: str = "rgb") -> None:
  """Sets the model's weights from Caffe-layout params (inverse of `to_caffe_layout`).

  Args:
    model: an `AlexNet(...)` model.
    params: {"conv1": (W, b), ...} as in the module docstring. Layers the model
      does not have (fc6-8 without a top) are ignored; layers it has must all be given.
    input_channel_order: "rgb" or "bgr", the channel order of params["conv1"].

  Raises:
    ValueError: a layer is missing or an array has the wrong shape.
  """
  _check_order(input_channel_order)
  expected = to_caffe_layout(model)
  updates = []
  for name, (w_ref, b_ref) in expected.items():
    if name not in params:
      raise ValueError(f"Caffe-layout params lack layer {name!r} (have {sorted(params)}).")
    w, b = (np.asarray(a, dtype=np.float32) for a in params[name])
    if w.shape != w_ref.shape or b.shape != b_ref.shape:
      raise ValueError(f"Caffe-layout {name}: expected W{list(w_ref.shape)} b{list(b_ref.shape)} "
                       f"for this model; got W{list(w.shape)} b{list(b.shape)}.")
    towers = _tower_layers(model, name)
    n = len(towers)
    if name in CONV_LAYERS:
      if name == "conv1" and input_channel_order == "bgr":
        w = w[:, ::-1]
      for i, layer in enumerate(towers):
        out = w.shape[0] // n
        updates.append((layer, w[i * out:(i + 1) * out].transpose(2, 3, 1, 0),
                        b[i * out:(i + 1) * out]))
    else:
      k = w.T  # (in, out)
      if name == "fc6":  # Caffe (C, H, W) inputs -> Keras (H, W, C) inputs.
        h, w_, c = _pool5_shape(model)
        k = k.reshape(c, h, w_, -1).transpose(1, 2, 0, 3).reshape(h * w_ * c, -1)
      out = k.shape[1] // n
      for i, layer in enumerate(towers):
        updates.append((layer, k[:, i * out:(i + 1) * out], b[i * out:(i + 1) * out]))
  for layer, kernel, bias in updates:  # Only assign once everything validated.
    layer.kernel.assign(np.ascontiguousarray(kernel))
    layer.bias.assign(np.ascontiguousarray(bias))


def _check_order(order: str) -> None:
  if order not in ("rgb", "bgr"):
    raise ValueError(f"input_channel_order must be 'rgb' or 'bgr'; got {order!r}.")


def save_weights(model: keras.Model, path: str) -> None:
  """Saves the model's weights to a Keras `.weights.h5` file."""
  if not str(path).endswith(".weights.h5"):
    raise ValueError(f"Weights files must end in '.weights.h5'; got {path!r}.")
  model.save_weights(path)


def load_weights(model: keras.Model, path: str) -> None:
  """Loads a weights file written by `save_weights` / `model.save_weights`.

  Raises:
    ValueError: the file does not exist, is not a weights file, or holds the
      weights of a different architecture (e.g. another class count).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"weights file {path!r} does not exist.")
  if not path.endswith(".weights.h5"):
    raise ValueError(f"weights must be a '.weights.h5' file saved by alexnet_tf "
                     f"(model.save_weights); got {path!r}.")
  try:
    model.load_weights(path)
  except Exception as e:  # Keras raises several types for mismatches.
    raise ValueError(f"weights file {path!r} does not match this model "
                     f"({model.name}, {model.count_params():,} parameters): "
                     f"{str(e).splitlines()[0][:300]}") from e
