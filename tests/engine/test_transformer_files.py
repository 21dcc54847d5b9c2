"""Loading FLUX.1 and SD 3.5 transformers from the files users download (bot/engine/transformer_files.py):
the original layout (Black Forest Labs', Stability's MMDiT) with or without ComfyUI's prefix, the
diffusers layout as one file, and GGUF files at each type the gguf package writes. Tiny random-weight
transformers (seed 0); each test a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from diffusers.quantizers.gguf.utils import GGUFParameter

from bot.engine.transformer_files import flux_to_diffusers, load_transformer
from bot.models.families import detect_file_family, read_gguf_header
from tests.helpers.transformer_files import (
    GGUF_TYPES,
    flux_to_original,
    run,
    save_gguf,
    save_original_safetensors,
    sd3_to_original,
    tiny_flux,
    tiny_sd3,
)
from tests.helpers.transformer_headers import flux_shapes, sd3_shapes

ARCHS = ("flux1-dev", "flux1-schnell", "sd3")
COMFY = "model.diffusion_model."
# Largest output difference allowed, as a share of the largest output value.
GGUF_TOLERANCE = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 5e-3, "Q5_1": 2e-2, "Q5_0": 2e-2,
                  "Q4_1": 5e-2, "Q4_0": 5e-2}
# Bytes per weight of a quantized matrix: 32-weight blocks with their scales (and minimums).
GGUF_BYTES_PER_WEIGHT = {"BF16": 2, "Q8_0": 34 / 32, "Q5_1": 24 / 32, "Q5_0": 22 / 32, "Q4_1": 20 / 32,
                         "Q4_0": 18 / 32}


class Source:
    """A tiny transformer, its config folder (transformer/config.json only) and its output."""

    def __init__(self, model: torch.nn.Module, folder: Path):
        self.model = model
        self.folder = folder
        model.save_config(folder / "transformer")
        self.state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        self.output = run(model)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Source]:
    root = tmp_path_factory.mktemp("transformers")
    models = {"flux1-dev": tiny_flux(guidance=True), "flux1-schnell": tiny_flux(guidance=False), "sd3": tiny_sd3()}
    return {arch: Source(model, root / arch) for arch, model in models.items()}


def assert_same_weights(loaded: torch.nn.Module, source: Source) -> None:
    state = loaded.state_dict()
    assert state.keys() == source.state.keys()
    assert [name for name, tensor in source.state.items() if not torch.equal(state[name], tensor)] == []


# --------------------------------------------------------------------------- the layouts


def test_the_header_tables_are_the_real_layouts(sources):
    """tests/models detects full-size headers built from tests/helpers/transformer_headers.py; here those
    tables meet the diffusers models and the files the writers produce."""
    def shapes(tensors):
        return {name: tuple(tensor.shape) for name, tensor in tensors.items()}

    flux_sizes = dict(hidden=32, heads=2, double=1, single=1, channels=4, context=32, pooled=32)
    for arch, guidance in (("flux1-dev", True), ("flux1-schnell", False)):
        state = sources[arch].state
        assert shapes(state) == flux_shapes("diffusers", guidance=guidance, **flux_sizes)
        assert shapes(flux_to_original(state)) == flux_shapes("bfl", guidance=guidance, **flux_sizes)
    sd3_sizes = dict(hidden=32, heads=4, depth=2, channels=4, patch=1, context=32, pooled=64, positions=16,
                     dual=(0,), qk_norm=True)
    assert shapes(sources["sd3"].state) == sd3_shapes("diffusers", **sd3_sizes)
    assert shapes(sd3_to_original(sources["sd3"].state)) == sd3_shapes("mmdit", **sd3_sizes)


def numbered(model_class, **config) -> dict[str, torch.Tensor]:
    """A state dict of the model's real names and row counts, one column wide, every value distinct:
    the conversions only split and join rows, so this follows each row at full size for almost no memory."""
    with init_empty_weights(include_buffers=True):  # SD 3's position table would take a second to compute
        model = model_class(**config)
    state, start = {}, 0
    for name, tensor in model.state_dict().items():
        rows = tensor.shape[0] if tensor.ndim else 1
        values = torch.arange(start, start + rows, dtype=torch.float64)
        state[name] = values if tensor.ndim == 1 else values.unsqueeze(1)
        start += rows
    return state


def test_the_writers_invert_diffusers_conversions_at_the_released_sizes():
    """At FLUX.1's width (the one diffusers' FLUX.1 conversion is written for) and SD 3.5 medium's, every
    row comes back where it was through diffusers' own conversion, and through ours."""
    flux = numbered(FluxTransformer2DModel, num_layers=2, num_single_layers=2, guidance_embeds=True)
    assert flux["x_embedder.weight"].shape == (3072, 1)
    original = flux_to_original(flux)
    for converted in (convert_flux_transformer_checkpoint_to_diffusers(dict(original)), flux_to_diffusers(original)):
        assert converted.keys() == flux.keys()
        assert all(torch.equal(converted[name], flux[name]) for name in flux)
    sd3 = numbered(SD3Transformer2DModel, sample_size=128, patch_size=2, in_channels=16, num_layers=3,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, dual_attention_layers=(0, 1),
                   qk_norm="rms_norm")
    converted = convert_sd3_transformer_checkpoint_to_diffusers(sd3_to_original(sd3))
    assert converted.keys() == sd3.keys()
    assert all(torch.equal(converted[name], sd3[name]) for name in sd3)


