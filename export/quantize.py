"""int8 recipes for ONNX Runtime on x86 CPUs; `make export` gates each one against PyTorch.

Why recipes and not one call: dynamic int8 lands on different integer kernels on AVX2 and AVX-512-VNNI CPUs, and
a recipe that passes on one can fail on the other. The export measures the candidates it is given
(`export.int8_candidates`), keeps those that pass and ships the fastest and the most faithful of them; the service
picks between them on its own CPU. docs/EXPORT.md holds the table that chose the default.

The fast recipes fuse the graph first (ONNX Runtime's transformer optimizer: one Attention op per layer, then
QAttention in int8), which runs at about half the fp32 cost; their few flipped labels sit on reviews int8 is unsure
of, so `rescore_uncertain` has fp32 answer those again (the margin is chosen on reviews the gate does not count).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static


@dataclass(frozen=True)
class Recipe:
    """How to turn model.onnx into an int8 file; `keep_fp32` are regexes of node names left unquantized."""

    method: str  # "dynamic" (activation scales per call) | "static" (scales fixed by calibration)
    weight_type: QuantType = QuantType.QInt8
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: u8 x s8 pair sums cannot saturate AVX2's 16-bit madd
    keep_fp32: tuple[str, ...] = ()
    fuse: bool = False  # ORT's BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm) before quantizing
    rescore_uncertain: bool = False  # fp32 re-scores the answers int8 is unsure of (margin chosen by the export)


FFN_OUTPUT = r"/layer\.\d+/output/dense/MatMul$"
FFN = r"/layer\.\d+/(intermediate|output)/dense/MatMul$"
CLASSIFIER = r"classifier"
RECIPES: dict[str, Recipe] = {
    "int8-dynamic": Recipe("dynamic"),
    "int8-dynamic-u8": Recipe("dynamic", weight_type=QuantType.QUInt8, per_channel=False),
    "int8-dynamic-reduce-range": Recipe("dynamic", reduce_range=True),
    "int8-dynamic-ffn-fp32": Recipe("dynamic", reduce_range=True, keep_fp32=(FFN_OUTPUT, CLASSIFIER)),
    "int8-dynamic-attention-only": Recipe("dynamic", reduce_range=True, keep_fp32=(FFN, CLASSIFIER)),
    "int8-static-qdq": Recipe("static", reduce_range=True, keep_fp32=(FFN_OUTPUT, CLASSIFIER)),
    "int8-fused": Recipe("dynamic", fuse=True),
    "int8-fused-rescored": Recipe("dynamic", fuse=True, rescore_uncertain=True),
}
# what `make export` gates by default (at most two: a fresh clone's `make serve` runs it): the fast one and the one
# that passed with the most agreement on both CPU families before it (reports/export/PARITY.md)
DEFAULTS = ["int8-fused-rescored", "int8-dynamic-attention-only"]


class _Calibration(CalibrationDataReader):
    """Feeds calibration reviews one at a time, as the runtime scores them (no padding)."""

    def __init__(self, ids: list[list[int]], input_names: set[str]):
        self.feeds = iter(
            {
                name: np.array([x], dtype=np.int64) if name == "input_ids" else np.full((1, len(x)), value, np.int64)
                for name, value in (("input_ids", None), ("attention_mask", 1), ("token_type_ids", 0))
                if name in input_names
            }
            for x in ids
        )

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def _matmul_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    return [n.name for n in model.graph.node if any(re.search(p, n.name) for p in patterns)]


def fused(fp32_path: Path, out_path: Path) -> Path:
    """The fp32 graph with ORT's BERT fusions (heads and width read from the graph), written to `out_path`."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(fp32_path), model_type="bert", num_heads=0, hidden_size=0).save_model_to_file(str(out_path))
    return out_path


def quantize(recipe: Recipe, fp32_path: Path, out_path: Path, calibration_ids: list[list[int]]) -> None:
    """Write the int8 file for `recipe`; static recipes calibrate on `calibration_ids` (reviews the gate skips)."""
    if recipe.fuse:
        with tempfile.TemporaryDirectory() as tmp:
            _quantize(recipe, fused(fp32_path, Path(tmp) / "fused.onnx"), out_path, calibration_ids)
    else:
        _quantize(recipe, fp32_path, out_path, calibration_ids)


def _quantize(recipe: Recipe, fp32_path: Path, out_path: Path, calibration_ids: list[list[int]]) -> None:
    model = onnx.load(fp32_path)
    excluded = _matmul_nodes(model, recipe.keep_fp32)
    common: dict = dict(
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=recipe.weight_type,
        nodes_to_exclude=excluded,
    )
    if recipe.method == "dynamic":
        if recipe.fuse:  # all ORT's defaults: Attention -> QAttention, EmbedLayerNormalization -> QEmbedLayerNorm too
            common["extra_options"] = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # fused ops: no shape inference
        else:
            common["op_types_to_quantize"] = ["MatMul", "Gemm"]
        quantize_dynamic(fp32_path, out_path, **common)
        return
    inputs = {i.name for i in model.graph.input}
    quantize_static(
        fp32_path,
        out_path,
        _Calibration(calibration_ids, inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        activation_type=QuantType.QUInt8,
        **common,
    )
