"""Keras layers AlexNet needs that Keras 3 does not ship.

* `LocalResponseNormalization`: the paper's LRN (section 3.3), registered and
  serialisable (a `Lambda` around `tf.nn.local_response_normalization` does not
  reload in Keras 3), with an optional cross-tower scope for Caffe's weights.
* `ReplicaDropout`: dropout whose mask differs between tf.distribute replicas.
* `MeanSubtraction`: subtracts the training-set mean (per channel or a mean
  image) inside the model, so a served model takes raw 0..255 RGB pixels.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf import preprocessing

LRN_IMPLEMENTATIONS = ("fused", "primitive", "primitive_float32", "op")


def caffe_to_paper_lrn(local_size: int = 5, alpha: float = 1e-4,
                       k: float = 1.0, beta: float = 0.75) -> dict[str, Any]:
  """Converts Caffe/PyTorch/ONNX LRN parameters to this package's (paper) ones.

  Caffe, PyTorch's `LocalResponseNorm` and ONNX's `LRN` divide alpha by the
  window size n; the paper and `tf.nn.local_response_normalization` do not:
  Caffe (alpha, k) is paper (alpha / n, k).

  Args:
    local_size: Caffe's `local_size` (the full window n, odd).
    alpha: Caffe's `alpha` (divided by n inside Caffe).
    k: Caffe's `k` (default 1 in Caffe).
    beta: exponent, identical in both conventions.

  Returns:
    Keyword arguments for `LocalResponseNormalization`.
  """
  if local_size < 1 or local_size % 2 != 1:
    raise ValueError(f"LRN local_size must be a positive odd integer; got {local_size}.")
  return dict(depth_radius=(local_size - 1) // 2, bias=float(k),
              alpha=float(alpha) / local_size, beta=float(beta))


def _negative_power(t: tf.Tensor, beta: float) -> tf.Tensor:
  """t ** -beta with cheap special cases (t > 0 always here since bias > 0)."""
  if beta == 0.75:  # The paper's value: t^-0.75 = t^-0.5 * t^-0.25.
    r = tf.math.rsqrt(t)
    return r * tf.sqrt(r)
  if beta == 0.5:
    return tf.math.rsqrt(t)
  if beta == 1.0:
    return tf.math.reciprocal(t)
  return tf.exp(-beta * tf.math.log(t))


def _window_sum(t: tf.Tensor, radius: int) -> tf.Tensor:
  """Sum over the channel window c − r..c + r of [M, C] `t` (zeros beyond the edges), as
  shifted slices: XLA fuses them into the surrounding elementwise loop."""
  channels = t.shape[-1]
  padded = tf.pad(t, [[0, 0], [radius, radius]])
  total = padded[:, :channels]
  for i in range(1, 2 * radius + 1):
    total += padded[:, i:i + channels]
  return total


@functools.lru_cache(maxsize=None)
def _fused_lrn(radius: int, bias: float, alpha: float, beta: float):
  """LRN and its gradient on [M, C] tensors as two XLA-compiled functions (jit_compile).

  Each compiles to about one fused loop: the forward pass reads x and writes y, the backward
  pass reads g and x and writes ∂L/∂x, recomputing the denominator rather than storing it.
  Both compute in float32 inside the loop, whatever the input dtype, at no extra memory
  traffic. Cached per parameter set, so every layer with the paper's values shares them.
  """

  def denominator(x):
    return bias + alpha * _window_sum(tf.square(x), radius)

  @tf.function(jit_compile=True, autograph=False)
  def forward(x):
    x32 = tf.cast(x, tf.float32)
    return tf.cast(x32 * _negative_power(denominator(x32), beta), x.dtype)

  @tf.function(jit_compile=True, autograph=False)
  def backward(g, x):
    x32, g32 = tf.cast(x, tf.float32), tf.cast(g, tf.float32)
    d = denominator(x32)
    p = _negative_power(d, beta)
    window = _window_sum(g32 * x32 * p / d, radius)
    return tf.cast(g32 * p - (2.0 * alpha * beta) * x32 * window, x.dtype)

  return forward, backward


@contextlib.contextmanager
def lrn_without_xla(model: keras.Model) -> Iterator[None]:
  """Inside this context the model's "fused" LRN layers trace "primitive_float32" instead.

  For graphs that must not contain XLA-compiled functions: TF Serving GPU builds reject
  them (tensorflow/serving#2214), so `export` traces its signatures in this context. The two
  implementations compute the same function, both in float32 whatever the input dtype.
  """
  changed = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
             if isinstance(layer, LocalResponseNormalization)
             and layer.implementation == "fused"]
  for layer in changed:
    layer.implementation = "primitive_float32"
  try:
    yield
  finally:
    for layer in changed:
      layer.implementation = "fused"


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
  """Local response normalisation across channels (Krizhevsky et al. 2012, §3.3).

      b[..., c] = a[..., c] / (bias + alpha * sum_{c' = c-r}^{c+r} a[..., c']^2) ** beta

  with r = `depth_radius` (the paper's n = 2r + 1 = `size`). This is the
  paper's and `tf.nn.local_response_normalization`'s convention: alpha is NOT
  divided by n. Caffe, PyTorch and ONNX divide alpha by n and default k=1; use
  `LocalResponseNormalization.from_caffe(...)` or `caffe_to_paper_lrn` for them.
  The paper's values are the defaults: k=2, n=5, alpha=1e-4, beta=0.75.

  The default "fused" implementation compiles the layer and its gradient with
  XLA into about one memory pass each (LRN is memory-bound), computing in
  float32 inside the loop whatever the input dtype. The others: "primitive"
  computes in float32, except on bfloat16 inputs, where it computes in
  bfloat16 (float32's range, so the squares cannot overflow, and the
  denominator is ≥ k: a few bfloat16 roundings, ≤ 2.5% relative, no bias,
  measured, at half the memory traffic); "op" computes in float32 (the LRN op
  has no bfloat16 kernel and squares overflow float16). All return their input
  dtype, so they work under `mixed_bfloat16` and `mixed_float16` policies.

  Called on a list of tensors (one per tower), it normalises them as if they
  were concatenated along channels (the window crosses tower boundaries) and
  returns a list of the same sizes: Caffe's `bvlc_alexnet` scope.

  Args:
    depth_radius: half-width r of the channel window. Mutually exclusive with
      `size`.
    bias: k, the additive constant.
    alpha: scale of the sum of squares (paper convention, not divided by n).
    beta: exponent.
    size: the full window n = 2r + 1 (odd), as in the paper's text.
    implementation: "fused" (default): the forward pass and the hand-written
      gradient below as two XLA-compiled functions, each about one fused loop
      (the window sum as shifted slices); graphs for TF Serving trace
      "primitive_float32" instead (`lrn_without_xla`). "primitive" computes the window
      sum as a banded 0/1 matrix product and the power with rsqrt, with the
      same gradient from ordinary kernels (no XLA); "primitive_float32" is the
      same but computes in float32 under bfloat16 too (the usual
      mixed-precision rule for normalisation layers); "op" calls
      `tf.nn.local_response_normalization`, whose gradient kernel is slow on
      CPU. All compute the same function.
    **kwargs: standard `keras.layers.Layer` arguments (name, dtype, ...).
  """

  def __init__(self, depth_radius: int | None = None, bias: float = 2.0,
               alpha: float = 1e-4, beta: float = 0.75, size: int | None = None,
               implementation: str = "fused", **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if depth_radius is not None and size is not None:
      raise ValueError("LocalResponseNormalization takes depth_radius or size, not both.")
    if size is not None:
      if int(size) != size or size < 1 or size % 2 != 1:
        raise ValueError(f"LRN size must be a positive odd integer; got {size!r}.")
      depth_radius = (int(size) - 1) // 2
    if depth_radius is None:
      depth_radius = 2
    if int(depth_radius) != depth_radius or depth_radius < 0:
      raise ValueError(f"LRN depth_radius must be an integer >= 0; got {depth_radius!r}.")
    if bias <= 0:
      raise ValueError(f"LRN bias (k) must be > 0; got {bias!r}.")
    if alpha < 0:
      raise ValueError(f"LRN alpha must be >= 0; got {alpha!r}.")
    if implementation not in LRN_IMPLEMENTATIONS:
      raise ValueError(f"LRN implementation must be one of {LRN_IMPLEMENTATIONS}; "
                       f"got {implementation!r}.")
    self.depth_radius = int(depth_radius)
    self.bias = float(bias)
    self.alpha = float(alpha)
    self.beta = float(beta)
    self.implementation = implementation
    self.supports_masking = True

  @classmethod
  def from_caffe(cls, local_size: int = 5, alpha: float = 1e-4, k: float = 1.0,
                 beta: float = 0.75, **kwargs: Any) -> "LocalResponseNormalization":
    """Builds the layer from Caffe-convention parameters (alpha divided by n)."""
    return cls(**caffe_to_paper_lrn(local_size, alpha, k, beta), **kwargs)

  @property
  def size(self) -> int:
    return 2 * self.depth_radius + 1

  def _band(self, channels: int, scale: float) -> np.ndarray:
    """scale · W, W the 0/1 channel-window matrix (W[i, j] = 1 iff |i − j| ≤ r; symmetric)."""
    idx = np.arange(channels)
    return scale * (np.abs(idx[:, None] - idx[None, :]) <= self.depth_radius).astype(np.float32)

  def _primitive(self, x: tf.Tensor) -> tf.Tensor:
    """LRN from a matrix product and elementwise ops, with its gradient written out.

    With d = k + α·W(x²) (channel-window sum) and p = d^−β, y = x·p and

        ∂L/∂x = g·p − 2αβ · x · W(g·y / d)        (g = ∂L/∂y; W is symmetric),

    which takes about half the memory passes of differentiating the forward ops one by one;
    LRN is memory-bound, so that is about half its backward time. Computes in x's dtype.
    """
    channels = x.shape[-1]
    forward = tf.constant(self._band(channels, self.alpha), x.dtype)
    backward = tf.constant(self._band(channels, -2.0 * self.alpha * self.beta), x.dtype)
    bias, beta = self.bias, self.beta

    @tf.custom_gradient
    def lrn(x):
      shape = tf.shape(x)
      flat = tf.reshape(x, [-1, channels])
      d = bias + tf.linalg.matmul(tf.square(flat), forward)
      p = _negative_power(d, beta)
      y = flat * p

      def grad(g):
        g = tf.reshape(g, [-1, channels])
        window = tf.linalg.matmul(g * y / d, backward)
        return tf.reshape(g * p + flat * window, shape)

      return tf.reshape(y, shape), grad

    return lrn(x)

  def _fused(self, x: tf.Tensor) -> tf.Tensor:
    """LRN as two XLA-fused loops (`_fused_lrn`), with the same gradient as `_primitive`."""
    channels = x.shape[-1]
    forward, backward = _fused_lrn(self.depth_radius, self.bias, self.alpha, self.beta)

    @tf.custom_gradient
    def lrn(x):
      shape = tf.shape(x)
      flat = tf.reshape(x, [-1, channels])

      def grad(g):
        return tf.reshape(backward(tf.reshape(g, [-1, channels]), flat), shape)

      return tf.reshape(forward(flat), shape), grad

    return lrn(x)

  def _normalize(self, x: tf.Tensor) -> tf.Tensor:
    in_dtype = x.dtype
    if self.implementation == "fused":
      return self._fused(x)
    if self.implementation == "primitive" and in_dtype == tf.bfloat16:
      # bfloat16 has float32's range (the squares cannot overflow, unlike float16's), and
      # d ≥ k keeps the division well conditioned: compute natively, at half the bytes.
      return self._primitive(x)
    x = tf.cast(x, tf.float32)  # "primitive_float32", "op", or float16/float32 inputs.
    if self.implementation == "op":
      y = tf.nn.local_response_normalization(
          x, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
          beta=self.beta)
    else:
      y = self._primitive(x)
    return tf.cast(y, in_dtype)

  def call(self, inputs):
    if isinstance(inputs, (list, tuple)):
      sizes = [t.shape[-1] for t in inputs]
      joined = self._normalize(tf.concat(list(inputs), axis=-1))
      return list(tf.split(joined, sizes, axis=-1))
    return self._normalize(inputs)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
                  beta=self.beta, implementation=self.implementation)
    return config


@keras.saving.register_keras_serializable(package="alexnet_tf")
class MeanSubtraction(keras.layers.Layer):
  """Subtracts the training-set mean from 0..255 RGB images, in float32.

  Args:
    mean: a per-channel mean (3 floats, RGB), stored in the config; or None
      together with `mean_image_shape` for a per-pixel mean image, stored as a
      non-trainable weight (set it with `set_mean_image`). A mean image larger
      than the input is centre-cropped to it (the paper subtracts the mean of
      the 256x256 image; a model only sees the crop).
    mean_image_shape: (H, W, 3) of the mean image, when `mean` is None.
    **kwargs: standard `keras.layers.Layer` arguments.
  """

  def __init__(self, mean: Sequence[float] | None = None,
               mean_image_shape: Sequence[int] | None = None, **kwargs: Any) -> None:
    kwargs["dtype"] = "float32"  # 0..255 pixels minus a mean need float32 precision.
    super().__init__(**kwargs)
    if (mean is None) == (mean_image_shape is None):
      raise ValueError("MeanSubtraction needs exactly one of mean (3 floats) or "
                       "mean_image_shape (H, W, 3).")
    if mean is not None:
      mean = [float(m) for m in np.asarray(mean, dtype=np.float64).reshape(-1)]
      if len(mean) != 3:
        raise ValueError(f"mean must have 3 values (R, G, B); got {len(mean)}.")
    if mean_image_shape is not None:
      mean_image_shape = tuple(int(d) for d in mean_image_shape)
      if len(mean_image_shape) != 3 or mean_image_shape[-1] != 3:
        raise ValueError(f"mean_image_shape must be (H, W, 3); got {mean_image_shape}.")
    self.mean = mean
    self.mean_image_shape = mean_image_shape

  def build(self, input_shape):
    if self.mean_image_shape is not None:
      h, w = input_shape[1], input_shape[2]
      mh, mw = self.mean_image_shape[:2]
      if h is not None and w is not None and (mh < h or mw < w):
        raise ValueError(f"The mean image ({mh}x{mw}) is smaller than the model "
                         f"input ({h}x{w}).")
      self.mean_image = self.add_weight(
          name="mean_image", shape=self.mean_image_shape, initializer="zeros",
          trainable=False)

  def set_mean_image(self, mean_image: np.ndarray) -> None:
    """Sets the per-pixel mean (H, W, 3), RGB, 0..255."""
    mean_image = np.asarray(mean_image, dtype=np.float32)
    if mean_image.shape != tuple(self.mean_image_shape):
      raise ValueError(f"mean image has shape {mean_image.shape}; this layer "
                       f"expects {self.mean_image_shape}.")
    self.mean_image.assign(mean_image)

  def call(self, inputs):
    inputs = tf.cast(inputs, tf.float32)
    if self.mean is not None:
      # x + (−m) is x − m bitwise; add_per_channel does it at twice the speed of broadcasting.
      return preprocessing.add_per_channel(inputs, tf.constant([-m for m in self.mean]))
    h, w = inputs.shape[1], inputs.shape[2]
    mh, mw = self.mean_image_shape[:2]
    top, left = (mh - h) // 2, (mw - w) // 2
    return inputs - self.mean_image[top:top + h, left:left + w, :]

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.pop("dtype", None)
    config.update(mean=self.mean, mean_image_shape=self.mean_image_shape)
    return config


@keras.saving.register_keras_serializable(package="alexnet_tf")
class ReplicaDropout(keras.layers.Dropout):
  """`keras.layers.Dropout` that draws an independent mask on every replica.

  Under a tf.distribute strategy Keras 3's Dropout draws its seed from one
  mirrored seed state, so every replica drops the same units (PITFALLS). This
  layer folds the replica's global id (unique across workers too) into the
  seed. Without a strategy it behaves exactly like `keras.layers.Dropout`.
  Same arguments as `keras.layers.Dropout`.
  """

  def call(self, inputs, training=False):
    if not training or self.rate <= 0:
      return inputs
    seed = tf.cast(self.seed_generator.next(), tf.int32)
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    seed = seed + tf.stack([0, tf.cast(replica, tf.int32) * 1_000_003])
    shape = tf.shape(inputs) if self.noise_shape is None else self.noise_shape
    keep = tf.random.stateless_uniform(shape, seed=seed) >= self.rate
    scaled = inputs / tf.cast(1.0 - self.rate, inputs.dtype)
    return tf.where(keep, scaled, tf.zeros_like(inputs))
