"""Importing bvlc_alexnet from ONNX: the Keras model must match onnxruntime.

The ONNX graphs are built here with `onnx.helper` in the ONNX model zoo's
bvlcalexnet structure (Caffe -> Caffe2 -> ONNX: Conv group 2 on conv2/4/5, Relu,
LRN size 5 alpha 1e-4 beta 0.75 bias 1, MaxPool 3/2, Reshape or Flatten, Gemm
transB=1, Dropout, Softmax; the input is NCHW BGR with Caffe's mean already
subtracted), once in opset 9 and once in opset 12 with the variations other
converters produce (Constant-node weights, MatMul + Add, Gemm without transB,
pool1 end padding, Dropout ratio as an input).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import keras  # noqa: E402

from alexnet_tf import AlexNet  # noqa: E402
from alexnet_tf.errors import UserError  # noqa: E402
from alexnet_tf.onnx_import import (CAFFE_MEAN_BGR, import_onnx_weights, load_imported,  # noqa: E402
                                    model_from_onnx, model_kwargs, read_onnx_alexnet)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 1000
NUM_IMAGES = 3


def caffe_params(seed: int = 0, scale: float = 1.0, classes: int = CLASSES,
                 widths: dict | None = None) -> dict:
  """Random Caffe-layout weights with realistic scales (BGR conv1).

  He-style std keeps activations in the tens to hundreds, as in the real
  network (conv1's ReLU outputs reach the hundreds, so LRN matters); fc8 is
  scaled so the softmax is far from uniform but not one-hot.
  """
  w = dict(conv1=96, conv2=256, conv3=384, conv4=384, conv5=256, fc=4096, flat=9216)
  w.update(widths or {})
  rng = np.random.RandomState(seed)
  shapes = {"conv1": (w["conv1"], 3, 11, 11), "conv2": (w["conv2"], w["conv1"] // 2, 5, 5),
            "conv3": (w["conv3"], w["conv2"], 3, 3), "conv4": (w["conv4"], w["conv3"] // 2, 3, 3),
            "conv5": (w["conv5"], w["conv4"] // 2, 3, 3), "fc6": (w["fc"], w["flat"]),
            "fc7": (w["fc"], w["fc"]), "fc8": (classes, w["fc"])}
  params = {}
  for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:]))
    std = scale * np.sqrt(2.0 / fan_in) * (0.02 if name == "fc8" else 1.0)
    params[name] = (rng.normal(0, std, shape).astype(np.float32),
                    rng.normal(0, 0.1, shape[0]).astype(np.float32))
  return params


def _init(name, array):
  array = np.asarray(array)
  return numpy_helper.from_array(np.ascontiguousarray(array) if array.ndim else array, name)


def build_onnx(params: dict, opset: int, softmax: bool = True, lrn=(5, 1e-4, 0.75, 1.0),
               pool_before_lrn: bool = False, image_size: int = 227, flat: int = 9216):
  """An ONNX AlexNet in the zoo's structure (see the module docstring)."""
  nodes, inits = [], []
  v12 = opset >= 12

  def const(name, array, as_node=False):
    if as_node:
      nodes.append(helper.make_node("Constant", [], [name], value=_init(name + "_t", array)))
    else:
      inits.append(_init(name, array))
    return name

  x = "data_0"
  size, alpha, beta, bias = lrn

  def conv(x, name, k, s, p, g):
    w, b = params[name]
    as_node = v12 and name == "conv3"  # A Constant-node weight, as some exporters write.
    out = f"{name}_1"
    nodes.append(helper.make_node(
        "Conv", [x, const(f"{name}_w_0", w, as_node), const(f"{name}_b_0", b)], [out],
        kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g, dilations=[1, 1]))
    nodes.append(helper.make_node("Relu", [out], [f"{name}_2"]))
    return f"{name}_2"

  def norm(x, i):
    nodes.append(helper.make_node("LRN", [x], [f"norm{i}_1"], size=size, alpha=alpha,
                                  beta=beta, bias=bias))
    return f"norm{i}_1"

  def pool(x, i, end_pad=0):
    nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}_1"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[0, 0, end_pad, end_pad]))
    return f"pool{i}_1"

  def dropout(x, name):
    if v12:  # Opset 12: ratio is an optional input; the mask output is optional.
      ratio = const(f"{name}_ratio", np.array(0.5, np.float32))
      nodes.append(helper.make_node("Dropout", [x, ratio], [f"{name}_3", f"_{name}_mask_1"]))
    else:
      nodes.append(helper.make_node("Dropout", [x], [f"{name}_3", f"_{name}_mask_1"], ratio=0.5))
    return f"{name}_3"

  def gemm(x, name, trans_b=True):
    w, b = params[name]
    nodes.append(helper.make_node("Gemm", [x, const(f"{name}_w_0", w if trans_b else w.T),
                                           const(f"{name}_b_0", b)], [f"{name}_1"],
                                  transB=1 if trans_b else 0))
    return f"{name}_1"

  def matmul_add(x, name):
    w, b = params[name]
    nodes.append(helper.make_node("MatMul", [x, const(f"{name}_w_0", w.T)], [f"{name}_mm"]))
    nodes.append(helper.make_node("Add", [f"{name}_mm", const(f"{name}_b_0", b)], [f"{name}_1"]))
    return f"{name}_1"

  x = conv(x, "conv1", 11, 4, 0, 1)
  if pool_before_lrn:  # CaffeNet's order.
    x = norm(pool(x, 1), 1)
  else:
    x = pool(norm(x, 1), 1, end_pad=1 if v12 else 0)  # The 224 zoo files pad pool1's end.
  x = conv(x, "conv2", 5, 1, 2, 2)
  x = norm(pool(x, 2), 2) if pool_before_lrn else pool(norm(x, 2), 2)
  x = conv(x, "conv3", 3, 1, 1, 1)
  x = conv(x, "conv4", 3, 1, 1, 2)
  x = pool(conv(x, "conv5", 3, 1, 1, 2), 5)
  if v12:
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
  else:  # Caffe2's Reshape to [batch, 9216] (the zoo's OC2_DUMMY_1 is [1, 9216]).
    nodes.append(helper.make_node("Reshape", [x, const("OC2_DUMMY_1",
                                                       np.array([-1, flat], np.int64))],
                                  ["flat"]))
  x = "flat"
  nodes.append(helper.make_node("Relu", [gemm(x, "fc6")], ["fc6_2"]))
  x = dropout("fc6_2", "fc6")
  fc7 = matmul_add(x, "fc7") if v12 else gemm(x, "fc7")
  nodes.append(helper.make_node("Relu", [fc7], ["fc7_2"]))
  x = dropout("fc7_2", "fc7")
  x = gemm(x, "fc8", trans_b=not v12)
  if softmax:
    nodes.append(helper.make_node("Softmax", [x], ["prob_1"]))
    x = "prob_1"
  classes = params["fc8"][0].shape[0]
  graph = helper.make_graph(
      nodes, "bvlc_alexnet",
      [helper.make_tensor_value_info("data_0", TensorProto.FLOAT,
                                     ["N", 3, image_size, image_size])],
      [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", classes])], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                            producer_name="alexnet_tf tests")
  model.ir_version = 4 if opset <= 9 else 7
  return model


def images(n: int = NUM_IMAGES, seed: int = 1) -> np.ndarray:
  """RGB 0..255 NHWC: smooth random colour fields plus noise (not flat, not pure noise)."""
  rng = np.random.RandomState(seed)
  low = rng.uniform(0, 255, (n, 8, 8, 3))
  up = np.repeat(np.repeat(low, 29, axis=1), 29, axis=2)[:, :227, :227]
  return np.clip(up + rng.normal(0, 25, up.shape), 0, 255).astype(np.float32)


def onnx_input(rgb: np.ndarray) -> np.ndarray:
  """The zoo model's convention: NCHW, BGR, Caffe's mean subtracted."""
  bgr = rgb[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)
  return np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)).astype(np.float32)


