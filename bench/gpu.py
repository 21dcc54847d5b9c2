"""Real-size FLUX.1 [dev] and SDXL on a CUDA GPU, with random weights, all numbers from one run.

    python bench/gpu.py [--steps 4] [--size 1024] [--repeat 3] [--rows flux-sdpa,flux-int8,...] > gpu.md
    python bench/gpu.py --smoke

Each model is built from its real configuration with random weights, directly on the GPU in
bfloat16 (nothing is downloaded; tests/helpers/full_size.py): FLUX.1 [dev] (the 12B transformer:
19 double and 38 single blocks, 3072 wide; T5-XXL and CLIP-L; the 16-channel autoencoder) and SDXL
base (the UNet, autoencoder and two text encoders of bot/engine/archs/sdxl/). The tokenizers are the
bot's CLIP tokenizer and the small T5 tokenizer of tests/helpers/tiny_dit.py, the T5 vocabulary
sized to it. One row at a time, freed before the next:

  sdxl-sdpa, flux-sdpa        the denoiser as diffusers runs it (PyTorch SDPA attention)
  sdxl-compile, flux-compile  the denoiser through torch.compile (as `[engine] compile = true`)
  flux-int8, flux-nf4, flux-fp8  the transformer and T5 quantized as `quantize = "..."` does it
                              (bot/engine/quantize.py: torchao int8 / bitsandbytes NF4 / torchao fp8
                              weight-only); a row the GPU cannot run says why

and prints a markdown table: seconds per image (one image, --steps steps at --size px, the median
of --repeat calls after a warm-up call), the warm-up call (compilation included), the peak GPU
memory of the calls (torch.cuda.max_memory_allocated) and the weights' memory after building.

--smoke runs the same code on the CPU at tiny sizes (a few layers, 64 px, float32, one step,
torch.compile with its "eager" backend) so the script itself can be checked on any machine.
Without --smoke and without a CUDA GPU it refuses.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests.helpers.full_size import flux1_dev_pipeline, sdxl_pipeline  # noqa: E402

ROWS = {  # name: (model, compiled, quantize)
    "sdxl-sdpa": ("sdxl", False, "none"),
    "sdxl-compile": ("sdxl", True, "none"),
    "flux-sdpa": ("flux", False, "none"),
    "flux-compile": ("flux", True, "none"),
    "flux-int8": ("flux", False, "int8"),
    "flux-nf4": ("flux", False, "nf4"),
    "flux-fp8": ("flux", False, "fp8"),
}
MODEL_LABELS = {"sdxl": "SDXL base", "flux": "FLUX.1 [dev]"}
QUANTIZE_LABELS = {"none": "not quantized", "int8": "int8 (torchao)", "nf4": "nf4 (bitsandbytes)", "fp8": "fp8 (torchao)"}
PROMPT = "a photo of a red fox sitting in the snow at sunrise, highly detailed"


@dataclass(frozen=True)
class Scale:
    """Where and how big: the real thing, or the smoke test's tiny stand-in of the same kinds of layers."""

    device: str
    dtype: torch.dtype
    size: int
    steps: int
    repeat: int
    compile_backend: str
    # By model, keyword arguments of its builder in tests/helpers/full_size.py that change the
    # released configuration; none: real size.
    overrides: dict = field(default_factory=dict)


SMOKE_OVERRIDES = dict(
    flux=dict(transformer=dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                               joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
              t5=dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, relative_attention_num_buckets=8),
              clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        projection_dim=32),
              vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64)),
)
# Both CLIPs 32 wide: cross-attention 64, pooled 32 + six 8-wide micro-conditioning embeddings.
SMOKE_OVERRIDES["sdxl"] = dict(
    clip=SMOKE_OVERRIDES["flux"]["clip"], vae=SMOKE_OVERRIDES["flux"]["vae"],
    unet=dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
              transformer_layers_per_block=(1, 1), layers_per_block=1, cross_attention_dim=64,
              addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, sample_size=8))


