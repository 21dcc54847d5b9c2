"""LoRAs and fast mode on the diffusion-transformer families, through the real model store and engine:
peft LoRAs over the attention projections of each tiny transformer (SD 3.5, FLUX.1 dev and schnell,
FLUX.2 klein, Z-Image, Qwen-Image), a FLUX.1 LoRA in the Kohya layout, and --fast with a few-step
LoRA on FLUX.1 dev and by itself on FLUX.1 schnell.

With random weights the prompt hardly moves a tiny FLUX, klein or Qwen picture (attention is
nearly uniform); a LoRA on the attention projections moves it clearly, so the comparisons below
see whether the adapter is on."""

import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
from PIL import Image

import bot.engine.families as families
from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from bot.engine.loader import ModelLoadError
from tests.helpers.tiny import save_tiny_lora
from tests.helpers.tiny_dit import save_tiny_dit
from tests.helpers.tiny_dit_lora import save_tiny_dit_lora, save_tiny_flux_kohya_lora
from tests.helpers.transformer_files import save_gguf

LIMITS = Limits(min_side=32)
SMALL = '[defaults]\nwidth = 64\nheight = 64\nsteps = 2\n'
FAMILIES = ["sd3", "flux1-dev", "flux1-schnell", "flux2-klein", "zimage", "qwenimage"]
PROMPT = "a red circle on a blue background"
MODELS = Path(__file__).resolve().parents[2] / "models"