def run_ort(path: str, x: np.ndarray) -> np.ndarray:
  options = ort.SessionOptions()
  options.intra_op_num_threads = 2
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def params():
  return caffe_params()


@pytest.fixture(scope="module")
def x_rgb():
  return images()


def _zoo(opset, params, x_rgb, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(f"opset{opset}") / f"bvlcalexnet-{opset}.onnx")
  onnx.save(build_onnx(params, opset), path)
  return path, run_ort(path, onnx_input(x_rgb))


@pytest.fixture(scope="module")
def zoo9(params, x_rgb, tmp_path_factory):
  """(path, onnxruntime probabilities) of a zoo-structured opset-9 file."""
  return _zoo(9, params, x_rgb, tmp_path_factory)


@pytest.fixture(scope="module")
def zoo12(params, x_rgb, tmp_path_factory):
  """(path, onnxruntime probabilities) of an opset-12 file with the variations."""
  return _zoo(12, params, x_rgb, tmp_path_factory)


@pytest.fixture(params=[9, 12])
def zoo(request):
  return request.getfixturevalue(f"zoo{request.param}")


_IMPORTED = {}


def imported(path):
  """model_from_onnx(path), built once per file."""
  if path not in _IMPORTED:
    _IMPORTED[path] = model_from_onnx(path)
  return _IMPORTED[path]


