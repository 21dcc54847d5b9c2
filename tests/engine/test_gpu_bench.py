"""bench/gpu.py, the real-size GPU benchmark, checked without a GPU: its --smoke mode runs the same
code on the CPU at tiny sizes and prints every row; without --smoke and without a GPU it refuses;
its real-size models (tests/helpers/full_size.py) build with the parameter counts of the released
FLUX.1 [dev] and SDXL (on the meta device, so without memory)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.full_size import flux1_dev_pipeline, sdxl_pipeline

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| model ")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def test_the_smoke_mode_prints_every_row():
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = table_rows(run.stdout)
    assert [tuple(row[:3]) for row in rows] == [
        ("SDXL base", "SDPA", "not quantized"),
        ("SDXL base", "torch.compile", "not quantized"),
        ("FLUX.1 [dev]", "SDPA", "not quantized"),
        ("FLUX.1 [dev]", "torch.compile", "not quantized"),
        ("FLUX.1 [dev]", "SDPA", "int8 (torchao)"),
        ("FLUX.1 [dev]", "SDPA", "nf4 (bitsandbytes)"),
        ("FLUX.1 [dev]", "SDPA", "fp8 (torchao)"),
    ]
    for row in rows[:5]:  # drawn: seconds per image and the warm-up call; no GPU memory on the CPU
        assert re.fullmatch(r"\d+\.\d\d s", row[3]) and re.fullmatch(r"\d+\.\d s", row[4]), row
        assert row[5] == row[6] == "-"
    # What the CPU cannot run says why, in the words of the engine's own refusal.
    assert rows[5][3].startswith("not run: ") and "needs a CUDA GPU" in rows[5][3]
    assert rows[6][3].startswith("not run: ") and "FP8" in rows[6][3]
    assert "CPU (smoke test: tiny sizes)" in run.stdout and "1 steps, 64 px" in run.stdout


def test_without_a_gpu_it_refuses_and_says_what_runs_instead():
    run = subprocess.run([sys.executable, str(SCRIPT), "--rows", "flux-sdpa"], cwd=ROOT,
                         env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "CUDA GPU" in run.stderr and "--smoke" in run.stderr
    assert run.stdout == ""


def test_the_real_size_models_have_the_released_parameter_counts():
    flux = flux1_dev_pipeline("meta", torch.bfloat16)
    sdxl = sdxl_pipeline("meta", torch.bfloat16)

    def count(module) -> int:
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        return sum(p.numel() for p in module.parameters())

    assert count(flux.transformer) == 11_901_408_320  # FLUX.1 [dev]: 19 double and 38 single blocks, 3072 wide
    # T5-XXL's encoder, with the small tokenizer's 1,000 rows in its token table instead of 32,128.
    assert count(flux.text_encoder_2) == 4_762_310_656 - (32_128 - 1_000) * 4096
    assert count(flux.text_encoder) == 123_060_480  # CLIP-L
    assert flux.vae.config.latent_channels == 16 and count(flux.vae) == 83_819_683
    assert count(sdxl.unet) == 2_567_463_684
    assert count(sdxl.text_encoder_2) == 694_659_840  # OpenCLIP bigG with its projection
    assert torch.get_default_dtype() == torch.float32  # building in bfloat16 left the default as it was
