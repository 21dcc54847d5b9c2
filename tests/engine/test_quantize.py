"""variant.toml `quantize`: tiny random-weight models loaded quantized on the CPU, the memory they
are counted at, the modes a CPU cannot run refused with what would, and what doctor says."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.config import EngineConfig, Limits, Secrets, config_from_dict
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.doctor import report
from bot.engine import quantize
from bot.engine.engine import Engine
from bot.engine.loader import ModelLoadError, load_base_pipeline, model_bytes, weight_file_bytes
from bot.engine.quantize import QuantizeUnsupported, check_supported, nf4_linears, tensor_bytes
from bot.models.registry import Registry
from bot.models.spec import VariantError, read_variant
from tests.helpers.models import add_pipeline_variant, add_single_file_variant

CPU = torch.device("cpu")
CPU_ONLY = not torch.cuda.is_available()
PROMPT = "a red circle on a blue background --seed 3 --steps 2 --size 64x64"


@pytest.fixture
def store(tmp_path, tiny_pipeline_dir) -> Path:
    """The tiny pipeline as it is ('plain') and with each quantize mode."""
    models = tmp_path / "models"
    models.mkdir()
    add_pipeline_variant(models, "plain", tiny_pipeline_dir)
    for mode in ("int8", "nf4", "fp8"):
        add_pipeline_variant(models, f"q-{mode}", tiny_pipeline_dir, f'kind = "pipeline"\nquantize = "{mode}"\n')
    return models


def make_engine(models: Path) -> Engine:
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def draw(engine: Engine, model: str) -> np.ndarray:
    registry = engine.registry
    request = resolve(parse_prompt(PROMPT), registry.ready_defaults(), model, Limits(min_side=32),
                      unavailable=registry.unavailable())
    [result] = engine.generate([request])
    return np.asarray(result.images[0]).astype(np.int16)


def linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [layer.weight for layer in module.modules() if isinstance(layer, torch.nn.Linear)]


# --- int8 on the CPU -----------------------------------------------------------------------------

def test_an_int8_variant_draws_nearly_the_image_of_the_unquantized_one(store):
    engine = make_engine(store)
    plain, int8 = draw(engine, "plain"), draw(engine, "q-int8")
    assert plain.shape == int8.shape == (64, 64, 3)
    assert not np.array_equal(plain, int8)  # the weights really are other numbers
    difference = np.abs(plain - int8)
    assert difference.mean() < 1.0 and difference.max() <= 8, (difference.mean(), difference.max())


def test_an_int8_image_is_pixel_identical_alone_or_in_a_batch(store):
    engine = make_engine(store)
    registry = engine.registry
    requests = [resolve(parse_prompt(text), registry.ready_defaults(), "q-int8", Limits(min_side=32))
                for text in ("a cat --seed 1 --n 2 --steps 2 --size 64x64", "a dog --seed 5 --steps 2 --size 64x64")]
    batched = engine.generate(requests)
    [alone] = engine.generate([requests[1]])
    assert engine.stats.batches == 2
    assert np.array_equal(np.asarray(batched[1].images[0]), np.asarray(alone.images[0]))


def test_int8_weights_are_counted_at_what_they_store(store):
    """The tiny UNet is mostly convolutions; only its linear layers are quantized, each to a
    quarter of float32 plus one scale per row, and the budget counts exactly that."""
    engine = make_engine(store)
    draw(engine, "plain")
    draw(engine, "q-int8")
    plain, int8 = engine.residency.models["plain"], engine.residency.models["q-int8"]
    quantized = linear_weights(int8.pipe.unet)
    assert quantized and all(type(w).__name__ == "Int8Tensor" for w in quantized)
    assert all(type(w).__name__ != "Int8Tensor" for w in linear_weights(int8.pipe.text_encoder))  # denoiser only

    full = sum(w.numel() * w.element_size() for w in linear_weights(plain.pipe.unet))
    stored = sum(tensor_bytes(w) for w in quantized)
    assert all(w.element_size() == 4 for w in quantized)  # what a quantized weight claims: misleading
    assert 0.25 < stored / full < 0.32, (stored, full)  # one byte a weight, and the row scales
    assert int8.nbytes == model_bytes(int8.pipe) == plain.nbytes - full + stored

    # The estimate before loading counts the UNet's 2-D tensors at one byte a weight.
    estimate = weight_file_bytes(engine.registry.get("q-int8"))
    assert estimate < weight_file_bytes(engine.registry.get("plain"))
    assert abs(estimate - int8.nbytes) / int8.nbytes < 0.02, (estimate, int8.nbytes)


def test_the_text_encoder_is_quantized_when_the_caller_names_it(store):
    spec = read_variant(store / "q-int8")
    pipe = load_base_pipeline(spec, torch.float32, allow_download=False, quantize_for=CPU,
                              components=("unet", "text_encoder"))
    for component in (pipe.unet, pipe.text_encoder):
        assert all(type(w).__name__ == "Int8Tensor" for w in linear_weights(component))
    # The token table is not a linear layer; it stays float32.
    assert type(pipe.text_encoder.get_input_embeddings().weight) is torch.nn.Parameter
    estimate = weight_file_bytes(spec, ("unet", "text_encoder"))
    assert abs(estimate - model_bytes(pipe)) / model_bytes(pipe) < 0.02, (estimate, model_bytes(pipe))


def test_without_a_device_the_weights_load_as_stored(store):
    """What training loads: the full weights, whatever the variant says."""
    spec = read_variant(store / "q-int8")
    pipe = load_base_pipeline(spec, torch.float32, allow_download=False)
    assert all(type(w) is torch.nn.Parameter for w in linear_weights(pipe.unet))


def test_a_single_file_int8_variant_is_quantized_after_loading(tmp_path, tiny_pipeline_dir):
    models = tmp_path / "models"
    models.mkdir()
    add_single_file_variant(models, "file", tiny_pipeline_dir)
    add_single_file_variant(models, "file-int8", tiny_pipeline_dir, 'quantize = "int8"\n')
    engine = make_engine(models)
    plain, int8 = draw(engine, "file"), draw(engine, "file-int8")
    assert not np.array_equal(plain, int8) and np.abs(plain - int8).mean() < 1.0
    resident = engine.residency.models["file-int8"]
    assert all(type(w).__name__ == "Int8Tensor" for w in linear_weights(resident.pipe.unet))
    assert resident.nbytes < engine.residency.models["file"].nbytes
    estimate = weight_file_bytes(engine.registry.get("file-int8"))
    assert abs(estimate - resident.nbytes) / resident.nbytes < 0.02, (estimate, resident.nbytes)


def test_a_lora_applies_over_an_int8_base(store, tmp_path, tiny_pipeline_dir):
    from tests.helpers.tiny import save_tiny_lora

    save_tiny_lora(tiny_pipeline_dir, store / "style")
    (store / "style" / "variant.toml").write_text('base = "q-int8"\n', encoding="utf-8")
    engine = make_engine(store)
    assert not np.array_equal(draw(engine, "q-int8"), draw(engine, "style"))


# --- what a CPU cannot run -----------------------------------------------------------------------

def test_fp8_is_refused_on_the_cpu_with_what_would_work():
    with pytest.raises(QuantizeUnsupported) as error:
        check_supported("fp8", CPU)
    message = str(error.value)
    assert message.startswith('quantize = "fp8" needs an NVIDIA GPU with FP8 (RTX 40xx, L4, H100; '
                              'compute capability 8.9+); ')
    assert message.endswith(': use "int8" or "none"')
    if CPU_ONLY:
        assert "this machine has CPU only" in message


def test_fp8_is_refused_on_a_gpu_without_fp8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(QuantizeUnsupported, match=r'this GPU \(NVIDIA GeForce RTX 3090\) has compute capability '
                                                  r'8\.6: use "int8" or "nf4"'):
        check_supported("fp8", torch.device("cuda"))


def test_nf4_is_refused_on_the_cpu_with_what_would_work():
    with pytest.raises(QuantizeUnsupported, match='quantize = "nf4" needs a CUDA GPU .*: use "int8" or "none"'):
        check_supported("nf4", CPU)


@pytest.mark.parametrize("mode", ["nf4", "fp8"])
def test_the_engine_refuses_a_mode_the_cpu_cannot_run_and_goes_on(store, mode):
    engine = make_engine(store)
    with pytest.raises(ModelLoadError, match=f"model 'q-{mode}' cannot be loaded here: quantize = \"{mode}\" needs"):
        draw(engine, f"q-{mode}")
    assert draw(engine, "plain").shape == (64, 64, 3)


def test_a_missing_library_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(quantize.importlib.util, "find_spec",
                        lambda name, *args: None if name == "torchao" else real(name, *args))
    with pytest.raises(QuantizeUnsupported, match=r"quantize = \"int8\" needs torchao, which is not installed: "
                                                  r"pip install 'imagebot\[quantize\]'"):
        check_supported("int8", CPU)


def test_bitsandbytes_nf4_layers_run_and_are_counted_at_four_bits():
    """The layers a single-file nf4 variant gets on a GPU; bitsandbytes' CPU kernels run them here
    too (the engine still refuses nf4 on a CPU: diffusers loads 4-bit weights only onto a GPU).
    The UNet is 64 channels wide: bitsandbytes' fused CPU kernel takes layers of at least one
    block of 64 inputs, as every real model's are."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(64, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32).eval()
    inputs = (torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500]),
              torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        reference = unet(*inputs).sample
    full = sum(w.numel() * w.element_size() for w in linear_weights(unet))
    nf4_linears(unet, torch.float32, CPU)
    layers = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(isinstance(m, bnb.nn.Linear4bit) and m.weight.bnb_quantized for m in layers)
    stored = sum(tensor_bytes(m.weight) for m in layers)
    assert 0.125 < stored / full < 0.16, (stored, full)  # half a byte a weight, and a scale per 64
    with torch.no_grad():
        output = unet(*inputs).sample
    error = (output - reference).abs().mean() / reference.abs().mean()
    assert 0 < error < 0.2, error


