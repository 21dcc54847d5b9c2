"""What users download for FLUX.1 and SD 3.5, through the model store and the engine: the transformer
alone as one file (Black Forest Labs' or Stability's layout, ComfyUI's prefix, GGUF) with
`components = "<pipeline variant>"` for the rest, drawing what the pipeline folder draws; what the
store and the engine refuse, and how; reloading when the components change; the memory counted
before and after loading; int8 quantization of a transformer family on the CPU.

The tiny FLUX.1 dev/schnell and SD 3.5 pipeline folders (64 px, 2 steps) are built once for the
module; each transformer file is the folder's own transformer written in another layout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.quantizers.gguf.utils import GGUFParameter
from gguf import GGMLQuantizationType

import bot.engine.families as families
from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.engine.loader import WEIGHT_SUFFIXES, ModelLoadError, model_bytes, weight_file_bytes
from bot.engine.quantize import tensor_bytes
from bot.engine.residency import _own_weights
from bot.models.registry import Registry
from tests.helpers.tiny_dit import save_tiny_dit
from tests.helpers.transformer_files import save_gguf, save_original_safetensors

SMALL = "[defaults]\nwidth = 64\nheight = 64\nsteps = 2\n"
PROMPT = "a red circle on a blue background --seed 3"
COMFY = "model.diffusion_model."
# Q8_0 keeps each weight to 1/127 of the largest in its block of 32 (int8 torchao: of its row), an
# error of a fraction of a percent per weight. Through two steps and the VAE that moves pixels by a
# level or two of 255 (measured: at most 1); 8 levels leave room across CPUs and libraries and are
# still far below what a wrong weight layout or another seed changes (tens of levels on average).
CLOSE_MAX, CLOSE_MEAN = 8, 1.0


def add_transformer_variant(models: Path, name: str, transformer: torch.nn.Module, layout: str,
                            toml: str) -> Path:
    """Variant `name`: `transformer` as the one file users download ("original": Black Forest Labs'
    or Stability's MMDiT layout, "comfyui": the same with ComfyUI's prefix, a GGUF type: GGUF),
    and `toml` after its name."""
    folder = models / name
    folder.mkdir()
    if not isinstance(transformer, FluxTransformer2DModel):
        stem = "sd3.5_medium"
    else:
        stem = "flux1-dev" if transformer.config.guidance_embeds else "flux1-schnell"
    if layout in ("original", "comfyui"):
        file = f"{stem}.safetensors"
        save_original_safetensors(transformer, folder / file, prefix=COMFY if layout == "comfyui" else "")
    else:
        file = f"{stem}.gguf"
        save_gguf(transformer, folder / file, layout)
    (folder / "variant.toml").write_text(f'transformer = "{file}"\n{toml}{SMALL}', encoding="utf-8")
    return folder


def add_folder(models: Path, name: str, source: Path, toml: str = "") -> Path:
    shutil.copytree(source, models / name)
    (models / name / "variant.toml").write_text(toml + SMALL, encoding="utf-8")
    return models / name


def wide_flux() -> FluxTransformer2DModel:
    """A FLUX.1 dev transformer like the tiny pipeline's but 48 wide (3 heads) instead of 32: a file
    of the family, of another size than the components' config."""
    torch.manual_seed(1)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=3, joint_attention_dim=32,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-dit")
    return {name: save_tiny_dit(name, root / name) for name in ("flux1-dev", "flux1-schnell", "sd3")}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_folders) -> Path:
    models = tmp_path_factory.mktemp("models")
    add_folder(models, "flux-folder", tiny_folders["flux1-dev"])
    add_folder(models, "flux-int8", tiny_folders["flux1-dev"], 'quantize = "int8"\n')
    add_folder(models, "schnell-folder", tiny_folders["flux1-schnell"])
    add_folder(models, "sd3-folder", tiny_folders["sd3"])
    dev = FluxTransformer2DModel.from_pretrained(tiny_folders["flux1-dev"] / "transformer")
    schnell = FluxTransformer2DModel.from_pretrained(tiny_folders["flux1-schnell"] / "transformer")
    sd3 = SD3Transformer2DModel.from_pretrained(tiny_folders["sd3"] / "transformer")
    flux = 'components = "flux-folder"\n'
    for name, layout in (("flux-original", "original"), ("flux-comfyui", "comfyui"), ("flux-f32", "F32"),
                         ("flux-q8", "Q8_0")):
        add_transformer_variant(models, name, dev, layout, flux)
    add_transformer_variant(models, "flux-file-int8", dev, "original", flux + 'quantize = "int8"\n')
    add_transformer_variant(models, "schnell-file", schnell, "original", 'components = "schnell-folder"\n')
    add_transformer_variant(models, "sd3-file", sd3, "original", 'components = "sd3-folder"\n')
    # What is refused, at scan and at load.
    add_transformer_variant(models, "no-components", dev, "original", "")
    add_transformer_variant(models, "missing-components", dev, "original", 'components = "flux1-dev"\n')
    add_transformer_variant(models, "sd3-components", dev, "original", 'components = "sd3-folder"\n')
    add_transformer_variant(models, "schnell-components", dev, "original", 'components = "schnell-folder"\n')
    add_transformer_variant(models, "lora-components", dev, "original", 'components = "flux-lora"\n')
    add_transformer_variant(models, "gguf-int8", dev, "Q8_0", flux + 'quantize = "int8"\n')
    add_transformer_variant(models, "flux-wide", wide_flux(), "original", flux)
    # As in the official repository: the original single files beside the diffusers folders, which
    # loading the folder never reads (nor counts).
    shutil.copy(models / "flux-original" / "flux1-dev.safetensors", models / "flux-folder" / "flux1-dev.safetensors")
    shutil.copy(models / "flux-folder" / "vae" / "diffusion_pytorch_model.safetensors",
                models / "flux-folder" / "ae.safetensors")
    (models / "flux-lora").mkdir()
    (models / "flux-lora" / "lora.safetensors").write_bytes(b"")  # the store reads no LoRA weights
    (models / "flux-lora" / "variant.toml").write_text('base = "flux-folder"\n', encoding="utf-8")
    return models


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    return make_engine(store)


