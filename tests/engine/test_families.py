"""The model families through the real registry and engine: SD 2.x-v, SDXL base, SDXL base with its
refiner (the ensemble of experts), inpainting models, and each of them as a single original-layout
file loaded back with `arch = "auto"`. Tiny random-weight models, 64 px, 2-4 steps."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from bot.outputs import read_png_parameters, save_result
from tests.helpers.models import add_pipeline_variant, add_single_file_variant

LIMITS = Limits(min_side=32)
STEPS = '[defaults]\nsteps = 4\n'
BASE_WITH_REFINER = 'kind = "pipeline"\nrefiner = "refiner"\nrefiner_switch = 0.75\n' + STEPS


def make_engine(models_dir: Path, **options) -> Engine:
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", **options), allow_download=False)


def request(engine: Engine, text: str, model: str):
    registry = engine.registry
    registry.scan_if_due()
    return resolve(parse_prompt(text), registry.ready_defaults(), model, LIMITS, unavailable=registry.unavailable())


def generate(engine: Engine, text: str, model: str, **kwargs) -> np.ndarray:
    [result] = engine.generate([request(engine, text, model)], **kwargs)
    [image] = result.images
    return np.asarray(image)


def resident_pipe(engine: Engine, name: str):
    return engine.residency.models[name].pipe


@pytest.fixture
def store(tmp_path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    return models


@pytest.fixture
def sdxl_store(store, tiny_sdxl_dir, tiny_sdxl_refiner_dir) -> Path:
    """'xl' (SDXL base naming 'refiner', switch 0.75), 'plain-xl' (the same weights, no refiner), 'refiner'."""
    add_pipeline_variant(store, "xl", tiny_sdxl_dir, BASE_WITH_REFINER)
    add_pipeline_variant(store, "plain-xl", tiny_sdxl_dir, 'kind = "pipeline"\n' + STEPS)
    add_pipeline_variant(store, "refiner", tiny_sdxl_refiner_dir, 'kind = "pipeline"\n' + STEPS)
    return store


# --------------------------------------------------------------------------- SD 2.x


def test_sd2_v_generates_with_its_open_clip_encoder_and_v_prediction(store, tiny_sd2_dir):
    add_pipeline_variant(store, "sd2", tiny_sd2_dir, 'kind = "pipeline"\n' + STEPS)
    engine = make_engine(store)
    spec = engine.registry.get("sd2")
    assert (spec.defaults.width, spec.defaults.role) == (64, "text2image")
    image = generate(engine, "a lighthouse --seed 3", "sd2")
    assert image.shape == (64, 64, 3) and image.std() > 0
    pipe = resident_pipe(engine, "sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.text_encoder.config.hidden_act == "gelu"  # OpenCLIP, not OpenAI CLIP's quick_gelu
    assert pipe.unet.config.upcast_attention and pipe.unet.config.use_linear_projection
    assert np.array_equal(image, generate(engine, "a lighthouse --seed 3", "sd2"))


# --------------------------------------------------------------------------- SDXL and its refiner


def test_sdxl_base_generates_with_two_text_encoders(sdxl_store):
    engine = make_engine(sdxl_store)
    image = generate(engine, "a lighthouse --seed 3", "plain-xl")
    assert image.shape == (64, 64, 3) and image.std() > 0
    pipe = resident_pipe(engine, "plain-xl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    with_negative = generate(engine, "a lighthouse --seed 3 --no fog", "plain-xl")
    assert not np.array_equal(image, with_negative)


def test_base_with_refiner_runs_the_ensemble_of_experts(sdxl_store):
    engine = make_engine(sdxl_store)
    req = request(engine, "a lighthouse --seed 3", "xl")
    assert (req.refiner, req.refiner_switch) == ("refiner", 0.75)
    steps = []
    [result] = engine.generate([req], on_progress=lambda p: steps.append((p.step, p.total)))
    refined = np.asarray(result.images[0])
    assert refined.shape == (64, 64, 3)
    # Both models resident; the base ran the first 3 of the 4 steps, the refiner the last one.
    assert set(engine.loaded()) == {"xl", "refiner"}
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Same seed, same image; the refiner changed what the base alone makes.
    assert np.array_equal(refined, generate(engine, "a lighthouse --seed 3", "xl"))
    base_only = generate(engine, "a lighthouse --seed 3 --refiner 0", "xl")
    assert np.array_equal(base_only, generate(engine, "a lighthouse --seed 3", "plain-xl"))
    assert not np.array_equal(refined, base_only)
    earlier = generate(engine, "a lighthouse --seed 3 --refiner 0.5", "xl")
    assert not np.array_equal(earlier, refined) and not np.array_equal(earlier, base_only)


def test_refined_image_is_the_same_alone_or_in_a_batch(sdxl_store):
    engine = make_engine(sdxl_store)
    alone = generate(engine, "a lighthouse --seed 3", "xl")
    [first, second] = engine.generate([request(engine, "a red barn --seed 8", "xl"),
                                       request(engine, "a lighthouse --seed 3", "xl")])
    assert np.array_equal(alone, np.asarray(second.images[0]))


def test_only_requests_with_the_same_refiner_setting_batch_together(sdxl_store):
    engine = make_engine(sdxl_store)
    default, other, off = (request(engine, f"a fox --seed 1{flag}", "xl")
                           for flag in ("", " --refiner 0.5", " --refiner 0"))
    assert len({default.batch_key(), other.batch_key(), off.batch_key()}) == 3
    # Without a refiner the key is the one a request always had (queued jobs keep batching with it).
    assert off.batch_key()[1:] == request(engine, "a fox --seed 1", "plain-xl").batch_key()[1:]
    with pytest.raises(ValueError, match="share"):
        engine.generate([default, off])


def test_base_and_refiner_are_loaded_in_turn_when_the_budget_holds_only_one(sdxl_store):
    engine = make_engine(sdxl_store, memory_budget_gb=0.04)  # one tiny SDXL model (about 30 MB), not two
    image = generate(engine, "a lighthouse --seed 3", "xl")
    assert list(engine.loaded()) == ["refiner"]  # the base made way before the refiner loaded
    assert np.array_equal(image, generate(make_engine(sdxl_store), "a lighthouse --seed 3", "xl"))
    assert np.array_equal(image, generate(engine, "a lighthouse --seed 3", "xl"))
    assert engine.stats.model_loads == 4  # base, refiner, base, refiner


def test_png_parameters_name_the_refiner_and_its_switch(sdxl_store, tmp_path):
    engine = make_engine(sdxl_store)
    [result] = engine.generate([request(engine, "a lighthouse --seed 3", "xl")])
    saved = save_result(result, "imagebot test", tmp_path, "job")
    with Image.open(saved.images[0]) as png:
        text = png.text["parameters"]
    assert "Refiner: refiner, Refiner switch at: 0.75" in text
    params = read_png_parameters(saved.images[0])
    assert (params.refiner, params.refiner_switch) == ("refiner", 0.75)


def test_a_refiner_alone_is_refused_with_what_it_is_for(sdxl_store):
    registry = Registry(sdxl_store)
    registry.scan()
    assert registry.get("refiner").defaults.role == "refiner"
    with pytest.raises(UserError) as error:
        resolve(parse_prompt("a fox"), registry.ready_defaults(), "refiner", LIMITS)
    text = error.value.render(None)
    assert "'refiner' is a refiner" in text and "--model xl" in text
    (sdxl_store / "xl" / "variant.toml").write_text('kind = "pipeline"\n')
    registry.scan()
    with pytest.raises(UserError, match="refiner = "):
        resolve(parse_prompt("a fox"), registry.ready_defaults(), "refiner", LIMITS)


@pytest.mark.parametrize("text, message", [
    ("a fox --refiner 1", "0 (no refiner) up to 0.99"),
    ("a fox --refiner -0.2", "0 (no refiner) up to 0.99"),
    ("a fox --refiner lots", "refiner must be a number"),
])
def test_bad_refiner_values_say_what_is_allowed(text, message):
    with pytest.raises(UserError) as error:
        parse_prompt(text)
    assert message in error.value.render(None)


def test_refiner_flag_on_a_model_without_one_is_refused(sdxl_store):
    registry = Registry(sdxl_store)
    registry.scan()
    assert parse_prompt("a fox --refiner off").refiner == 0
    resolve(parse_prompt("a fox --refiner 0"), registry.ready_defaults(), "plain-xl", LIMITS)  # off is fine
    with pytest.raises(UserError, match="has no refiner"):
        resolve(parse_prompt("a fox --refiner 0.7"), registry.ready_defaults(), "plain-xl", LIMITS)


@pytest.mark.parametrize("toml, problem", [
    ('kind = "pipeline"\nrefiner = "missing"\n', "its refiner 'missing' is not in the model store"),
    ('kind = "pipeline"\nrefiner = "plain-xl"\n', "'plain-xl' is not a refiner model"),
])
def test_a_base_naming_a_bad_refiner_says_why(sdxl_store, toml, problem):
    (sdxl_store / "xl" / "variant.toml").write_text(toml)
    registry = Registry(sdxl_store)
    registry.scan()
    assert problem in registry.unavailable()["xl"]
    assert "plain-xl" in registry.ready_defaults()


@pytest.mark.parametrize("toml, problem", [
    ('kind = "pipeline"\nrefiner = "refiner"\nrefiner_switch = 1.5\n', "between 0 and 1"),
    ('kind = "pipeline"\nrefiner = "../x"\n', "name of another variant"),
])
def test_bad_refiner_settings_in_variant_toml(sdxl_store, toml, problem):
    (sdxl_store / "xl" / "variant.toml").write_text(toml)
    registry = Registry(sdxl_store)
    registry.scan()
    assert problem in registry.unavailable()["xl"]


# --------------------------------------------------------------------------- inpainting


def test_inpainting_model_is_detected_loaded_and_refused_for_text_to_image(store, tiny_inpaint_dir, tiny_pipeline_dir):
    add_pipeline_variant(store, "inpaint", tiny_inpaint_dir, 'kind = "pipeline"\n' + STEPS)
    add_pipeline_variant(store, "demo", tiny_pipeline_dir, 'kind = "pipeline"\n' + STEPS)
    engine = make_engine(store)
    spec = engine.registry.get("inpaint")
    assert spec.defaults.role == "inpainting"
    pipe = engine.residency.activate(spec)[0].pipe
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline" and pipe.unet.config.in_channels == 9
    with pytest.raises(UserError) as error:
        request(engine, "a fox", "inpaint")
    assert "'inpaint' is an inpainting model" in error.value.render(None) and "demo" in error.value.render(None)


# --------------------------------------------------------------------------- single files


@pytest.mark.parametrize("family, arch", [("sd2", "sd21-v"), ("sdxl", "sdxl")])
def test_single_file_is_detected_and_draws_the_same_pixels(store, request_fixture, family, arch):
    folder = request_fixture(family)
    add_pipeline_variant(store, "folder", folder, 'kind = "pipeline"\n' + STEPS)
    add_single_file_variant(store, "file", folder, STEPS)
    engine = make_engine(store)
    from bot.engine.single_file import detect_file_arch

    assert detect_file_arch(store / "file" / "model.safetensors") == arch
    from_file = generate(engine, "a lighthouse --seed 9 --no fog", "file")
    assert np.array_equal(from_file, generate(engine, "a lighthouse --seed 9 --no fog", "folder"))
    assert type(resident_pipe(engine, "file")) is type(resident_pipe(engine, "folder"))


def test_sdxl_and_refiner_as_single_files_make_the_refined_image(sdxl_store, tiny_sdxl_dir, tiny_sdxl_refiner_dir):
    add_single_file_variant(sdxl_store, "xl-file", tiny_sdxl_dir, 'refiner = "refiner-file"\nrefiner_switch = 0.75\n'
                            + STEPS)
    add_single_file_variant(sdxl_store, "refiner-file", tiny_sdxl_refiner_dir, STEPS)
    engine = make_engine(sdxl_store)
    refiner = engine.registry.get("refiner-file")
    assert refiner.defaults.role == "refiner"
    from_files = generate(engine, "a lighthouse --seed 3", "xl-file")
    assert type(resident_pipe(engine, "refiner-file")).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert np.array_equal(from_files, generate(engine, "a lighthouse --seed 3", "xl"))
    with pytest.raises(UserError, match="is a refiner"):
        request(engine, "a fox", "refiner-file")


def test_inpainting_single_file_loads_as_an_inpainting_model(store, tiny_inpaint_dir):
    add_pipeline_variant(store, "inpaint", tiny_inpaint_dir, 'kind = "pipeline"\n' + STEPS)
    add_single_file_variant(store, "inpaint-file", tiny_inpaint_dir, STEPS)
    engine = make_engine(store)
    spec = engine.registry.get("inpaint-file")
    assert spec.defaults.role == "inpainting"
    from_file = engine.residency.activate(spec)[0].pipe
    from_folder = engine.residency.activate(engine.registry.get("inpaint"))[0].pipe
    assert type(from_file).__name__ == "StableDiffusionInpaintPipeline"

    # Both redraw a masked region the same way (what an inpainting request will run).
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def inpaint(pipe):
        return np.asarray(pipe("a red apple", image=source, mask_image=mask, height=64, width=64,
                               num_inference_steps=3, generator=torch.Generator().manual_seed(5)).images[0])

    redrawn = inpaint(from_file)
    assert np.array_equal(redrawn, inpaint(from_folder))
    assert not np.array_equal(redrawn, np.asarray(source))


@pytest.fixture
def request_fixture(request):
    """The tiny pipeline folder of a family by name (fixtures are built only when used)."""
    return lambda family: request.getfixturevalue({"sd2": "tiny_sd2_dir", "sdxl": "tiny_sdxl_dir"}[family])


def test_refined_progress_never_goes_back_even_with_a_second_order_scheduler(sdxl_store):
    engine = make_engine(sdxl_store)
    seen = []
    generate(engine, "a fox --seed 2 --steps 3 --scheduler heun", "xl", on_progress=lambda p: seen.append((p.step, p.total)))
    steps = [step for step, _ in seen]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 3 and {t for _, t in seen} == {3}


def test_fast_mode_runs_the_base_alone_unless_the_refiner_is_asked_for():
    from bot.models.variant import VariantDefaults

    variants = {"xl": VariantDefaults(refiner="refiner", fast_steps=4),
                "refiner": VariantDefaults(role="refiner")}
    fast = resolve(parse_prompt("a fox --fast"), variants, "xl", LIMITS)
    assert (fast.refiner, fast.steps) == (None, 4)
    asked = resolve(parse_prompt("a fox --fast --refiner 0.7"), variants, "xl", LIMITS)
    assert (asked.refiner, asked.refiner_switch) == ("refiner", 0.7)
    assert resolve(parse_prompt("a fox"), variants, "xl", LIMITS).refiner == "refiner"


@pytest.mark.parametrize("scheduler", ["dpm++", "euler", "euler_trailing", "ddim"])
@pytest.mark.parametrize("steps", [2, 3, 4, 7, 30])
@pytest.mark.parametrize("switch", [0.01, 0.5, 0.8, 0.99])
def test_the_refiner_takes_over_after_int_steps_times_switch_and_runs_at_least_one_step(scheduler, steps, switch):
    """A1111 switches at int(steps * switch); each model runs at least one step. Counted as diffusers
    counts them: the base runs the timesteps at or above the cut, the refiner those below."""
    from diffusers import EulerDiscreteScheduler

    from bot.engine.generation import refiner_handoff
    from bot.engine.schedulers import make_scheduler

    config = dict(EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading").config)
    if scheduler == "euler_trailing":
        scheduler, config = "euler", {**config, "timestep_spacing": "trailing"}
    sampler = make_scheduler(scheduler, config)
    fraction = refiner_handoff(sampler, steps, switch)
    sampler.set_timesteps(steps)
    cutoff = int(round(1000 - fraction * 1000))
    timesteps = [float(t) for t in sampler.timesteps]
    base = sum(t >= cutoff for t in timesteps)
    assert base == min(steps - 1, max(1, int(steps * switch)))
    assert len(timesteps) - base >= 1


def test_a_one_step_request_runs_no_refiner_and_its_png_claims_none(sdxl_store):
    engine = make_engine(sdxl_store)
    req = request(engine, "a lighthouse --seed 3 --steps 1", "xl")
    assert (req.refiner, req.refiner_switch) == (None, None)
    [result] = engine.generate([req])
    assert len(result.images) == 1
    assert set(engine.loaded()) == {"xl"}  # the refiner never loaded