# --------------------------------------------------------------------------- .safetensors


@pytest.mark.parametrize("prefix", ["", COMFY], ids=["plain", "comfyui"])
@pytest.mark.parametrize("arch", ARCHS)
def test_an_original_layout_file_loads_bit_identical(sources, tmp_path, arch, prefix):
    source = sources[arch]
    path = save_original_safetensors(source.model, tmp_path / "model.safetensors", prefix=prefix)
    assert detect_file_family(path) == arch
    loaded = load_transformer(path, arch, source.folder, torch.float32)
    assert type(loaded) is type(source.model)
    assert_same_weights(loaded, source)
    assert torch.equal(run(loaded), source.output)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_diffusers_layout_file_loads_bit_identical(sources, tmp_path, arch):
    source = sources[arch]
    source.model.save_pretrained(tmp_path / "saved")  # its weights: one diffusion_pytorch_model.safetensors
    path = tmp_path / "saved" / "diffusion_pytorch_model.safetensors"
    assert detect_file_family(path) == arch
    loaded = load_transformer(path, arch, source.folder, torch.float32)
    assert_same_weights(loaded, source)
    assert torch.equal(run(loaded), source.output)


def test_the_dtype_is_the_callers(sources, tmp_path):
    source = sources["flux1-dev"]
    path = save_original_safetensors(source.model, tmp_path / "model.safetensors")
    loaded = load_transformer(path, "flux1-dev", source.folder, torch.bfloat16)
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.bfloat16}


# --------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("qtype", GGUF_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_gguf_file_loads_quantized(sources, tmp_path, arch, qtype):
    source = sources[arch]
    path = save_gguf(source.model, tmp_path / "model.gguf", qtype)
    shapes, metadata = read_gguf_header(path)
    assert metadata["general.architecture"] == ("sd3" if arch == "sd3" else "flux")
    assert detect_file_family(path) == arch
    loaded = load_transformer(path, arch, source.folder, torch.float32)

    output = run(loaded)
    scale = source.output.abs().max()
    assert (output - source.output).abs().max() <= GGUF_TOLERANCE[qtype] * scale
    quantized = {name: p for name, p in loaded.named_parameters() if isinstance(p, GGUFParameter)}
    if qtype in ("F32", "F16"):  # diffusers reads these as plain tensors, in the compute dtype
        assert quantized == {}
        if qtype == "F32":
            assert_same_weights(loaded, source)
        return
    assert not torch.equal(output, source.output)
    # The attention and MLP matrices stay quantized, the input and output layers are F32 as published.
    assert "single_transformer_blocks.0.proj_mlp.weight" in quantized or arch == "sd3"
    assert "transformer_blocks.0.attn.to_q.weight" in quantized
    assert all(p.quant_type.name == qtype for p in quantized.values())
    for name, parameter in quantized.items():
        rows, columns = source.state[name].shape
        assert parameter.numel() * parameter.element_size() == rows * columns * GGUF_BYTES_PER_WEIGHT[qtype]