def make_engine(models: Path) -> Engine:
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", threads=1), allow_download=False)


def request(engine: Engine, model: str, text: str = PROMPT):
    registry = engine.registry
    return resolve(parse_prompt(text), registry.ready_defaults(), model, Limits(min_side=32),
                   unavailable=registry.unavailable())


def draw(engine: Engine, model: str, text: str = PROMPT) -> np.ndarray:
    [result] = engine.generate([request(engine, model, text)])
    [image] = result.images
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def folder_image(engine) -> np.ndarray:
    return draw(engine, "flux-folder")


def resident(engine: Engine, name: str):
    """The variant's model in memory (loaded if it is not)."""
    return engine.residency.resident_for(engine.registry.get(name))


def linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [layer.weight for layer in module.modules() if isinstance(layer, torch.nn.Linear)]


def weight_files(folder: Path, *components: str) -> int:
    """The bytes of the weight files in these component folders of a pipeline folder."""
    return sum(path.stat().st_size for component in components for path in (folder / component).iterdir()
               if path.suffix in WEIGHT_SUFFIXES)


# --------------------------------------------------------------------------- same pixels


@pytest.mark.parametrize("name", ["flux-original", "flux-comfyui", "flux-f32"])
def test_a_flux_dev_file_draws_the_pixels_of_its_folder(engine, store, folder_image, name):
    """The transformer the folder holds, written as users download it, draws the same image, bit for
    bit: the weights are the same numbers, and on the CPU the engine copies every weight into
    fresh, aligned memory, whichever file it came from, so the kernels add in the same order."""
    spec = engine.registry.get(name)
    assert (spec.kind, spec.arch, spec.defaults.family.name) == ("single_file", "auto", "flux1-dev")
    assert spec.components_dir == store / "flux-folder"
    assert (spec.defaults.width, spec.defaults.height, spec.defaults.steps) == (64, 64, 2)
    assert (spec.defaults.guidance, spec.defaults.scheduler) == (3.5, "euler")  # the family's
    image = draw(engine, name)
    assert image.shape == (64, 64, 3)
    assert np.array_equal(image, folder_image)
    assert not np.array_equal(image, draw(engine, name, PROMPT.replace("--seed 3", "--seed 4")))


def test_a_flux_schnell_file_is_schnell_and_draws_its_folders_pixels(engine):
    spec = engine.registry.get("schnell-file")
    assert spec.defaults.family.name == "flux1-schnell"
    assert spec.defaults.guidance == 0.0
    assert np.array_equal(draw(engine, "schnell-file"), draw(engine, "schnell-folder"))


def test_an_sd35_file_draws_the_pixels_of_its_folder(engine):
    spec = engine.registry.get("sd3-file")
    assert (spec.arch, spec.defaults.family.name) == ("auto", "sd3")
    text = PROMPT + " --no blurry --cfg 4"  # SD 3.5 guides with a negative prompt
    assert np.array_equal(draw(engine, "sd3-file", text), draw(engine, "sd3-folder", text))


