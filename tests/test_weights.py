"""Caffe-layout interchange: exact round trip, and agreement with a grouped reference."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf import AlexNet
from alexnet_tf.weights import from_caffe_layout, to_caffe_layout

CAFFE_SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
                "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
                "fc7": (4096, 4096), "fc8": (1000, 4096)}


def grouped_reference(params, x):
  """A one-graph AlexNet in Caffe's own layout: NCHW convolutions with group=2
  (as `Conv2D(groups=2)` in NHWC here), per-tower LRN, fc6 on the C,H,W flatten."""

  def conv(h, name, stride, pad, groups):
    w, b = params[name]
    kernel = tf.constant(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO (I per group)
    h = tf.pad(h, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    if groups == 1:
      out = tf.nn.conv2d(h, kernel, stride, "VALID")
    else:
      hs = tf.split(h, groups, axis=-1)
      ks = tf.split(kernel, groups, axis=-1)
      out = tf.concat([tf.nn.conv2d(hi, ki, stride, "VALID") for hi, ki in zip(hs, ks)], -1)
    return tf.nn.relu(out + b)

  def lrn_per_group(h):
    return tf.concat([tf.nn.local_response_normalization(g, 2, 2.0, 1e-4, 0.75)
                      for g in tf.split(h, 2, axis=-1)], -1)

  def pool(h):
    return tf.nn.max_pool2d(h, 3, 2, "VALID")

  h = tf.constant(x) - tf.constant([123.68, 116.78, 103.94])
  h = pool(lrn_per_group(conv(h, "conv1", 4, 0, 1)))
  h = pool(lrn_per_group(conv(h, "conv2", 1, 2, 2)))
  h = conv(h, "conv3", 1, 1, 1)
  h = conv(h, "conv4", 1, 1, 2)
  h = pool(conv(h, "conv5", 1, 1, 2))
  h = tf.reshape(tf.transpose(h, [0, 3, 1, 2]), [h.shape[0], -1])  # Caffe's C,H,W flatten.
  for name in ("fc6", "fc7"):
    w, b = params[name]
    h = tf.nn.relu(tf.matmul(h, w.T) + b)
  w, b = params["fc8"]
  return (tf.matmul(h, w.T) + b).numpy()


@pytest.fixture(scope="module")
def model():
  m = AlexNet(seed=11, classifier_activation=None, dropout=0.0)
  # Non-trivial biases so a misplaced bias would show.
  rng = np.random.RandomState(0)
  for layer in m.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype("float32"))
  return m


def test_shapes(model):
  params = to_caffe_layout(model)
  assert {k: v[0].shape for k, v in params.items()} == CAFFE_SHAPES
  assert all(v[1].shape == (v[0].shape[0],) for v in params.values())


def test_round_trip_exact(model):
  params = to_caffe_layout(model)
  fresh = AlexNet(seed=99, classifier_activation=None, dropout=0.0)
  from_caffe_layout(fresh, params)
  for a, b in zip(model.weights, fresh.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  again = to_caffe_layout(fresh)
  for k in params:
    np.testing.assert_array_equal(params[k][0], again[k][0])
    np.testing.assert_array_equal(params[k][1], again[k][1])


def test_bgr_order(model):
  rgb = to_caffe_layout(model)
  bgr = to_caffe_layout(model, input_channel_order="bgr")
  np.testing.assert_array_equal(rgb["conv1"][0][:, ::-1], bgr["conv1"][0])
  fresh = AlexNet(seed=98, classifier_activation=None)
  from_caffe_layout(fresh, bgr, input_channel_order="bgr")
  np.testing.assert_array_equal(fresh.get_layer("conv1_b").kernel.numpy(),
                                model.get_layer("conv1_b").kernel.numpy())


def test_grouped_reference_matches(model):
  params = to_caffe_layout(model)
  x = np.random.RandomState(1).uniform(0, 255, (2, 227, 227, 3)).astype(np.float32)
  expected = grouped_reference(params, x)
  got = model.predict(x, verbose=0)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_grouped_keras_conv_matches(model):
  """conv2 as Keras `Conv2D(groups=2)` (test only) equals the two tower layers."""
  params = to_caffe_layout(model)
  w, b = params["conv2"]
  grouped = keras.layers.Conv2D(256, 5, padding="same", groups=2, activation="relu")
  grouped.build((None, 27, 27, 96))
  grouped.set_weights([w.transpose(2, 3, 1, 0), b])
  x = np.random.RandomState(2).uniform(0, 5, (1, 27, 27, 96)).astype(np.float32)
  towers = np.concatenate([model.get_layer("conv2_a")(x[..., :48]).numpy(),
                           model.get_layer("conv2_b")(x[..., 48:]).numpy()], -1)
  np.testing.assert_allclose(grouped(x).numpy(), towers, atol=1e-4)


def test_one_tower_and_no_top():
  one = AlexNet(towers=1, classes=10, seed=1)
  params = to_caffe_layout(one)
  assert params["conv2"][0].shape == (256, 96, 5, 5)
  fresh = AlexNet(towers=1, classes=10, seed=2)
  from_caffe_layout(fresh, params)
  for a, b in zip(one.weights, fresh.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  features = AlexNet(include_top=False, seed=3)
  assert sorted(to_caffe_layout(features)) == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_mismatch_errors(model):
  params = to_caffe_layout(model)
  small = AlexNet(classes=10)
  with pytest.raises(ValueError, match=r"fc8: expected W\[10, 4096\]"):
    from_caffe_layout(small, params)
  incomplete = dict(params)
  del incomplete["conv3"]
  with pytest.raises(ValueError, match="lack layer 'conv3'"):
    from_caffe_layout(AlexNet(), incomplete)
  with pytest.raises(ValueError, match="input_channel_order"):
    to_caffe_layout(model, input_channel_order="rbg")