def lora_variant(models: Path, name: str, base: str) -> None:
    (models / name / "variant.toml").write_text(f'kind = "lora"\nbase = "{base}"\n', encoding="utf-8")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Per family a variant named after it with LoRAs '<family>-a' and '<family>-b'; for FLUX.1 dev
    also 'flux-kohya' (Kohya layout), 'sd-style' (a LoRA for SD 1.x, wrongly over FLUX.1 dev),
    'flux-fast', a FLUX.1 dev variant whose --fast applies the LoRA 'flux-turbo', and the same
    transformer as a GGUF file ('flux-gguf') and quantized to int8 ('flux-int8'), each with the
    LoRA 'flux1-dev-a' has as '<name>-a'."""
    models = tmp_path_factory.mktemp("dit-loras")
    for family in FAMILIES:
        save_tiny_dit(family, models / family)
        (models / family / "variant.toml").write_text(SMALL, encoding="utf-8")
        for suffix, seed in (("a", 1), ("b", 2)):
            save_tiny_dit_lora(models / family, models / f"{family}-{suffix}", family, seed=seed)
            lora_variant(models, f"{family}-{suffix}", family)
    save_tiny_flux_kohya_lora(models / "flux1-dev", models / "flux-kohya" / "my_flux_style.safetensors")
    lora_variant(models, "flux-kohya", "flux1-dev")
    shutil.copytree(models / "flux1-dev", models / "flux-fast", ignore=shutil.ignore_patterns("variant.toml"))
    (models / "flux-fast" / "variant.toml").write_text('fast_lora = "flux-turbo"\n' + SMALL, encoding="utf-8")
    save_tiny_dit_lora(models / "flux-fast", models / "flux-turbo", "flux1-dev", seed=7)
    lora_variant(models, "flux-turbo", "flux-fast")
    save_tiny_lora(MODELS / "demo", models / "sd-style")
    lora_variant(models, "sd-style", "flux1-dev")
    add_quantized_fluxes(models)
    return models


def add_quantized_fluxes(models: Path) -> None:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(str(models / "flux1-dev" / "transformer"))
    (models / "flux-gguf").mkdir()
    save_gguf(transformer, models / "flux-gguf" / "flux.gguf", "Q8_0")
    (models / "flux-gguf" / "variant.toml").write_text(
        'transformer = "flux.gguf"\ncomponents = "flux1-dev"\n' + SMALL, encoding="utf-8")
    shutil.copytree(models / "flux1-dev", models / "flux-int8", ignore=shutil.ignore_patterns("variant.toml"))
    (models / "flux-int8" / "variant.toml").write_text('quantize = "int8"\n' + SMALL, encoding="utf-8")
    for name in ("flux-gguf", "flux-int8"):
        shutil.copytree(models / "flux1-dev-a", models / f"{name}-a", ignore=shutil.ignore_patterns("variant.toml"))
        lora_variant(models, f"{name}-a", name)


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    registry = Registry(store, rescan_seconds=0)
    registry.scan()
    assert registry.unavailable() == {}
    return Engine(registry, EngineConfig(device="cpu", threads=1), allow_download=False)


def request(engine: Engine, text: str, model: str):
    """`text` at seed 3 (flags after LoRA tags: a flag's value runs to the next flag)."""
    registry = engine.registry
    return resolve(parse_prompt(f"{text} --seed 3"), registry.ready_defaults(), model, LIMITS,
                   unavailable=registry.unavailable(), lora_bases=registry.lora_bases())


def draw(engine: Engine, text: str, model: str) -> np.ndarray:
    [result] = engine.generate([request(engine, text, model)])
    return np.asarray(result.images[0]).astype(np.float64)


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_every_family_whose_pipeline_loads_loras_says_it_takes_them():
    for family in families.ALL:
        pipeline = getattr(diffusers, family.pipeline_class_name("text"))
        assert family.traits.loras == hasattr(pipeline, "load_lora_weights"), family.name


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_changes_the_picture_and_the_base_draws_as_before(engine, family):
    base = draw(engine, PROMPT, family)
    variant = draw(engine, PROMPT, f"{family}-a")
    assert differ(base, variant) > 0.2
    assert np.array_equal(variant, draw(engine, f"{PROMPT} <lora:{family}-a:1>", family))
    assert np.array_equal(variant, draw(engine, PROMPT, f"{family}-a"))
    assert engine.loaded()[family] == [f"{family}-a"]
    assert np.array_equal(base, draw(engine, PROMPT, family))  # the adapter is off, not gone
    assert engine.loaded()[family] == [f"{family}-a"]


@pytest.mark.parametrize("family", FAMILIES)
def test_two_loras_combine_and_a_weight_of_zero_is_the_base(engine, family):
    one = draw(engine, f"{PROMPT} <lora:{family}-a:1>", family)
    other = draw(engine, f"{PROMPT} --lora {family}-b:1", family)
    both = draw(engine, f"{PROMPT} <lora:{family}-a:1> --lora {family}-b:1", family)
    assert differ(both, one) > 0.2 and differ(both, other) > 0.2
    assert sorted(engine.loaded()[family]) == [f"{family}-a", f"{family}-b"]
    # peft scales the adapter's output by the weight: at 0 it adds nothing.
    assert np.array_equal(draw(engine, f"{PROMPT} <lora:{family}-a:0>", family), draw(engine, PROMPT, family))


def test_a_flux_lora_in_the_kohya_layout_loads(engine):
    base = draw(engine, PROMPT, "flux1-dev")
    kohya = draw(engine, f"{PROMPT} <lora:flux-kohya:1>", "flux1-dev")
    assert differ(base, kohya) > 0.2
    assert np.array_equal(kohya, draw(engine, PROMPT, "flux-kohya"))
    assert np.array_equal(base, draw(engine, PROMPT, "flux1-dev"))


@pytest.mark.parametrize("name", ["flux-gguf", "flux-int8"])
def test_a_lora_applies_over_a_gguf_or_quantized_transformer(engine, name):
    full = draw(engine, f"{PROMPT} <lora:flux1-dev-a:1>", "flux1-dev")
    base = draw(engine, PROMPT, name)
    with_lora = draw(engine, f"{PROMPT} <lora:{name}-a:1>", name)
    # 8-bit weights draw close to, not exactly, what the full-precision model draws.
    assert differ(with_lora, full) < differ(with_lora, base) / 4
    assert np.array_equal(base, draw(engine, PROMPT, name))


def test_a_lora_for_another_family_is_refused_and_the_model_still_draws(engine):
    base = draw(engine, PROMPT, "flux1-dev")
    with pytest.raises(ModelLoadError, match="LoRA 'sd-style' could not be applied to 'flux1-dev'.*another model family"):
        draw(engine, PROMPT, "sd-style")
    assert "sd-style" not in engine.loaded()["flux1-dev"]
    assert np.array_equal(base, draw(engine, PROMPT, "flux1-dev"))


def test_a_lora_applies_to_image_to_image_too(engine, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)

    def changed(model: str) -> np.ndarray:
        req = request(engine, "a blue square --steps 4", model)
        [result] = engine.generate([type(req)(**{**req.to_dict(), "init_image": str(source), "strength": 0.8})])
        return np.asarray(result.images[0]).astype(np.float64)

    plain = changed("flux1-dev")
    assert differ(plain, changed("flux1-dev-a")) > 0.2
    assert np.array_equal(plain, changed("flux1-dev"))


def steps_of(engine: Engine, req) -> tuple[list[int], np.ndarray]:
    steps: list[int] = []
    [result] = engine.generate([req], on_progress=lambda progress: steps.append(progress.step))
    return steps, np.asarray(result.images[0]).astype(np.float64)


def test_fast_flux_dev_draws_with_its_lora_in_few_euler_steps_at_its_own_guidance(engine):
    fast = request(engine, f"{PROMPT} --fast", "flux-fast")
    assert (fast.fast, fast.steps, fast.scheduler, fast.guidance) == (True, 6, "euler", 3.5)
    steps, image = steps_of(engine, fast)
    assert steps == [1, 2, 3, 4, 5, 6]
    resident = engine.residency.models["flux-fast"]
    assert type(resident.pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    # What --fast draws is the model with the LoRA at the same settings; without it, another picture.
    assert np.array_equal(image, draw(engine, f"{PROMPT} <lora:flux-turbo:1> --steps 6", "flux-fast"))
    plain = draw(engine, f"{PROMPT} --steps 6", "flux-fast")
    assert differ(image, plain) > 0.2
    # Its guidance is distilled, not classifier-free: --fast does not hold it under 2.
    assert request(engine, f"{PROMPT} --fast --cfg 3", "flux-fast").guidance == 3.0


def test_flux_schnell_is_fast_by_itself_in_four_steps(engine):
    fast = request(engine, f"{PROMPT} --fast", "flux1-schnell")
    assert (fast.steps, fast.scheduler, fast.guidance) == (4, "euler", 0.0)
    steps, image = steps_of(engine, fast)
    assert steps == [1, 2, 3, 4]
    assert np.array_equal(image, draw(engine, f"{PROMPT} --steps 4", "flux1-schnell"))


def test_flux_dev_without_a_fast_lora_refuses_fast(engine):
    with pytest.raises(UserError) as refused:
        request(engine, f"{PROMPT} --fast", "flux1-dev")
    assert refused.value.key == "no_fast_mode"
    assert "'flux1-dev' has no fast mode" in str(refused.value)
    assert "flux-fast" in str(refused.value) and "flux1-schnell" in str(refused.value)
