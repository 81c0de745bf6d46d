"""The AlexNet model (Krizhevsky, Sutskever, Hinton, NIPS 2012).

`AlexNet(...)` builds the network with the Keras functional API, top to bottom
as in the paper's Figure 2: two towers, `a` and `b`, one per original GPU. The
towers exchange activations only at conv3 and at the fully connected layers;
everywhere else each tower's layer sees only its own tower. Every per-tower
layer is a separate Keras layer named `<layer>_<tower>` (no `Conv2D(groups=)`,
which Keras 3 runs through XLA and TF Serving GPU builds reject).

Reference: SPEC §1. 60,965,224 parameters with two towers (Caffe's grouped
`bvlc_alexnet` has the same count), 62,378,344 with one.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

import numpy as np
import keras
from keras import layers

from alexnet_tf.layers import LocalResponseNormalization, MeanSubtraction, ReplicaDropout

# The common per-channel ImageNet RGB mean (0..255), SPEC §1.4.
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)

SUPPORTED_IMAGE_SIZES = (227, 224)
ACTIVATIONS = ("relu", "tanh")
LRN_MODES = ("paper", "caffe", "none")
LRN_SCOPES = ("tower", "across_towers")
POOLING_MODES = ("overlapping", "non_overlapping")
INITIALIZATIONS = ("paper", "caffe", "he")
TOP_POOLING = (None, "avg", "max")

# LRN hyper-parameters in the paper's convention (alpha not divided by n).
# Caffe's bvlc_alexnet uses local_size 5, alpha 1e-4 (divided by n), k 1.
_LRN_PARAMS = {
    "paper": dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75),
    "caffe": dict(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75),
}

# Widths of the one-tower network; each of two towers has half of each.
_WIDTHS = dict(conv1=96, conv2=256, conv3=384, conv4=384, conv5=256, fc6=4096, fc7=4096)


def _initializers(init: str, layer: str, seed: int | None, layer_name: str):
  """Kernel and bias initialisers of `layer` (SPEC §1.1).

  Paper: weights ~ N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
  Caffe (bvlc_alexnet train_val.prototxt): N(0, 0.01^2) but N(0, 0.005^2) for
  fc6/fc7; biases 0.1 where the paper has 1 (the paper's 1 gave Caffe a flat loss).
  He (not in the paper): He-normal weights (std sqrt(2 / fan_in)), zero biases; the
  modern choice, which leaves the flat start of the 0.01 initialisations in minutes
  instead of thousands of steps (used by the quick `shapes` preset). The classifier fc8
  keeps the paper's N(0, 0.01^2): He-scaled logits start far from uniform (loss above
  chance for the first ~100 steps), small ones start at log(classes).
  """
  # A distinct seed per layer and tower: initialisers with equal seeds draw equal values.
  kernel_seed = None if seed is None else (seed * 7919 + zlib.crc32(layer_name.encode())) % 2**31
  if init == "he":
    kernel = (keras.initializers.RandomNormal(stddev=0.01, seed=kernel_seed) if layer == "fc8"
              else keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal",
                                                      seed=kernel_seed))
    return kernel, keras.initializers.Zeros()
  std = 0.005 if init == "caffe" and layer in ("fc6", "fc7") else 0.01
  one_bias = layer in ("conv2", "conv4", "conv5", "fc6", "fc7")
  bias = (1.0 if init == "paper" else 0.1) if one_bias else 0.0
  return (keras.initializers.RandomNormal(stddev=std, seed=kernel_seed),
          keras.initializers.Constant(bias))


def _validate(**args: Any) -> None:
  def check(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
      raise ValueError(f"AlexNet: {name} must be one of {list(allowed)}; got {value!r}.")

  check("towers", args["towers"], (1, 2))
  check("activation", args["activation"], ACTIVATIONS)
  check("lrn", args["lrn"], LRN_MODES)
  check("lrn_scope", args["lrn_scope"], LRN_SCOPES)
  check("pooling_mode", args["pooling_mode"], POOLING_MODES)
  check("initialization", args["initialization"], INITIALIZATIONS)
  check("pooling", args["pooling"], TOP_POOLING)
  if not 0.0 <= args["dropout"] < 1.0:
    raise ValueError(f"AlexNet: dropout must be in [0, 1); got {args['dropout']!r}.")
  if args["include_top"] and (not isinstance(args["classes"], int) or args["classes"] < 1):
    raise ValueError(f"AlexNet: classes must be a positive integer; got {args['classes']!r}.")
  if args["lrn_scope"] == "across_towers" and args["towers"] != 2:
    raise ValueError("AlexNet: lrn_scope='across_towers' needs towers=2.")
  scale = args["input_scale"]
  if not (isinstance(scale, (int, float)) and scale > 0):
    raise ValueError(f"AlexNet: input_scale must be a positive number; got {scale!r}.")


def _input_shape(input_shape: Sequence[int] | None, include_top: bool) -> tuple[int, int, int]:
  if input_shape is None:
    return (227, 227, 3)
  shape = tuple(input_shape)
  if len(shape) != 3 or shape[-1] != 3:
    raise ValueError(f"AlexNet: input_shape must be (height, width, 3) RGB; got {input_shape!r}.")
  if include_top and not (shape[0] == shape[1] and shape[0] in SUPPORTED_IMAGE_SIZES):
    raise ValueError(
        f"AlexNet: with include_top=True input_shape must be (227, 227, 3) or (224, 224, 3) "
        f"(fc6 expects 6x6 pool5 maps); got {shape!r}. Use include_top=False for other sizes.")
  if not include_top and shape[0] is not None and min(shape[:2]) < 63:
    raise ValueError(f"AlexNet: input height and width must be at least 63; got {shape!r}.")
  return shape


def _mean_layer(mean: Any, image_shape: tuple[int, int, int]) -> MeanSubtraction | None:
  if mean is None:
    return None
  if isinstance(mean, str):
    if mean != "imagenet":
      raise ValueError(f"AlexNet: mean must be 'imagenet', None, 3 floats or an (H, W, 3) "
                       f"mean image; got {mean!r}.")
    return MeanSubtraction(mean=IMAGENET_MEAN_RGB, name="mean_subtraction")
  array = np.asarray(mean, dtype=np.float32)
  if array.shape == (3,):
    return MeanSubtraction(mean=array.tolist(), name="mean_subtraction")
  if array.ndim == 3 and array.shape[-1] == 3:
    layer = MeanSubtraction(mean_image_shape=array.shape, name="mean_subtraction")
    layer.build((None,) + tuple(image_shape))
    layer.set_mean_image(array)
    return layer
  raise ValueError(f"AlexNet: mean must be 3 floats (R, G, B) or an (H, W, 3) mean image; "
                   f"got an array of shape {array.shape}.")


def AlexNet(include_top: bool = True,
            weights: str | None = None,
            input_tensor: Any = None,
            input_shape: Sequence[int] | None = None,
            pooling: str | None = None,
            classes: int = 1000,
            classifier_activation: str | None = "softmax",
            towers: int = 2,
            activation: str = "relu",
            lrn: str = "paper",
            lrn_scope: str = "tower",
            lrn_implementation: str = "fused",
            pooling_mode: str = "overlapping",
            dropout: float = 0.5,
            initialization: str = "paper",
            mean: Any = "imagenet",
            input_scale: float = 1.0,
            seed: int | None = None,
            name: str = "alexnet") -> keras.Model:
  """Builds AlexNet, the two-tower network of Krizhevsky et al. (2012).

  The model takes float32 RGB images with values in 0..255 and subtracts the
  training mean itself (its first layer), so callers and served models need no
  preprocessing beyond resizing and cropping.

  Args:
    include_top: whether to include fc6, fc7 and fc8. Without them the output
      is pool5 (6x6x256 at 227 input; tower a's 128 channels first).
    weights: None (the chosen random initialisation) or the path of a weights
      file saved by this package (`model.save_weights("x.weights.h5")` or
      `alexnet_tf.weights.save_weights`). A missing or mismatched file raises
      ValueError.
    input_tensor: optional Keras tensor to use as the image input.
    input_shape: (227, 227, 3) by default. (224, 224, 3), the paper's stated
      size, zero-pads conv1's input by 2 on each side so the maps are the same
      (SPEC §1.3). Other sizes only with include_top=False.
    pooling: with include_top=False, None (4D pool5 maps), "avg" or "max"
      (global pooling to a 2D feature vector).
    classes: number of classes of fc8.
    classifier_activation: "softmax" (default) or None for logits, or any Keras
      activation name. The output is float32 under mixed precision.
    towers: 2 reproduces the two-GPU split (60,965,224 parameters); 1 is the
      one-tower, ungrouped variant (62,378,344 parameters).
    activation: "relu" (paper) or "tanh" (the paper's comparison).
    lrn: "paper" (k=2, n=5, alpha=1e-4, beta=0.75), "caffe" (k=1, alpha=1e-4/n),
      or "none" (the paper's ablation).
    lrn_scope: "tower" (paper: LRN within each tower's 48/128 channels) or
      "across_towers" (Caffe's bvlc_alexnet: LRN over all 96/256 channels).
    lrn_implementation: "fused" (default: XLA-compiled forward and gradient,
      about one memory pass each, float32 inside), "primitive" (ordinary
      kernels, no XLA; under a mixed_bfloat16 policy it computes in bfloat16),
      "primitive_float32" (the same, always in float32) or "op"
      (`tf.nn.local_response_normalization`, float32); all compute the same
      function (see `LocalResponseNormalization`).
    pooling_mode: "overlapping" (3x3 stride 2, paper) or "non_overlapping"
      (2x2 stride 2, the paper's ablation; same map sizes).
    dropout: dropout rate of fc6 and fc7 (paper 0.5); 0 disables it.
    initialization: "paper" (N(0, 0.01^2), biases 1 in conv2/4/5 and fc6/7) or
      "caffe" (bvlc_alexnet's: std 0.005 in fc6/7 and biases 0.1) or "he"
      (He-normal weights, N(0, 0.01^2) in fc8, zero biases; not in the paper,
      converges much sooner).
    mean: "imagenet" (per-channel RGB mean 123.68, 116.78, 103.94), 3 floats,
      an (H, W, 3) mean image (>= the input size, centre-cropped to it), or
      None for no mean subtraction.
    input_scale: multiplies the mean-subtracted pixels. 1.0 (the paper: 0..255
      scale); 1/58 gives roughly unit-variance inputs, which initialization="he"
      assumes (used by train.py's quick `shapes` preset).
    seed: seed of the weight initialisers, for reproducible models.
    name: model name.

  Returns:
    A `keras.Model`.
  """
  _validate(towers=towers, activation=activation, lrn=lrn, lrn_scope=lrn_scope,
            pooling_mode=pooling_mode, initialization=initialization, pooling=pooling,
            dropout=dropout, include_top=include_top, classes=classes, input_scale=input_scale)
  if weights is not None and not isinstance(weights, (str, os.PathLike)):
    raise ValueError(f"AlexNet: weights must be None or a path to a weights file; got {weights!r}.")
  image_shape = _input_shape(input_shape, include_top)
  tower_names = ("a", "b") if towers == 2 else ("",)

  def tname(layer: str, tower: str) -> str:
    return f"{layer}_{tower}" if tower else layer

  def conv(x, layer, tower, kernel_size, strides=1, padding="same"):
    kernel_init, bias_init = _initializers(initialization, layer, seed, tname(layer, tower))
    return layers.Conv2D(_WIDTHS[layer] // towers, kernel_size, strides=strides,
                         padding=padding, activation=activation,
                         kernel_initializer=kernel_init, bias_initializer=bias_init,
                         name=tname(layer, tower))(x)

  def dense(x, layer, tower):
    kernel_init, bias_init = _initializers(initialization, layer, seed, tname(layer, tower))
    return layers.Dense(_WIDTHS[layer] // towers, activation=activation,
                        kernel_initializer=kernel_init, bias_initializer=bias_init,
                        name=tname(layer, tower))(x)

  def pool(x, layer, tower):
    size = 3 if pooling_mode == "overlapping" else 2
    return layers.MaxPooling2D(size, strides=2, name=tname(layer, tower))(x)

  def norm(xs: list, layer: str) -> list:
    if lrn == "none":
      return xs
    params = dict(_LRN_PARAMS[lrn], implementation=lrn_implementation)
    if lrn_scope == "across_towers":
      return LocalResponseNormalization(**params, name=layer)(xs)
    return [LocalResponseNormalization(**params, name=tname(layer, t))(x)
            for x, t in zip(xs, tower_names)]

  def merge(xs: list, layer: str):
    return xs[0] if towers == 1 else layers.Concatenate(name=layer)(xs)

  if input_tensor is None:
    inputs = keras.Input(shape=image_shape, name="images")
  else:
    inputs = input_tensor
  x = inputs
  mean_layer = _mean_layer(mean, image_shape)
  if mean_layer is not None:
    x = mean_layer(x)
  if input_scale != 1.0:
    x = layers.Rescaling(input_scale, name="input_scale")(x)
  if image_shape[0] == 224 and include_top:
    x = layers.ZeroPadding2D(2, name="conv1_pad")(x)  # (224 + 4 - 11) / 4 + 1 = 55.

  # Layers 1-2: each tower sees only itself.
  t = [conv(x, "conv1", tw, 11, strides=4, padding="valid") for tw in tower_names]
  t = norm(t, "norm1")
  t = [pool(ti, "pool1", tw) for ti, tw in zip(t, tower_names)]
  t = [conv(ti, "conv2", tw, 5) for ti, tw in zip(t, tower_names)]
  t = norm(t, "norm2")
  t = [pool(ti, "pool2", tw) for ti, tw in zip(t, tower_names)]
  # Layer 3: the towers communicate.
  both = merge(t, "conv3_input")
  t = [conv(both, "conv3", tw, 3) for tw in tower_names]
  # Layers 4-5: each tower sees only itself again.
  t = [conv(ti, "conv4", tw, 3) for ti, tw in zip(t, tower_names)]
  t = [conv(ti, "conv5", tw, 3) for ti, tw in zip(t, tower_names)]
  t = [pool(ti, "pool5", tw) for ti, tw in zip(t, tower_names)]
  x = merge(t, "pool5")

  if include_top:
    # Fully connected layers see both towers.
    x = layers.Flatten(name="flatten")(x)
    for layer in ("fc6", "fc7"):
      t = [dense(x, layer, tw) for tw in tower_names]
      if dropout > 0:
        t = [ReplicaDropout(dropout, name=tname(f"drop{layer[2:]}", tw))(ti)
             for ti, tw in zip(t, tower_names)]
      x = merge(t, f"{layer}_output")
    kernel_init, bias_init = _initializers(initialization, "fc8", seed, "fc8")
    x = layers.Dense(classes, kernel_initializer=kernel_init, bias_initializer=bias_init,
                     name="fc8")(x)
    # float32 output even under a mixed-precision policy.
    x = layers.Activation(classifier_activation or "linear", dtype="float32",
                          name="predictions")(x)
  elif pooling == "avg":
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
  elif pooling == "max":
    x = layers.GlobalMaxPooling2D(name="max_pool")(x)

  if input_tensor is not None:
    inputs = keras.utils.get_source_inputs(input_tensor)
  model = keras.Model(inputs, x, name=name)
  if weights is not None:
    from alexnet_tf.weights import load_weights  # Avoid an import cycle.
    load_weights(model, weights)
  return model
