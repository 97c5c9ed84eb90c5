"""Tiny ONNX "oracle" models with the same names, inputs and outputs as rembg's real ones.

Their output is a known function of the pixel colours, so tests can assert exact outcomes:
  person matte (u2net_human_seg, 320 px)  : person  = saturated pixel (max - min channel > 0.25)
  cloth seg (u2net_cloth_seg, 768 px)     : upper = red, lower = blue, full = yellow, else background
  product matte (isnet-general-use, 1024) : product = dark pixel (max channel < 0.6), for flat-lays
Green-ish saturated pixels are "skin": person but no clothing class. Grey scenery is nothing.

`--scale N` adds N 3x3 convolution layers at full resolution that leave the output unchanged:
a stand-in with a realistic compute cost for load tests (N=0 keeps the suite fast).

    python -m tests.oracle_models --out DIR   # writes DIR/<model>.onnx (U2NET_HOME layout)
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


class _Graph:
    def __init__(self, name: str):
        self.name, self.nodes, self.inits, self._n = name, [], [], 0

    def const(self, value) -> str:
        self._n += 1
        name = f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self._n += 1
        out = f"t{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def channel(self, x: str, c: int) -> str:
        starts = numpy_helper.from_array(np.array([c], np.int64), f"s{c}_{self._n}")
        ends = numpy_helper.from_array(np.array([c + 1], np.int64), f"e{c}_{self._n}")
        axes = numpy_helper.from_array(np.array([1], np.int64), f"a{c}_{self._n}")
        self.inits += [starts, ends, axes]
        return self.op("Slice", [x, starts.name, ends.name, axes.name])

    def read_input(self, *, mean, std, extra_layers: int) -> None:
        """Undo rembg's normalisation so the oracle sees the RGB values (0..1) in `self.rgb`."""
        rgb = self.op("Add", [self.op("Mul", ["input", self.const(np.reshape(std, (1, 3, 1, 1)))]),
                              self.const(np.reshape(mean, (1, 3, 1, 1)))])
        for _ in range(extra_layers):
            # Identity-valued 3x3 conv: same output, realistic FLOPs for load tests.
            weight = np.zeros((3, 3, 3, 3), np.float32)
            for c in range(3):
                weight[c, c, 1, 1] = 1.0
            rgb = self.op("Conv", [rgb, self.const(weight)], pads=[1, 1, 1, 1])
        self.rgb = rgb

    def finish(self, size: int, outputs: list[tuple[str, int]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, ch, size, size]) for name, ch in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _saturation(g: _Graph) -> str:
    high = g.op("ReduceMax", [g.rgb], axes=[1], keepdims=1)
    low = g.op("ReduceMin", [g.rgb], axes=[1], keepdims=1)
    return g.op("Sub", [high, low])


def person_matte(size: int = 320, extra_layers: int = 0) -> onnx.ModelProto:
    g = _Graph("oracle_person")
    g.read_input(mean=IMAGENET_MEAN, std=IMAGENET_STD, extra_layers=extra_layers)
    logit = g.op("Mul", [g.op("Sub", [_saturation(g), g.const(0.25)]), g.const(40.0)])
    g.nodes.append(helper.make_node("Sigmoid", [logit], ["output"]))
    return g.finish(size, [("output", 1)])


def product_matte(size: int = 1024, extra_layers: int = 0) -> onnx.ModelProto:
    g = _Graph("oracle_product")
    g.read_input(mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0), extra_layers=extra_layers)
    high = g.op("ReduceMax", [g.rgb], axes=[1], keepdims=1)
    logit = g.op("Mul", [g.op("Sub", [g.const(0.6), high]), g.const(40.0)])
    g.nodes.append(helper.make_node("Sigmoid", [logit], ["output"]))
    return g.finish(size, [("output", 1)])


def cloth_segmentation(size: int = 768, extra_layers: int = 0) -> onnx.ModelProto:
    g = _Graph("oracle_cloth")
    g.read_input(mean=IMAGENET_MEAN, std=IMAGENET_STD, extra_layers=extra_layers)
    r, gr, b = (g.channel(g.rgb, c) for c in range(3))
    upper = g.op("Sub", [r, g.op("Max", [gr, b])])
    lower = g.op("Sub", [b, g.op("Max", [r, gr])])
    full = g.op("Sub", [g.op("Min", [r, gr]), b])
    background = g.op("Add", [g.op("Mul", [r, g.const(0.0)]), g.const(0.15)])
    stacked = g.op("Concat", [background, upper, lower, full], axis=1)
    g.nodes.append(helper.make_node("Mul", [stacked, g.const(20.0)], ["output"]))
    return g.finish(size, [("output", 4)])


BUILDERS = {
    "u2net_human_seg": person_matte,
    "u2net_cloth_seg": cloth_segmentation,
    "isnet-general-use": product_matte,
}


def write_oracle_models(directory: str, extra_layers: int = 0) -> dict[str, str]:
    """Write every oracle model as DIR/<name>.onnx (where rembg looks under U2NET_HOME)."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, build in BUILDERS.items():
        path = os.path.join(directory, f"{name}.onnx")
        onnx.save(build(extra_layers=extra_layers), path)
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write the .onnx files into")
    parser.add_argument("--scale", type=int, default=0, help="extra full-resolution conv layers (cost only)")
    args = parser.parse_args()
    for name, path in write_oracle_models(args.out, args.scale).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