@pytest.fixture(scope="module")
def zoo_proto(params):
  """An opset-9 ModelProto to edit (cheaper than building or reading a new one)."""
  return build_onnx(params, 9)


def edited(proto, edit):
  copy = onnx.ModelProto()
  copy.CopyFrom(proto)
  edit(copy.graph)
  return copy


def test_reference_is_not_trivial(zoo):
  _, probs = zoo
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  assert 0.02 < probs.max() < 0.99  # Neither uniform (1e-3) nor one-hot.
  assert np.abs(probs[0] - probs[1]).max() > 1e-3  # The images give different outputs.


def test_read_structure(zoo, params):
  path, _ = zoo
  got, info = read_onnx_alexnet(path)
  assert info["lrn_mode"] == "caffe" and info["classes"] == CLASSES and info["has_softmax"]
  assert info["lrn"] == dict(size=5, alpha=pytest.approx(1e-4), beta=0.75, bias=1.0)
  assert info["mean"] is None
  for name, (w, b) in params.items():
    np.testing.assert_array_equal(got[name][0], w)
    np.testing.assert_array_equal(got[name][1], b)


def test_keras_matches_onnxruntime(zoo, x_rgb):
  path, probs = zoo
  model, kwargs = imported(path)
  assert kwargs["lrn"] == "caffe" and kwargs["lrn_scope"] == "across_towers"
  assert kwargs["mean"] == [123.0, 117.0, 104.0]
  assert model.count_params() == 60_965_224
  ours = model.predict(x_rgb, verbose=0)
  diff = np.abs(ours - probs).max()
  print(f"max |keras - onnxruntime| = {diff:.2e}")
  assert diff < 1e-4
  np.testing.assert_array_equal(ours.argmax(axis=1), probs.argmax(axis=1))


def test_tower_scope_lrn_differs(zoo9, x_rgb):
  """SPEC §1.2: Caffe's weights need LRN across the towers; per-tower LRN differs."""
  path, probs = zoo9
  across, kwargs = imported(path)
  tower = AlexNet(**dict(kwargs, lrn_scope="tower"))
  tower.set_weights(across.get_weights())
  d_across = np.abs(across.predict(x_rgb, verbose=0) - probs).max()
  d_tower = np.abs(tower.predict(x_rgb, verbose=0) - probs).max()
  print(f"max |prob - onnxruntime|: across_towers {d_across:.2e}, tower {d_tower:.2e}")
  assert d_across < 1e-4
  assert d_tower > 3e-4 and d_tower > 10 * d_across


def test_keras_file_reloads(zoo12, x_rgb, tmp_path):
  path, probs = zoo12
  out = str(tmp_path / "bvlc_alexnet.keras")
  names = [f"class {i}" for i in range(CLASSES)]
  description = import_onnx_weights(path, out, class_names=names)
  assert os.path.isfile(out)
  with open(out + ".json") as f:
    assert json.load(f) == description
  assert description["class_names"] == names
  reloaded = keras.models.load_model(out)
  np.testing.assert_allclose(reloaded.predict(x_rgb, verbose=0), probs, atol=1e-4, rtol=0)
  assert reloaded.get_layer("norm1").get_config()["alpha"] == pytest.approx(1e-4 / 5)


def test_cli_weights_file(zoo9, x_rgb, tmp_path):
  """The entry point with a .weights.h5 output: prints and writes the kwargs."""
  path, probs = zoo9
  out = str(tmp_path / "w" / "bvlc_alexnet.weights.h5")
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_tf.tools.import_weights", f"--onnx={path}",
       f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "AlexNet kwargs" in result.stdout and '"lrn_scope": "across_towers"' in result.stdout
  with open(out + ".json") as f:
    assert json.load(f)["alexnet_kwargs"]["lrn"] == "caffe"
  # load_imported(out) is AlexNet(**kwargs from out.json, weights=out).
  np.testing.assert_allclose(load_imported(out).predict(x_rgb[:1], verbose=0), probs[:1],
                             atol=1e-4, rtol=0)