def test_q8_0_takes_about_a_quarter_of_the_f32_memory(sources, tmp_path):
    source = sources["flux1-dev"]

    def nbytes(model, quantized_only=False):
        return sum(p.numel() * p.element_size() for p in model.parameters()
                   if isinstance(p, GGUFParameter) or not quantized_only)

    f32 = load_transformer(save_gguf(source.model, tmp_path / "f32.gguf", "F32"), "flux1-dev", source.folder)
    q8 = load_transformer(save_gguf(source.model, tmp_path / "q8.gguf", "Q8_0"), "flux1-dev", source.folder)
    quantized = {name for name, p in q8.named_parameters() if isinstance(p, GGUFParameter)}
    f32_of_quantized = sum(p.numel() * p.element_size() for name, p in f32.named_parameters() if name in quantized)
    assert nbytes(q8, quantized_only=True) == f32_of_quantized * 34 / 128
    # The tiny model's F32 input/output layers weigh more than a real one's, so the whole saves less.
    assert nbytes(q8) < 0.55 * nbytes(f32)


# --------------------------------------------------------------------------- what is refused


@pytest.fixture(scope="module")
def files(sources, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    return {arch: save_original_safetensors(source.model, root / f"{arch}.safetensors")
            for arch, source in sources.items()}


def test_a_file_of_another_family_is_refused(sources, files):
    with pytest.raises(ValueError, match="flux1-schnell.safetensors holds a flux1-schnell transformer, not flux1-dev"):
        load_transformer(files["flux1-schnell"], "flux1-dev", sources["flux1-dev"].folder)
    with pytest.raises(ValueError, match=r"describes FLUX.1 schnell \(no guidance embedding\), not flux1-dev"):
        load_transformer(files["flux1-dev"], "flux1-dev", sources["flux1-schnell"].folder)
    with pytest.raises(ValueError, match="describes a SD3Transformer2DModel, not the FluxTransformer2DModel of flux1-dev"):
        load_transformer(files["flux1-dev"], "flux1-dev", sources["sd3"].folder)
    with pytest.raises(ValueError, match="'sdxl' is not a transformer architecture; supported: flux1-dev, flux1-schnell, sd3"):
        load_transformer(files["sd3"], "sdxl", sources["sd3"].folder)


def test_a_config_of_another_size_is_refused(sources, files, tmp_path):
    deeper = tiny_flux(guidance=True, num_single_layers=2)
    deeper.save_config(tmp_path / "deeper" / "transformer")
    with pytest.raises(ValueError, match=r"flux1-dev.safetensors does not fit the transformer config in .*deeper: "
                                         r"\d+ tensors missing, such as single_transformer_blocks.1."):
        load_transformer(files["flux1-dev"], "flux1-dev", tmp_path / "deeper")
    wider = tiny_sd3(num_attention_heads=8)
    wider.save_config(tmp_path / "wider" / "transformer")
    with pytest.raises(ValueError, match=r"sd3.safetensors does not fit .*: pos_embed.pos_embed is \[1, 256, 32\] in the "
                                         r"file, \[1, 256, 64\] in the config"):
        load_transformer(files["sd3"], "sd3", tmp_path / "wider")


def test_pickles_missing_configs_and_unknown_files_are_refused(sources, files, tmp_path):
    folder = sources["flux1-dev"].folder
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"x")
    with pytest.raises(ValueError, match="model.ckpt is a pickle, which can run arbitrary code"):
        load_transformer(pickle, "flux1-dev", folder)
    with pytest.raises(ValueError, match="no transformer/config.json in the config folder .*nowhere"):
        load_transformer(files["flux1-dev"], "flux1-dev", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="absent.gguf: no such file"):
        load_transformer(tmp_path / "absent.gguf", "flux1-dev", folder)
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match=r"lora.safetensors: not a model this project knows: found 1 tensor named "
                                         r"lora_unet_x.\* \(1\).*supported architectures: .*flux1-dev, flux1-schnell, sd3"):
        load_transformer(tmp_path / "lora.safetensors", "flux1-dev", folder)
