"""Imports the BVLC AlexNet (Caffe's `bvlc_alexnet`) from an ONNX file.

The ONNX model zoo's `bvlcalexnet-*.onnx` (opsets 3-12) is Caffe's grouped
`bvlc_alexnet` converted through Caffe2. This package reproduces that topology
exactly (SPEC §1), so its weights fit `AlexNet(...)` with no approximation:

  data (N, 3, H, W) BGR, mean-subtracted
  -> Conv 11x11/4 (96)          -> Relu -> LRN -> MaxPool 3/2
  -> Conv 5x5 pad 2 group 2     -> Relu -> LRN -> MaxPool 3/2
  -> Conv 3x3 pad 1 (384)       -> Relu
  -> Conv 3x3 pad 1 group 2     -> Relu
  -> Conv 3x3 pad 1 group 2     -> Relu -> MaxPool 3/2
  -> Reshape/Flatten -> Gemm (fc6) -> Relu -> [Dropout]
  -> Gemm (fc7) -> Relu -> [Dropout] -> Gemm (fc8) -> [Softmax]

Layers are found by walking the graph from its input (node and tensor names
differ between opsets and converters), never by name. Fully connected layers
may be `Gemm` (any transB, alpha, beta) or `MatMul` + `Add`; weights may be
initialisers or `Constant` nodes; Dropout and Identity nodes are skipped.

Caffe conventions and how they map onto `AlexNet(...)`:

* conv1's input channels are BGR; the imported model takes RGB
  (`from_caffe_layout(..., input_channel_order="bgr")` swaps them).
* The zoo graph has no mean subtraction: it expects BGR pixels minus Caffe's
  mean (104, 117, 123). The imported model takes 0..255 RGB and subtracts the
  RGB mean (123, 117, 104) itself. A leading `Sub` of a 3-value constant in the
  graph is used as the mean instead.
* ONNX's LRN, like Caffe's, divides alpha by the window size: size 5,
  alpha 1e-4, beta 0.75, bias 1 is `lrn="caffe"`.
* Caffe normalises across all 96 / 256 channels of norm1 / norm2 (its conv1 is
  one layer and conv2's output one blob), crossing the tower boundary:
  `lrn_scope="across_towers"` (SPEC §1.2; per-tower LRN differs by ~1e-3).
* Input 227x227 as Caffe's deploy.prototxt. The zoo's newer files declare a
  224x224 input and pad pool1's end by 1 (Caffe's ceil-mode pooling); at 227
  every pooling window fits exactly, so that padding never changes a value.

`onnx` is an optional dependency (`pip install 'alexnet_tf[onnx]'`), imported
only when a function here needs it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from alexnet_tf.errors import UserError, check_writable_file

# Caffe's per-channel mean of bvlc_alexnet, BGR (the ONNX model's own order).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGE_SIZE = 227
SIDECAR_FORMAT = "alexnet_tf.imported_weights/1"

# Caffe-layout shapes (OIHW / (out, in)); fc8's class count is free.
_CAFFE_SHAPES = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
                 "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
                 "fc7": (4096, 4096), "fc8": (None, 4096)}
# (kernel, stride, pad, group) of each convolution.
_CONV_GEOMETRY = {"conv1": (11, 4, 0, 1), "conv2": (5, 1, 2, 2), "conv3": (3, 1, 1, 1),
                  "conv4": (3, 1, 1, 2), "conv5": (3, 1, 1, 2)}
# The layer sequence of bvlc_alexnet, as kinds (see `_kind_name` for ONNX ops).
_EXPECTED = ("conv", "relu", "lrn", "pool", "conv", "relu", "lrn", "pool",
             "conv", "relu", "conv", "relu", "conv", "relu", "pool",
             "flatten", "fc", "relu", "fc", "relu", "fc")
_SKIPPED_OPS = ("Dropout", "Identity")
# LRN settings of AlexNet(lrn=...) in Caffe/ONNX convention (size, alpha, beta, bias).
_LRN_MODES = {"caffe": (5, 1e-4, 0.75, 1.0), "paper": (5, 5e-4, 0.75, 2.0)}

ParamDict = dict[str, tuple[np.ndarray, np.ndarray]]


def _onnx():
  """Imports onnx lazily; UserError naming the extra if it is missing."""
  try:
    import onnx  # pylint: disable=import-outside-toplevel
    from onnx import numpy_helper  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise UserError("importing ONNX weights needs the 'onnx' package: "
                    "pip install 'alexnet_tf[onnx]' (or pip install onnx).") from e
  return onnx


def load_onnx(path: str | os.PathLike) -> Any:
  """Reads an ONNX file; UserError if it is missing, truncated or not ONNX.

  Args:
    path: the .onnx file.

  Returns:
    The `onnx.ModelProto`.
  """
  onnx = _onnx()
  path = os.fspath(path)
  if os.path.isdir(path):
    raise UserError(f"--onnx {path!r} is a folder; give the .onnx file (e.g. "
                    "bvlcalexnet-12.onnx).")
  if not os.path.isfile(path):
    raise UserError(f"--onnx {path!r} does not exist.")
  try:
    model = onnx.load(path)
  except Exception as e:  # DecodeError, external-data errors, ...: all mean "unreadable".
    raise UserError(f"--onnx {path!r} cannot be read as an ONNX model (truncated or not "
                    f"an ONNX file?): {type(e).__name__}: {str(e)[:200]}") from e
  if not model.HasField("graph") or not model.graph.node:
    raise UserError(f"--onnx {path!r} is not an ONNX model with a graph (empty, truncated "
                    "or another kind of file).")
  return model


class _Graph:
  """Constants and consumers of an ONNX graph."""

  def __init__(self, model: Any, where: str) -> None:
    onnx = _onnx()
    self.where = where
    self.numpy_helper = onnx.numpy_helper
    self.tensors = {t.name: t for t in model.graph.initializer}
    self.constant_nodes = {}
    for node in model.graph.node:
      if node.op_type == "Constant" and node.output:
        self.constant_nodes[node.output[0]] = node
    self.consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
      if node.op_type == "Constant":
        continue
      for name in node.input:
        if name and not self.is_constant(name):
          self.consumers.setdefault(name, []).append(node)
    inputs = [i.name for i in model.graph.input if not self.is_constant(i.name)]
    if len(inputs) != 1:
      raise UserError(f"{where}: expected one image input; the graph has {len(inputs)} "
                      f"non-constant inputs {inputs}.")
    self.input = model.graph.input[[i.name for i in model.graph.input].index(inputs[0])]
    self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

  def is_constant(self, name: str) -> bool:
    return name in self.tensors or name in self.constant_nodes

  def constant(self, name: str, what: str) -> np.ndarray:
    if name in self.tensors:
      tensor = self.tensors[name]
    elif name in self.constant_nodes:
      node = self.constant_nodes[name]
      attr = {a.name: a for a in node.attribute}
      if "value" in attr:
        tensor = attr["value"].t
      elif "value_float" in attr:
        return np.asarray(attr["value_float"].f, np.float32)
      elif "value_floats" in attr:
        return np.asarray(attr["value_floats"].floats, np.float32)
      elif "value_int" in attr:
        return np.asarray(attr["value_int"].i, np.int64)
      elif "value_ints" in attr:
        return np.asarray(attr["value_ints"].ints, np.int64)
      else:
        raise UserError(f"{self.where}: {what} is a Constant node of an unsupported kind "
                        f"({sorted(attr)}).")
    else:
      raise UserError(f"{self.where}: {what} ({name!r}) is not a constant (initializer or "
                      "Constant node); only graphs with fixed weights can be imported.")
    try:
      return self.numpy_helper.to_array(tensor)
    except Exception as e:
      raise UserError(f"{self.where}: {what} ({name!r}) cannot be read: {e}") from e


def _attrs(node: Any) -> dict[str, Any]:
  from onnx import helper  # pylint: disable=import-outside-toplevel
  out = {}
  for a in node.attribute:
    value = helper.get_attribute_value(a)
    out[a.name] = value.decode() if isinstance(value, bytes) else value
  return out


def _walk(graph: _Graph) -> list[Any]:
  """The chain of nodes from the image input to the end (Dropout/Identity skipped)."""
  chain = []
  current = graph.input.name
  seen = set()
  while True:
    nodes = graph.consumers.get(current, [])
    if not nodes:
      return chain
    if len(nodes) > 1:
      raise UserError(f"{graph.where}: not an AlexNet graph: tensor {current!r} feeds "
                      f"{len(nodes)} nodes ({', '.join(n.op_type for n in nodes)}); AlexNet "
                      "is a single chain of layers.")
    node = nodes[0]
    if id(node) in seen or len(chain) > 1000:
      raise UserError(f"{graph.where}: the graph has a cycle.")
    seen.add(id(node))
    if node.op_type not in _SKIPPED_OPS:
      chain.append(node)
    if not node.output:
      return chain
    current = node.output[0]


def _kind(node: Any) -> str:
  return {"Conv": "conv", "Relu": "relu", "LRN": "lrn", "MaxPool": "pool",
          "Flatten": "flatten", "Reshape": "flatten", "Gemm": "fc", "Softmax": "softmax",
          "Sub": "mean"}.get(node.op_type, node.op_type)


def _kind_name(kind: str) -> str:
  return {"conv": "Conv", "relu": "Relu", "lrn": "LRN", "pool": "MaxPool",
          "flatten": "Reshape/Flatten", "fc": "Gemm", "softmax": "Softmax",
          "mean": "Sub"}.get(kind, kind)


def _layers(chain: list[Any]) -> list[tuple[str, list[Any]]]:
  """Groups the chain into (kind, nodes): MatMul + Add becomes one "fc"."""
  out = []
  i = 0
  while i < len(chain):
    node = chain[i]
    if node.op_type == "MatMul" and i + 1 < len(chain) and chain[i + 1].op_type == "Add":
      out.append(("fc", [node, chain[i + 1]]))
      i += 2
      continue
    out.append((_kind(node), [node]))
    i += 1
  return out


def _check_sequence(kinds: list[str], where: str) -> None:
  body = [k for k in kinds if k != "mean"] if kinds[:1] == ["mean"] else list(kinds)
  if body[-1:] == ["softmax"]:
    body = body[:-1]
  if tuple(body) == _EXPECTED:
    return
  found = ", ".join(_kind_name(k) for k in kinds) or "no layers"
  expected = ", ".join(_kind_name(k) for k in _EXPECTED) + " [, Softmax]"
  swaps = []
  for blocks in ((2,), (6,), (2, 6)):
    swapped = list(_EXPECTED)
    for i in blocks:
      swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    swaps.append(tuple(swapped))
  hint = ""
  if tuple(body) in swaps:
    hint = (" It applies MaxPool before LRN (the CaffeNet / bvlc_reference_caffenet "
            "ordering); AlexNet(...) normalises before pooling, as the paper and "
            "bvlc_alexnet do, so these weights do not fit it.")
  elif any(k in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for k in kinds):
    hint = " Quantised (int8/QDQ) models are not supported; use the float32 bvlcalexnet file."
  raise UserError(f"{where}: not the BVLC AlexNet graph: expected the layers {expected} "
                  f"(Dropout ignored), found {len(kinds)} layers: {found}.{hint}")


def _ints(value: Any, n: int, default: int) -> list[int]:
  return [default] * n if value is None else [int(v) for v in value]


def _conv(graph: _Graph, node: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
  where = f"{graph.where}: {name} (Conv node {node.name!r})"
  kernel, stride, pad, group = _CONV_GEOMETRY[name]
  if len(node.input) < 2:
    raise UserError(f"{where} has no weight input.")
  w = graph.constant(node.input[1], f"{name} weight").astype(np.float32)
  expected = _CAFFE_SHAPES[name]
  if w.shape != expected:
    raise UserError(f"{where}: expected weight shape {list(expected)} (bvlc_alexnet), "
                    f"found {list(w.shape)}.")
  if len(node.input) > 2 and node.input[2]:
    b = graph.constant(node.input[2], f"{name} bias").astype(np.float32).reshape(-1)
  else:
    b = np.zeros(expected[0], np.float32)
  if b.shape != (expected[0],):
    raise UserError(f"{where}: expected bias shape [{expected[0]}], found {list(b.shape)}.")
  a = _attrs(node)
  found = dict(group=int(a.get("group", 1)),
               strides=_ints(a.get("strides"), 2, 1),
               dilations=_ints(a.get("dilations"), 2, 1),
               pads=_ints(a.get("pads"), 4, 0),
               auto_pad=a.get("auto_pad", "NOTSET") or "NOTSET")
  if found["auto_pad"] == "VALID":
    found["pads"] = [0, 0, 0, 0]
  elif found["auto_pad"] in ("SAME_UPPER", "SAME_LOWER") and stride == 1:
    found["pads"] = [(kernel - 1) // 2] * 4
  want = dict(group=group, strides=[stride] * 2, dilations=[1, 1], pads=[pad] * 4)
  bad = {k: found[k] for k in want if found[k] != want[k]}
  if bad or found["auto_pad"] not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
    raise UserError(f"{where}: expected {kernel}x{kernel} kernels with {want}; found "
                    f"{ {k: found[k] for k in want} } (auto_pad {found['auto_pad']}).")
  return w, b


def _pool(node: Any, name: str, where: str) -> int:
  """Checks a 3x3/2 max pool; returns its end padding (0, or 1 for ceil-mode emulation)."""
  a = _attrs(node)
  kernel = _ints(a.get("kernel_shape"), 2, 0)
  strides = _ints(a.get("strides"), 2, 1)
  pads = _ints(a.get("pads"), 4, 0)
  dilations = _ints(a.get("dilations"), 2, 1)
  auto_pad = a.get("auto_pad", "NOTSET") or "NOTSET"
  ok = (kernel == [3, 3] and strides == [2, 2] and dilations == [1, 1]
        and pads[:2] == [0, 0] and all(p in (0, 1) for p in pads[2:])
        and auto_pad in ("NOTSET", "VALID"))
  if not ok:
    raise UserError(f"{where}: {name} (MaxPool node {node.name!r}): expected 3x3 windows, "
                    f"stride 2, no leading padding; found kernel {kernel}, strides {strides}, "
                    f"pads {pads}, dilations {dilations}, auto_pad {auto_pad}.")
  return max(pads[2:])


def _lrn(node: Any, name: str, where: str) -> dict[str, float]:
  a = _attrs(node)
  if "size" not in a:
    raise UserError(f"{where}: {name} (LRN node {node.name!r}) has no size.")
  return dict(size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
              beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0)))


def lrn_mode(lrn: Mapping[str, float]) -> str | None:
  """The `AlexNet(lrn=...)` mode of ONNX/Caffe LRN parameters, or None if none fits."""
  for mode, (size, alpha, beta, bias) in _LRN_MODES.items():
    if (int(lrn["size"]) == size and np.isclose(lrn["alpha"], alpha, rtol=1e-5)
        and np.isclose(lrn["beta"], beta, rtol=1e-6) and np.isclose(lrn["bias"], bias, rtol=1e-6)):
      return mode
  return None


def _flatten(graph: _Graph, node: Any, where: str) -> None:
  a = _attrs(node)
  if node.op_type == "Flatten":
    if int(a.get("axis", 1)) != 1:
      raise UserError(f"{where}: the Flatten before fc6 must flatten from axis 1; found "
                      f"axis {a.get('axis')}.")
    return
  if len(node.input) > 1 and node.input[1]:
    shape = graph.constant(node.input[1], "the Reshape before fc6's shape").reshape(-1)
  else:  # Opsets < 5: shape attribute.
    shape = np.asarray(a.get("shape", []))
  shape = [int(s) for s in shape]
  if len(shape) != 2 or shape[1] not in (9216, -1) or shape[0] not in (-1, 0, 1):
    raise UserError(f"{where}: the Reshape before fc6 must give [batch, 9216] (Caffe's C,H,W "
                    f"flatten); found shape {shape}.")


def _fc(graph: _Graph, nodes: list[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
  """(W (out, in), b) of a Gemm or MatMul + Add."""
  where = f"{graph.where}: {name} ({'+'.join(n.op_type for n in nodes)} node {nodes[0].name!r})"
  first = nodes[0]
  if first.op_type == "Gemm":
    a = _attrs(first)
    if int(a.get("transA", 0)) != 0:
      raise UserError(f"{where}: transA=1 is not supported.")
    if graph.is_constant(first.input[0]) or not graph.is_constant(first.input[1]):
      raise UserError(f"{where}: expected the activations as Gemm's first input and "
                      "constant weights as its second.")
    w = graph.constant(first.input[1], f"{name} weight").astype(np.float32)
    if w.ndim != 2:
      raise UserError(f"{where}: expected a 2-D weight, found shape {list(w.shape)}.")
    if not int(a.get("transB", 0)):
      w = w.T  # (in, out) -> (out, in)
    w = w * np.float32(a.get("alpha", 1.0))
    if len(first.input) > 2 and first.input[2]:
      b = graph.constant(first.input[2], f"{name} bias").astype(np.float32)
      b = b * np.float32(a.get("beta", 1.0))
    else:
      b = np.zeros(w.shape[0], np.float32)
  else:  # MatMul + Add
    matmul, add = nodes
    if graph.is_constant(matmul.input[0]) or not graph.is_constant(matmul.input[1]):
      raise UserError(f"{where}: expected the activations as MatMul's first input and "
                      "constant weights as its second.")
    w = graph.constant(matmul.input[1], f"{name} weight").astype(np.float32)
    if w.ndim != 2:
      raise UserError(f"{where}: expected a 2-D weight, found shape {list(w.shape)}.")
    w = w.T
    other = [i for i in add.input if i != matmul.output[0]]
    if len(other) != 1:
      raise UserError(f"{where}: the Add after MatMul must add a bias.")
    b = graph.constant(other[0], f"{name} bias").astype(np.float32)
  b = np.asarray(b).reshape(-1)
  rows, cols = _CAFFE_SHAPES[name]
  if (rows is not None and w.shape[0] != rows) or w.shape[1] != cols:
    expected = f"[{rows if rows is not None else 'classes'}, {cols}]"
    raise UserError(f"{where}: expected weight (out, in) {expected} (bvlc_alexnet), found "
                    f"{list(w.shape)}.")
  if b.size == 1 and w.shape[0] != 1:
    b = np.full(w.shape[0], b[0], np.float32)
  if b.shape != (w.shape[0],):
    raise UserError(f"{where}: expected bias shape [{w.shape[0]}], found {list(b.shape)}.")
  return np.ascontiguousarray(w), b


def read_onnx_alexnet(source: Any) -> tuple[ParamDict, dict[str, Any]]:
  """Finds bvlc_alexnet's layers in an ONNX graph by structure and reads them.

  Args:
    source: path of an .onnx file, or an `onnx.ModelProto`.

  Returns:
    (params, info): params in the Caffe layout of `alexnet_tf.weights`
    ({"conv1": (W OIHW, b), ..., "fc8": (W (classes, 4096), b)}, conv1's input
    channels in the graph's own order, BGR for Caffe's models); info with
    "opset", "classes", "has_softmax", "lrn" (ONNX/Caffe-convention
    size/alpha/beta/bias), "lrn_mode" ("caffe", "paper"), "mean" (a leading
    `Sub` constant in the graph's channel order, or None), "input_name",
    "input_shape" (declared; None for symbolic dims) and "pool_end_pads".

  Raises:
    UserError: unreadable file, or a graph that is not bvlc_alexnet (the message
      says what was expected and what was found).
  """
  onnx = _onnx()
  if isinstance(source, onnx.ModelProto):
    model, where = source, "the ONNX model"
  else:
    model, where = load_onnx(source), f"--onnx {os.fspath(source)!r}"
  graph = _Graph(model, where)
  layers = _layers(_walk(graph))
  kinds = [k for k, _ in layers]
  _check_sequence(kinds, where)

  params: ParamDict = {}
  info: dict[str, Any] = dict(opset=graph.opset, has_softmax=kinds[-1] == "softmax", mean=None,
                              input_name=graph.input.name)
  dims = graph.input.type.tensor_type.shape.dim
  info["input_shape"] = [d.dim_value if d.HasField("dim_value") else None for d in dims] or None
  convs = iter(("conv1", "conv2", "conv3", "conv4", "conv5"))
  fcs = iter(("fc6", "fc7", "fc8"))
  pools = iter(("pool1", "pool2", "pool5"))
  lrns = []
  pool_pads = []
  data = graph.input.name
  for kind, nodes in layers:
    node = nodes[0]
    if kind == "mean":
      info["mean"] = _mean(graph, node, data)
    elif kind == "conv":
      name = next(convs)
      params[name] = _conv(graph, node, name)
    elif kind == "lrn":
      lrns.append(_lrn(node, f"norm{len(lrns) + 1}", where))
    elif kind == "pool":
      pool_pads.append(_pool(node, next(pools), where))
    elif kind == "flatten":
      _flatten(graph, node, where)
    elif kind == "fc":
      name = next(fcs)
      params[name] = _fc(graph, nodes, name)
    elif kind == "softmax":
      axis = int(_attrs(node).get("axis", 1 if graph.opset < 13 else -1))
      if axis not in (1, -1):
        raise UserError(f"{where}: the final Softmax must be over the classes (axis 1); "
                        f"found axis {axis}.")
    data = nodes[-1].output[0]

  if lrns[0] != lrns[1]:
    raise UserError(f"{where}: norm1 and norm2 have different LRN parameters ({lrns[0]} vs "
                    f"{lrns[1]}); AlexNet(...) uses one setting for both.")
  mode = lrn_mode(lrns[0])
  if mode is None:
    raise UserError(
        f"{where}: LRN parameters {lrns[0]} (ONNX/Caffe convention, alpha divided by size) fit "
        f"neither of AlexNet(lrn=...)'s settings: 'caffe' size 5, alpha 1e-4, beta 0.75, "
        f"bias 1 (bvlc_alexnet) or 'paper' size 5, alpha 5e-4, beta 0.75, bias 2.")
  info.update(lrn=lrns[0], lrn_mode=mode, classes=int(params["fc8"][0].shape[0]),
              pool_end_pads=pool_pads)
  return params, info


def _mean(graph: _Graph, node: Any, data: str) -> list[float]:
  if len(node.input) != 2 or node.input[0] != data or not graph.is_constant(node.input[1]):
    raise UserError(f"{graph.where}: a Sub before conv1 must subtract a constant mean from "
                    "the image.")
  mean = graph.constant(node.input[1], "the mean subtracted from the image").astype(np.float64)
  if mean.size != 3:
    raise UserError(f"{graph.where}: the mean subtracted before conv1 must have 3 values (one "
                    f"per channel); found shape {list(mean.shape)}.")
  return [float(m) for m in mean.reshape(-1)]


def model_kwargs(info: Mapping[str, Any], mean_rgb: Sequence[float] | None = None,
                 input_channel_order: str = "bgr",
                 lrn_scope: str = "across_towers") -> dict[str, Any]:
  """The `AlexNet(...)` kwargs (JSON-serialisable) that reproduce an imported graph.

  Args:
    info: from `read_onnx_alexnet`.
    mean_rgb: the RGB mean the model subtracts; default the graph's own `Sub`
      constant if it has one, else Caffe's (123, 117, 104).
    input_channel_order: "bgr" (Caffe, the zoo) or "rgb": the graph's channel order.
    lrn_scope: "across_towers" (Caffe's; exact) or "tower" (the paper's; differs).
  """
  if mean_rgb is None:
    graph_mean = info.get("mean")
    if graph_mean is not None:
      mean_rgb = graph_mean[::-1] if input_channel_order == "bgr" else graph_mean
    else:
      mean_rgb = CAFFE_MEAN_BGR[::-1]
  mean_rgb = [float(m) for m in mean_rgb]
  if len(mean_rgb) != 3:
    raise UserError(f"--mean must be 3 values R,G,B; got {mean_rgb}.")
  return dict(classes=int(info["classes"]), towers=2, lrn=info["lrn_mode"],
              lrn_scope=lrn_scope, initialization="caffe", mean=mean_rgb,
              classifier_activation="softmax" if info["has_softmax"] else None,
              input_shape=[IMAGE_SIZE, IMAGE_SIZE, 3])


def model_from_onnx(source: Any, mean_rgb: Sequence[float] | None = None,
                    input_channel_order: str = "bgr",
                    lrn_scope: str = "across_towers") -> tuple[Any, dict[str, Any]]:
  """Builds the Caffe-faithful `AlexNet` holding an ONNX bvlc_alexnet's weights.

  The model takes 227x227 RGB images in 0..255 (NHWC) and subtracts the mean
  itself; its output is the graph's (softmax probabilities for the zoo model).

  Args:
    source: path of an .onnx file, or an `onnx.ModelProto`.
    mean_rgb: see `model_kwargs`.
    input_channel_order: the graph's channel order, "bgr" (Caffe, the zoo) or "rgb".
    lrn_scope: see `model_kwargs`; keep "across_towers" for Caffe's weights.

  Returns:
    (model, kwargs): the `keras.Model` and the `AlexNet(...)` kwargs it was built with.
  """
  from alexnet_tf.model import AlexNet  # pylint: disable=import-outside-toplevel
  from alexnet_tf.weights import from_caffe_layout  # pylint: disable=import-outside-toplevel
  if input_channel_order not in ("bgr", "rgb"):
    raise UserError(f"--input_channel_order must be 'bgr' or 'rgb'; got {input_channel_order!r}.")
  params, info = read_onnx_alexnet(source)
  kwargs = model_kwargs(info, mean_rgb, input_channel_order, lrn_scope)
  model = AlexNet(**kwargs, name="bvlc_alexnet")
  from_caffe_layout(model, params, input_channel_order=input_channel_order)
  return model, kwargs


def sidecar_path(output: str) -> str:
  """Where `import_onnx_weights` describes an output file: OUTPUT.json."""
  return os.fspath(output) + ".json"


def import_onnx_weights(onnx_path: str, output: str, class_names: Sequence[str] | None = None,
                        mean_rgb: Sequence[float] | None = None,
                        input_channel_order: str = "bgr") -> dict[str, Any]:
  """Converts an ONNX bvlc_alexnet to a `.keras` model or a `.weights.h5` file.

  Writes OUTPUT and OUTPUT.json. A `.keras` file is self-describing:
  `keras.models.load_model(OUTPUT)` gives the Caffe-faithful model. For a
  `.weights.h5` file, OUTPUT.json holds the `AlexNet(...)` kwargs to build the
  matching model (`load_imported(OUTPUT)` does both).

  Args:
    onnx_path: the .onnx file (e.g. the zoo's bvlcalexnet-12.onnx).
    output: a path ending in `.keras` or `.weights.h5`.
    class_names: optional class names, one per fc8 output, stored in OUTPUT.json.
    mean_rgb: see `model_kwargs`.
    input_channel_order: the graph's channel order ("bgr" for Caffe's models).

  Returns:
    The contents written to OUTPUT.json.
  """
  output = os.fspath(output)
  if not (output.endswith(".keras") or output.endswith(".weights.h5")):
    raise UserError(f"--output must end in '.keras' (a full model, preferred) or "
                    f"'.weights.h5' (weights only); got {output!r}.")
  # Before the conversion, which reads a 233 MB file: a place that cannot be written should
  # not cost it.
  check_writable_file("--output", output)
  model, kwargs = model_from_onnx(onnx_path, mean_rgb, input_channel_order)
  if class_names is not None:
    class_names = [str(c) for c in class_names]
    if len(class_names) != kwargs["classes"]:
      raise UserError(f"--classes has {len(class_names)} names but the model has "
                      f"{kwargs['classes']} classes (fc8 outputs).")
  description = dict(
      format=SIDECAR_FORMAT, source=os.path.basename(os.fspath(onnx_path)),
      file=os.path.basename(output), alexnet_kwargs=kwargs,
      input="227x227 RGB, values 0..255, NHWC; the model subtracts the mean itself",
      source_input_channel_order=input_channel_order)
  if class_names is not None:
    description["class_names"] = class_names
  parent = os.path.dirname(os.path.abspath(output))
  try:
    os.makedirs(parent, exist_ok=True)
    if output.endswith(".keras"):
      model.save(output)
    else:
      model.save_weights(output)
    with open(sidecar_path(output), "w") as f:
      json.dump(description, f, indent=2)
      f.write("\n")
  except OSError as e:  # Checked above, but the folder can change (or fill up) meanwhile.
    raise UserError(f"--output {output!r} cannot be written: "
                    f"{e.strerror or type(e).__name__}.") from e
  return description


def read_description(path: str) -> dict[str, Any] | None:
  """The description `import_onnx_weights` wrote beside FILE.keras (FILE.keras.json):
  {"class_names": [...] or None, "model": the AlexNet kwargs or None}; None when there is none.

  A JSON file of another kind (no "alexnet_tf.imported_weights/" format) is not ours and is
  left alone; one of ours that cannot be read is a UserError. For `alexnet_tf.export
  --model=FILE.keras`, whose flags the messages name.
  """
  side = sidecar_path(path)
  if not os.path.isfile(side):
    return None
  try:
    with open(side, encoding="utf-8") as f:
      description = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise UserError(f"{side!r} (the description of --model {path!r}) is not readable JSON "
                    f"({e}); fix it or remove it.") from e
  family = SIDECAR_FORMAT.split("/")[0] + "/"
  if not (isinstance(description, dict)
          and str(description.get("format", "")).startswith(family)):
    return None
  names = description.get("class_names")
  if names is not None and not (isinstance(names, list)
                                and all(isinstance(n, str) for n in names)):
    raise UserError(f"{side!r}: \"class_names\" must be a list of strings; fix it or pass "
                    "--labels.")
  kwargs = description.get("alexnet_kwargs")
  if kwargs is not None and not isinstance(kwargs, dict):
    raise UserError(f"{side!r}: \"alexnet_kwargs\" must be a JSON object; fix it or remove "
                    "the file.")
  return {"class_names": names, "model": kwargs}


def load_imported(path: str) -> Any:
  """Loads an `import_onnx_weights` output: a `.keras` file, or a `.weights.h5`
  file with its OUTPUT.json (the `AlexNet` kwargs)."""
  import keras  # pylint: disable=import-outside-toplevel
  from alexnet_tf.model import AlexNet  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if path.endswith(".keras"):
    if not os.path.isfile(path):
      raise UserError(f"{path!r} does not exist.")
    return keras.models.load_model(path)
  side = sidecar_path(path)
  if not os.path.isfile(side):
    raise UserError(f"{path!r} needs its description {side!r} (written by "
                    "alexnet_tf.tools.import_weights) to know the model's settings.")
  try:
    with open(side) as f:
      description = json.load(f)
    kwargs = dict(description["alexnet_kwargs"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{side!r} is not a description written by import_weights ({e}).") from e
  try:
    return AlexNet(**kwargs, weights=path, name="bvlc_alexnet")
  except ValueError as e:
    raise UserError(str(e)) from e