def call_arguments(model: str, scale: Scale) -> dict:
    """One image as the engine would ask for it: FLUX.1 [dev] with its distilled guidance (one
    pass per step), SDXL with classifier-free guidance and a negative prompt (two)."""
    common = dict(prompt=PROMPT, num_inference_steps=scale.steps, width=scale.size, height=scale.size,
                  output_type="pil")
    if model == "flux":
        return dict(common, guidance_scale=3.5, max_sequence_length=512)
    return dict(common, negative_prompt="blurry, low quality", guidance_scale=5.0)


@dataclass
class Result:
    build: float = 0.0
    first: float = 0.0
    per_image: float = 0.0
    peak: int | None = None
    weights: int | None = None
    note: str = ""


def gpu_bytes(scale: Scale, peak: bool = False) -> int | None:
    if not scale.device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


def run_row(name: str, scale: Scale) -> Result:
    from bot.engine.families.flux1 import DEV
    from bot.engine.quantize import QuantizeUnsupported, check_supported, quantize_loaded

    model, compiled, quantize = ROWS[name]
    device = torch.device(scale.device)
    try:
        check_supported(quantize, device)
    except QuantizeUnsupported as refused:
        return Result(note=f"not run: {refused}")
    started = time.perf_counter()
    build = flux1_dev_pipeline if model == "flux" else sdxl_pipeline
    pipe = build(scale.device, scale.dtype, **scale.overrides.get(model, {}))
    pipe.set_progress_bar_config(disable=True)
    if quantize != "none":
        quantize_loaded(pipe, quantize, DEV.quantizable, device, scale.dtype)
    if compiled:
        denoiser = "transformer" if model == "flux" else "unet"
        setattr(pipe, denoiser, torch.compile(getattr(pipe, denoiser), backend=scale.compile_backend))
    result = Result(build=time.perf_counter() - started, weights=gpu_bytes(scale))
    arguments = call_arguments(model, scale)

    def draw() -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            pipe(**arguments, generator=torch.Generator("cpu").manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result.first = draw()  # warm-up: kernels chosen, memory pools filled, the compiled graph built
    result.per_image = statistics.median(draw() for _ in range(scale.repeat))
    result.peak = gpu_bytes(scale, peak=True)
    return result  # the pipeline goes with this call; free() collects it before the next row


def free(scale: Scale) -> None:
    gc.collect()
    torch._dynamo.reset()
    if scale.device.startswith("cuda"):
        torch.cuda.empty_cache()


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def print_table(results: dict[str, Result], scale: Scale) -> None:
    print(f"| model | denoiser | weights | s/image ({scale.steps} steps, {scale.size} px) | warm-up call "
          "| peak memory | weights in memory | build |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        model, compiled, quantize = ROWS[name]
        label = f"| {MODEL_LABELS[model]} | {'torch.compile' if compiled else 'SDPA'} | {QUANTIZE_LABELS[quantize]} |"
        if result.note:
            print(f"{label} {result.note} | | | | |")
        else:
            print(f"{label} {result.per_image:.2f} s | {result.first:.1f} s | {gib(result.peak)} "
                  f"| {gib(result.weights)} | {result.build:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per row after the warm-up")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--smoke", action="store_true",
                        help="the same code on the CPU at tiny sizes, float32, 64 px, one step")
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.smoke:
        scale = Scale("cpu", torch.float32, 64, 1, 1, "eager", SMOKE_OVERRIDES)
    elif not torch.cuda.is_available():
        sys.exit("bench/gpu.py measures real-size models on a CUDA GPU, and this machine has none "
                 "(torch.cuda.is_available() is False). `python bench/gpu.py --smoke` runs the same code "
                 "on the CPU at tiny sizes.")
    else:
        scale = Scale("cuda", torch.bfloat16, args.size, args.steps, args.repeat, "inductor")

    results = {}
    for name in rows:
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = run_row(name, scale)
        except torch.OutOfMemoryError:
            results[name] = Result(note="not run: out of memory")
        free(scale)
    if scale.device == "cuda":
        where = f"{torch.cuda.get_device_name()} ({gib(torch.cuda.get_device_properties(0).total_memory)})"
    else:
        where = "CPU (smoke test: tiny sizes)"
    import diffusers

    print(f"{where}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{str(scale.dtype).removeprefix('torch.')}, random weights, one image per call\n")
    print_table(results, scale)


if __name__ == "__main__":
    main()