# --------------------------------------------------------------------------- GGUF


def test_a_q8_gguf_draws_a_close_image_in_less_memory(engine, folder_image):
    q8 = draw(engine, "flux-q8")
    difference = np.abs(q8 - folder_image)
    assert difference.max() <= CLOSE_MAX and difference.mean() < CLOSE_MEAN, (difference.max(), difference.mean())
    another_seed = np.abs(draw(engine, "flux-folder", PROMPT.replace("--seed 3", "--seed 4")) - folder_image)
    assert another_seed.mean() > 10 * CLOSE_MEAN  # the tolerance tells images apart

    f32, quantized = resident(engine, "flux-f32"), resident(engine, "flux-q8")
    assert quantized.nbytes == model_bytes(quantized.pipe) < f32.nbytes
    # Only the transformer differs; its matrices take 34 bytes a block of 32 weights instead of 128.
    f32_transformer = sum(tensor_bytes(t) for t in f32.pipe.transformer.parameters())
    q8_transformer = sum(tensor_bytes(t) for t in quantized.pipe.transformer.parameters())
    assert f32.nbytes - quantized.nbytes == f32_transformer - q8_transformer
    assert q8_transformer < 0.6 * f32_transformer, (q8_transformer, f32_transformer)


def test_the_cpu_copy_of_the_weights_keeps_gguf_parameters_quantized(engine, folder_image):
    """The engine's copy into aligned memory (residency._own_weights) replaces each weight's data:
    a GGUF weight must stay a GGUFParameter of its type and shape, which is what makes its layer
    dequantize it as it runs."""
    pipe = resident(engine, "flux-q8").pipe
    quantized = [p for p in pipe.transformer.parameters() if isinstance(p, GGUFParameter)]
    assert quantized and {p.quant_type for p in quantized} == {GGMLQuantizationType.Q8_0}
    before = {id(p): (p.data_ptr(), p.quant_shape, p.data.clone()) for p in quantized}
    _own_weights(pipe)
    for parameter in quantized:
        pointer, shape, data = before[id(parameter)]
        assert isinstance(parameter, GGUFParameter) and parameter.quant_type == GGMLQuantizationType.Q8_0
        assert parameter.data_ptr() != pointer and parameter.quant_shape == shape
        assert torch.equal(parameter.data, data)
    difference = np.abs(draw(engine, "flux-q8") - folder_image)
    assert difference.max() <= CLOSE_MAX and difference.mean() < CLOSE_MEAN


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name, problem", [
    ("no-components", "flux1-dev.safetensors holds only the FLUX.1 [dev] transformer: name the pipeline variant "
                      "that gives its text encoders and VAE, e.g. components = \"flux1-dev\""),
    ("missing-components", "its components variant 'flux1-dev' is not in the model store"),
    ("sd3-components", "its components variant 'sd3-folder' is Stable Diffusion 3.5, this transformer is "
                       "FLUX.1 [dev]; name a diffusers pipeline folder of FLUX.1 [dev]"),
    ("schnell-components", "its components variant 'schnell-folder' is FLUX.1 [schnell], this transformer is "
                           "FLUX.1 [dev]"),
    ("lora-components", "its components variant 'flux-lora' is a LoRA; name a diffusers pipeline folder of "
                        "FLUX.1 [dev]"),
    ("gguf-int8", "flux1-dev.gguf is quantized already (GGUF): remove quantize"),
])
def test_a_transformer_variant_that_cannot_draw_is_refused_saying_why(engine, name, problem):
    entry = engine.registry.entry(name)
    assert not entry.ready and problem in entry.error
    with pytest.raises(UserError) as refused:
        request(engine, name)
    assert refused.value.key == "model_broken"
    assert str(refused.value).startswith(f"Model '{name}' cannot be used right now: ")
    assert problem in str(refused.value)


def test_a_file_of_another_size_fails_to_load_naming_the_variant_and_the_mismatch(engine, folder_image):
    """The store reads headers only, so a FLUX.1 dev file 48 wide is listed; loading it against the
    32-wide config of its components is refused before diffusers would leave weights unset."""
    assert engine.registry.entry("flux-wide").ready
    with pytest.raises(ModelLoadError) as failed:
        draw(engine, "flux-wide")
    message = str(failed.value)
    assert message.startswith("model 'flux-wide' could not be loaded: flux1-dev.safetensors does not fit the "
                              "transformer config in the components variant 'flux-folder': ")
    assert "is [48, " in message and "in the file, [32, " in message and "in the config" in message
    assert str(engine.registry.get("flux-folder").folder) not in message  # no server paths
    assert "flux-wide" not in engine.loaded()
    assert np.array_equal(draw(engine, "flux-folder"), folder_image)  # the engine goes on