# --- variant.toml --------------------------------------------------------------------------------

def test_quantize_is_none_unless_the_variant_says(store):
    assert read_variant(store / "plain").quantize == "none"
    assert read_variant(store / "q-int8").quantize == "int8"


def test_an_unknown_quantize_mode_lists_the_allowed_ones(store, tiny_pipeline_dir):
    add_pipeline_variant(store, "bad", tiny_pipeline_dir, 'kind = "pipeline"\nquantize = "int4"\n')
    with pytest.raises(VariantError, match="quantize must be one of none, int8, nf4, fp8, got 'int4'"):
        read_variant(store / "bad")
    (store / "bad" / "variant.toml").write_text('kind = "pipeline"\nquantize = 8\n', encoding="utf-8")
    with pytest.raises(VariantError, match="quantize has the wrong type: 8"):
        read_variant(store / "bad")


def test_a_lora_or_an_upscaler_with_quantize_is_refused(tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "w.safetensors").write_bytes(b"x")
    (lora / "variant.toml").write_text('base = "plain"\nquantize = "int8"\n', encoding="utf-8")
    with pytest.raises(VariantError, match="a LoRA runs on its base's weights.*set quantize in the base's"):
        read_variant(lora)
    upscaler = tmp_path / "upscaler"
    upscaler.mkdir()
    (upscaler / "x2.safetensors").write_bytes(b"x")
    (upscaler / "variant.toml").write_text('kind = "upscaler"\nfile = "x2.safetensors"\nquantize = "int8"\n',
                                           encoding="utf-8")
    with pytest.raises(VariantError, match="quantize is for full models .*an upscaler's weights are small"):
        read_variant(upscaler)


# --- doctor --------------------------------------------------------------------------------------

def test_doctor_says_what_each_model_takes_and_which_modes_cannot_run(store, tmp_path):
    config = config_from_dict({"engine": {"device": "cpu"},
                               "storage": {"state_dir": str(tmp_path), "models_dir": str(store)}})
    lines = report(config, Secrets())
    plain = weight_file_bytes(read_variant(store / "plain")) / 2**20
    int8 = weight_file_bytes(read_variant(store / "q-int8")) / 2**20
    assert f"model plain (Stable Diffusion 1.x): ~{plain:.1f} MiB on cpu" in lines, lines
    assert f"model q-int8 (Stable Diffusion 1.x): ~{int8:.1f} MiB on cpu (int8: unet)" in lines, lines
    [nf4] = [line for line in lines if line.startswith("model q-nf4:")]
    assert nf4.startswith('model q-nf4: cannot be used here: quantize = "nf4" needs a CUDA GPU')
    [fp8] = [line for line in lines if line.startswith("model q-fp8:")]
    assert fp8.startswith('model q-fp8: cannot be used here: quantize = "fp8" needs an NVIDIA GPU with FP8')
