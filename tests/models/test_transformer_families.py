"""Telling FLUX.1 dev, FLUX.1 schnell and SD 3 / 3.5 transformer files apart from their headers
(bot/models/families.py), without torch: full-size `.safetensors` headers (no data after them) in
each layout, small GGUF files, and the Stable Diffusion checkpoints detected as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.models.families import (
    FAMILIES,
    TRANSFORMER_FAMILIES,
    UNET_FAMILIES,
    detect_family,
    detect_file_family,
    read_gguf_header,
)
from tests.helpers.transformer_headers import (
    FLUX1,
    SD35_LARGE,
    flux_shapes,
    gguf_file,
    header_only_safetensors,
    sd3_shapes,
)

ROOT = Path(__file__).resolve().parents[2]
COMFY = "model.diffusion_model."
SD35_MEDIUM = dict(hidden=1536, heads=24, depth=24, positions=384, dual=tuple(range(13)), qk_norm=True)
SD3_MEDIUM = dict(hidden=1536, heads=24, depth=24, positions=192, qk_norm=False)
# Small enough to write as a real GGUF file; the tensors' widths are whole Q8_0 blocks.
TINY_FLUX = dict(hidden=64, heads=2, double=2, single=2, channels=64, context=64, pooled=64)
TINY_SD3 = dict(hidden=64, heads=2, depth=2, channels=16, patch=2, context=64, pooled=64, positions=8,
                dual=(0,), qk_norm=True)


def test_the_transformer_families_are_1024_px_text_to_image_models():
    assert {name: FAMILIES[name] for name in ("flux1-dev", "flux1-schnell", "sd3")} == {
        "flux1-dev": ("text2image", 1024), "flux1-schnell": ("text2image", 1024), "sd3": ("text2image", 1024)}
    assert FAMILIES == {**UNET_FAMILIES, **TRANSFORMER_FAMILIES}


@pytest.mark.parametrize("prefix", ["", COMFY], ids=["bfl", "comfyui"])
@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_flux1_dev_and_schnell_full_size_headers(tmp_path, layout, prefix):
    """The guidance embedding is the one structural difference: dev is guidance-distilled."""
    for guidance, arch in ((True, "flux1-dev"), (False, "flux1-schnell")):
        shapes = flux_shapes(layout, guidance=guidance, prefix=prefix, **FLUX1)
        path = header_only_safetensors(tmp_path / f"{arch}.safetensors", shapes)
        assert path.stat().st_size < 200_000  # 12 B parameters, described in a header alone
        assert detect_file_family(path) == arch
        assert detect_family(shapes) == arch


@pytest.mark.parametrize("sizes", [SD35_LARGE, SD35_MEDIUM, SD3_MEDIUM], ids=["3.5-large", "3.5-medium", "3-medium"])
@pytest.mark.parametrize("layout, prefix", [("mmdit", COMFY), ("mmdit", ""), ("diffusers", "")])
def test_sd3_and_sd35_full_size_headers(tmp_path, sizes, layout, prefix):
    shapes = sd3_shapes(layout, prefix=prefix, **sizes)
    path = header_only_safetensors(tmp_path / "sd3.safetensors", shapes, {"modelspec.architecture": "stable-diffusion-v3"})
    assert detect_file_family(path) == "sd3"


def test_flux_models_that_are_not_flux1_text_to_image_are_refused():
    fill = flux_shapes(**{**FLUX1, "channels": 384, "out_channels": 64})  # noise + mask + masked image in, noise prediction out
    with pytest.raises(ValueError, match="taking 384 input channels for 64 output ones: an image-conditioned model"):
        detect_family(fill)
    # Chroma keeps the Flux blocks but drops the CLIP input (vector_in) for its own modulation.
    chroma = {name: shape for name, shape in flux_shapes(guidance=False, **FLUX1).items()
              if not name.startswith("vector_in.")}
    with pytest.raises(ValueError, match="without vector_in.in_layer.weight: not FLUX.1 dev or schnell"):
        detect_family(chroma)


def test_stable_diffusion_checkpoints_are_detected_as_before():
    conv_in = COMFY + "input_blocks.0.0.weight"
    # The UNet's own attention blocks are called transformer_blocks too; they are not a transformer file.
    unet = {conv_in: (320, 4, 3, 3), COMFY + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": (640, 640)}
    assert detect_family({**unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}) == "sd15"
    assert detect_family({**unet, "cond_stage_model.model.ln_final.weight": (1024,)}) == "sd21-v"
    sdxl = {**unet, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
            "conditioner.embedders.1.model.ln_final.weight": (1280,)}
    assert detect_family(sdxl) == "sdxl"
    assert detect_family({**sdxl, conv_in: (320, 9, 3, 3)}) == "sdxl-inpaint"


def test_an_unknown_file_is_described_with_the_supported_architectures(tmp_path):
    path = header_only_safetensors(tmp_path / "lora.safetensors", {
        "lora_unet_down_blocks_0.alpha": (), "lora_unet_down_blocks_0.lora_down.weight": (4, 320),
        "lora_te_text_model.alpha": ()})
    with pytest.raises(ValueError) as error:
        detect_file_family(path)
    message = str(error.value)
    assert "found 3 tensors named lora_unet_down_blocks_0.* (2), lora_te_text_model.* (1)" in message
    assert message.endswith("supported architectures: " + ", ".join(FAMILIES))
    assert "flux1-dev, flux1-schnell, sd3" in message
    with pytest.raises(ValueError, match="the file holds no tensors"):
        detect_family({})
    with pytest.raises(ValueError, match="only .safetensors and .gguf files"):
        detect_file_family(tmp_path / "model.ckpt")


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_gguf_flux1_files_are_read_without_their_weights(tmp_path, guidance):
    shapes = flux_shapes(guidance=guidance, **TINY_FLUX)
    path = gguf_file(tmp_path / "flux.gguf", shapes, "flux", "Q8_0")
    found, metadata = read_gguf_header(path)
    # Torch order and element counts, as in a .safetensors header, also for the quantized tensors.
    assert found == shapes
    assert found["double_blocks.0.img_attn.qkv.weight"] == (192, 64)
    assert metadata["general.architecture"] == "flux"
    assert detect_file_family(path) == ("flux1-dev" if guidance else "flux1-schnell")


def test_gguf_sd3_files_and_other_gguf_files(tmp_path):
    assert detect_file_family(gguf_file(tmp_path / "sd3.gguf", sd3_shapes(**TINY_SD3), "sd3", "Q4_0")) == "sd3"
    llm = gguf_file(tmp_path / "llm.gguf", {"token_embd.weight": (64, 32), "blk.0.attn_q.weight": (32, 32),
                                            "blk.0.attn_k.weight": (32, 32)}, "llama")
    with pytest.raises(ValueError, match=r"found 3 tensors named blk\.\* \(2\), token_embd\.\* \(1\) \(its metadata "
                                         r"says general.architecture = 'llama'\)"):
        detect_file_family(llm)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="fake.gguf is not a GGUF file"):
        detect_file_family(fake)


def test_detection_loads_no_torch(tmp_path):
    safetensors = header_only_safetensors(tmp_path / "dev.safetensors", flux_shapes(prefix=COMFY, **FLUX1))
    gguf = gguf_file(tmp_path / "schnell.gguf", flux_shapes(guidance=False, **TINY_FLUX))
    script = textwrap.dedent(f"""
        import sys
        from bot.models.families import detect_file_family
        print(detect_file_family({str(safetensors)!r}), detect_file_family({str(gguf)!r}))
        print(sorted(name for name in ("torch", "diffusers", "transformers", "safetensors.torch") if name in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["flux1-dev flux1-schnell", "[]"]