# --------------------------------------------------------------------------- reload


def test_changing_the_components_reloads_the_transformer_variant(tmp_path, store):
    models = tmp_path / "models"
    shutil.copytree(store / "flux-folder", models / "flux-folder")
    shutil.copytree(store / "flux-original", models / "flux-original")
    engine = make_engine(models)
    first = draw(engine, "flux-original")
    fingerprint = engine.registry.get("flux-original").fingerprint
    draw(engine, "flux-original")
    assert engine.stats.model_loads == 1

    vae = models / "flux-folder" / "vae" / "diffusion_pytorch_model.safetensors"
    stat = vae.stat()
    os.utime(vae, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a copy over it, same bytes
    engine.refresh()
    assert engine.registry.get("flux-original").fingerprint != fingerprint
    assert "flux-original" not in engine.loaded()
    [result] = engine.generate([request(engine, "flux-original")])
    assert engine.stats.model_loads == 2
    assert result.model_fingerprint == engine.registry.get("flux-original").fingerprint
    assert np.array_equal(np.asarray(result.images[0]).astype(np.int16), first)


# --------------------------------------------------------------------------- memory


def test_the_estimate_counts_the_file_and_the_components_other_weights(engine, store):
    quantizable = families.by_name("flux1-dev").quantizable
    file = store / "flux-original" / "flux1-dev.safetensors"
    others = weight_files(store / "flux-folder", "vae", "text_encoder", "text_encoder_2")
    transformer = weight_files(store / "flux-folder", "transformer")
    assert others > 0 and transformer > 0
    assert weight_file_bytes(engine.registry.get("flux-original"), quantizable) == file.stat().st_size + others
    assert weight_file_bytes(engine.registry.get("flux-folder"), quantizable) == transformer + others
    gguf = store / "flux-q8" / "flux1-dev.gguf"
    assert weight_file_bytes(engine.registry.get("flux-q8"), quantizable) == gguf.stat().st_size + others
    assert gguf.stat().st_size < file.stat().st_size


# --------------------------------------------------------------------------- int8


def test_int8_quantizes_a_flux_folders_transformer_and_t5(engine, folder_image):
    int8 = draw(engine, "flux-int8")
    difference = np.abs(int8 - folder_image)
    assert difference.max() <= CLOSE_MAX and difference.mean() < CLOSE_MEAN, (difference.max(), difference.mean())
    plain, quantized = resident(engine, "flux-folder"), resident(engine, "flux-int8")
    assert families.by_name("flux1-dev").quantizable == ("transformer", "text_encoder_2")
    for name in ("transformer", "text_encoder_2"):
        weights = linear_weights(getattr(quantized.pipe, name))
        assert weights and all(type(w).__name__ == "Int8Tensor" for w in weights), name
    assert all(type(w) is torch.nn.Parameter for w in linear_weights(quantized.pipe.text_encoder))  # CLIP stays
    assert quantized.nbytes == model_bytes(quantized.pipe) < plain.nbytes
    estimate = weight_file_bytes(engine.registry.get("flux-int8"), families.by_name("flux1-dev").quantizable)
    assert abs(estimate - quantized.nbytes) / quantized.nbytes < 0.02, (estimate, quantized.nbytes)


def test_int8_quantizes_a_transformer_file_after_loading(engine, folder_image):
    int8 = draw(engine, "flux-file-int8")
    difference = np.abs(int8 - folder_image)
    assert difference.max() <= CLOSE_MAX and difference.mean() < CLOSE_MEAN, (difference.max(), difference.mean())
    loaded = resident(engine, "flux-file-int8")
    for name in ("transformer", "text_encoder_2"):
        assert all(type(w).__name__ == "Int8Tensor" for w in linear_weights(getattr(loaded.pipe, name))), name
    assert loaded.nbytes < resident(engine, "flux-folder").nbytes
    # Counted before loading as after: the file's matrices at a byte a weight, and the components'
    # VAE, CLIP and (quantized) T5.
    spec = engine.registry.get("flux-file-int8")
    estimate = weight_file_bytes(spec, families.by_name("flux1-dev").quantizable)
    assert abs(estimate - loaded.nbytes) / loaded.nbytes < 0.02, (estimate, loaded.nbytes)