# --- Variants and bad input on small graphs (no big weights needed). ---

SMALL = dict(conv1=8, conv2=8, conv3=8, conv4=8, conv5=8, fc=16, flat=8 * 36)


def small_model(**kwargs):
  return build_onnx(caffe_params(classes=10, widths=SMALL), 9, flat=SMALL["flat"], **kwargs)


def _set_lrn(graph, **values):
  for node in graph.node:
    if node.op_type == "LRN":
      for attr in node.attribute:
        if attr.name in values:
          attr.CopyFrom(helper.make_attribute(attr.name, values[attr.name]))


def test_no_softmax_and_paper_lrn(zoo_proto):
  def edit(graph):
    _set_lrn(graph, alpha=5e-4, bias=2.0)
    softmax = [n for n in graph.node if n.op_type == "Softmax"][0]
    graph.node.remove(softmax)
    graph.output[0].name = softmax.input[0]

  _, info = read_onnx_alexnet(edited(zoo_proto, edit))
  assert not info["has_softmax"] and info["lrn_mode"] == "paper"
  assert model_kwargs(info)["classifier_activation"] is None


def test_other_shapes_are_rejected():
  with pytest.raises(UserError, match=r"conv1.*expected weight shape \[96, 3, 11, 11\].*"
                                      r"found \[8, 3, 11, 11\]"):
    read_onnx_alexnet(small_model())


def test_caffenet_order_is_rejected():
  with pytest.raises(UserError, match="MaxPool before LRN.*CaffeNet"):
    read_onnx_alexnet(small_model(pool_before_lrn=True))


def test_unsupported_lrn_is_rejected(zoo_proto):
  with pytest.raises(UserError, match="LRN parameters.*size': 3.*fit neither"):
    read_onnx_alexnet(edited(zoo_proto, lambda g: _set_lrn(g, size=3)))


def test_other_network_is_rejected():
  x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
  y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])
  w = _init("w", np.zeros((4, 3, 3, 3), np.float32))
  graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                             helper.make_node("Relu", ["c"], ["y"])], "tiny", [x], [y], [w])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
  with pytest.raises(UserError, match=r"expected the layers Conv, Relu, LRN, MaxPool.*"
                                      r"found 2 layers: Conv, Relu\."):
    read_onnx_alexnet(model)


def test_bad_files(tmp_path):
  good = tmp_path / "small.onnx"
  onnx.save(small_model(), str(good))
  data = good.read_bytes()
  truncated = tmp_path / "truncated.onnx"
  truncated.write_bytes(data[: len(data) // 3])
  garbage = tmp_path / "garbage.onnx"
  garbage.write_bytes(np.random.RandomState(0).bytes(5000))
  text = tmp_path / "notes.onnx"
  text.write_text("this is not a model\n")
  for path in (truncated, garbage, text):
    with pytest.raises(UserError, match=r"--onnx .*(cannot be read|not an ONNX model)"):
      read_onnx_alexnet(str(path))
  with pytest.raises(UserError, match="does not exist"):
    read_onnx_alexnet(str(tmp_path / "missing.onnx"))
  with pytest.raises(UserError, match="must end in '.keras'"):
    import_onnx_weights(str(good), str(tmp_path / "out.h5"))


def test_cli_bad_file(tmp_path):
  bad = tmp_path / "bad.onnx"
  bad.write_bytes(b"\x08\x07garbage" * 10)
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_tf.tools.import_weights", f"--onnx={bad}",
       f"--output={tmp_path / 'm.keras'}"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 1
  assert "error: --onnx" in result.stderr and "Traceback" not in result.stderr


def test_onnx_folder_is_named(tmp_path):
  with pytest.raises(UserError, match=r"--onnx .* is a folder; give the \.onnx file"):
    read_onnx_alexnet(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's /sys")
def test_cli_unwritable_output_before_conversion(tmp_path):
  """--output where even root cannot write (/sys) is one sentence, said before the ONNX file is
  read (here a bad one, whose error would come first otherwise); it was a PermissionError
  traceback after the conversion."""
  bad = tmp_path / "bad.onnx"
  bad.write_bytes(b"\x08\x07garbage" * 10)
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_tf.tools.import_weights", f"--onnx={bad}",
       "--output=/sys/kernel/alexnet_tf.keras"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "--output '/sys/kernel/alexnet_tf.keras'" in lines[0], lines
