"""P0: the encoder's achieved GFLOP/s against this machine's matmul peak, measured in the same run.

Peak: the best of a few square matrix products on the threads the encoder uses, in torch, numpy
and ONNX Runtime (fp32; the best of the three is the machine's peak), and bf16 in torch where the
CPU has bf16 instructions. Encoder: its FLOPs per image counted by torch's
FlopCounterMode (a multiply-add is 2), times the images per second of each runtime and precision
(torch fp32, torch bf16 weights, ONNX Runtime fp32 and int8), at batch 1 (an upload) and batch 32
(ingest). Goal: the serving path (ENCODER_RUNTIME=onnx) >= 60 % of the fp32 peak. int8 figures are
"fp32-equivalent" GFLOP/s: the same work done with integer products.

With ``--catalogue`` (and a MODEL_CHECKPOINT), also each variant's held-out P@4 and mAP@R on the
catalogue's fixed split, and its vectors' cosine to torch fp32: what the variants give up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import report
from lookalike.cpu import has_native_bf16
from lookalike.device import BF16, FP32, Placement
from lookalike.encoder import ImageEncoder, load_visual, open_clip_image_size
from lookalike.model_source import ModelSource
from lookalike.onnx_encoder import OnnxEncoder, export_directory, variant_file
from lookalike.runtime import Encoder
from lookalike.settings import Settings

GOAL = 0.6
BATCHES = (1, 32)


def matmul_peaks_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """A square matrix product in each library the encoders use (their GEMMs differ by 2x on one
    CPU: MKL's generic path on AMD, MLAS's AVX-512): the machine's peak is the best of them."""
    import onnx
    import onnxruntime as ort

    a, b = (np.random.default_rng(i).random((size, size), dtype=np.float32) for i in (0, 1))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    spec = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [size, size]) for n in "ABC"]
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2], spec[2:])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    products = {
        "fp32 torch": lambda: torch.mm(ta, tb),
        "fp32 numpy": lambda: a @ b,
        "fp32 onnxruntime": lambda: session.run(None, {"A": a, "B": b}),
    }
    if has_native_bf16():
        ha, hb = ta.bfloat16(), tb.bfloat16()
        products["bf16 torch"] = lambda: torch.mm(ha, hb)
    peaks = {}
    for name, product in products.items():
        product()  # warm-up
        peaks[name] = 2 * size**3 / min(_seconds(product) for _ in range(repeats)) / 1e9
    return peaks


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def flops_per_image(visual: torch.nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: there attention takes a fused path the counter does not see
        visual.float().eval()(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def images_per_second(embed: Callable[[np.ndarray], object], pixels: np.ndarray, seconds: float = 4.0) -> float:
    """Best of repeated runs over ``seconds`` (after a warm-up): the steady rate, not one noisy call."""
    embed(pixels)
    best, spent = float("inf"), 0.0
    while spent < seconds:
        took = _seconds(lambda: embed(pixels))
        best, spent = min(best, took), spent + took
    return len(pixels) / best


def encoders(settings: Settings) -> dict[str, Encoder]:
    """Every runtime and precision this machine can run, on the same weights."""
    source = ModelSource.from_settings(settings)
    visual, preprocess = load_visual(source)
    cpu = torch.device("cpu")
    built: dict[str, object] = {
        "torch fp32": ImageEncoder(visual, preprocess, source.label, None, Placement(cpu, FP32))
    }
    if has_native_bf16():
        visual_again, _ = load_visual(source)
        built["torch bf16 weights"] = ImageEncoder(visual_again, preprocess, source.label, None, Placement(cpu, BF16))
    onnx_settings = settings.model_copy(update={"encoder_runtime": "onnx"})
    OnnxEncoder.from_settings(onnx_settings)  # exports when missing
    for variant in ("fp32", "int8"):
        path = variant_file(export_directory(settings), variant)
        built[f"onnx {variant}"] = OnnxEncoder(path, threads=torch.get_num_threads())
    return built


def quality(built: dict[str, Encoder], catalogue: Path) -> dict[str, dict]:
    """Held-out P@4 / mAP@R of each variant on the fixed split, and the cosine to torch fp32."""
    from finetune.data import ImageCache, split_catalogue
    from finetune.evaluate import encoder_candidate, evaluate_candidates
    from lookalike.catalogue import read_catalogue

    split = split_catalogue(read_catalogue(catalogue).items)
    queries, gallery = ImageCache.load(split.queries, None, 10**8), ImageCache.load(split.gallery, None, 10**8)
    scores = evaluate_candidates(queries, gallery, [encoder_candidate(name, e) for name, e in built.items()])
    reference = built["torch fp32"].embed_images(queries.images)
    return {
        name: {
            "P@4": round(scores[name]["overall"]["P@4"], 4),
            "mAP@R": round(scores[name]["overall"]["mAP@R"], 4),
            "min_cosine_to_fp32": round(float((e.embed_images(queries.images) * reference).sum(1).min()), 5),
        }
        for name, e in built.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=Path, help="also measure each variant's held-out quality here")
    args = parser.parse_args()
    settings = Settings()
    threads = torch.get_num_threads()
    peaks = matmul_peaks_gflops()
    fp32_peak = max(value for name, value in peaks.items() if name.startswith("fp32"))
    built = encoders(settings)
    reference = built["torch fp32"]
    size = open_clip_image_size(reference.preprocess)  # type: ignore[attr-defined]
    flops = flops_per_image(load_visual(ModelSource.from_settings(settings))[0], size)
    figures = [
        {"figure": "matmul_peak_gflops", "library": name, "value": round(value, 1), "threads": threads}
        for name, value in peaks.items()
    ]
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        pixels = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
        baseline = None
        for name, encoder in built.items():
            rate = images_per_second(encoder.embed_batch, pixels)
            baseline = baseline or rate
            achieved = rate * flops / 1e9
            figures.append(
                {
                    "figure": "encoder_gflops",
                    "runtime": name,
                    "batch": batch,
                    "model": reference.identity.split("@")[0],
                    "gflop_per_image": round(flops / 1e9, 3),
                    "images_per_s": round(rate, 1),
                    "ms_per_image": round(1000 / rate, 2),
                    "value": round(achieved, 1),
                    "of_fp32_peak": round(achieved / fp32_peak, 2),
                    "vs_torch_fp32": round(rate / baseline, 2),
                    "goal": f">={GOAL} of fp32 peak (serving path: onnx)",
                }
            )
    if args.catalogue:
        for name, measured in quality(built, args.catalogue).items():
            figures.append({"figure": "held_out_quality", "runtime": name, **measured})
    report("p0_encoder", figures)


if __name__ == "__main__":
    main()
