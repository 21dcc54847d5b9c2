"""Fast mode (an LCM-LoRA named by a variant) and upscaling (an ESRGAN-family network, tiled img2img)
through the engine, on tiny random-weight models loaded through the real registry and diffusers."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image

from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import RequestOptions, parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.engine.upscale import UpscalerError, blend_tiles, load_upscaler, run_upscaler, tile_boxes
from bot.models.registry import Registry
from bot.models.variant import VariantDefaults
from tests.helpers.models import add_pipeline_variant
from tests.helpers.tiny import save_tiny_lora, save_tiny_upscaler

LIMITS = Limits(min_side=32)


@pytest.fixture
def fast_store(models_dir, tiny_pipeline_dir) -> Path:
    """'demo' plus 'quick' (the same weights naming the LCM-LoRA 'lcm') and the LoRA itself."""
    save_tiny_lora(tiny_pipeline_dir, models_dir / "lcm", seed=7)
    (models_dir / "lcm" / "variant.toml").write_text(
        'kind = "lora"\nbase = "demo"\n[defaults]\nsteps = 4\nguidance = 1.0\nscheduler = "lcm"\n')
    add_pipeline_variant(models_dir, "quick", tiny_pipeline_dir,
                         'kind = "pipeline"\nfast_lora = "lcm"\n[defaults]\nsteps = 3\n')
    return models_dir


def make_engine(models_dir: Path, **options) -> Engine:
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", **options), allow_download=False)


def resolved(engine: Engine, options: RequestOptions, limits: Limits = LIMITS):
    return resolve(options, engine.registry.ready_defaults(), "demo", limits,
                   unavailable=engine.registry.unavailable())


def from_text(engine: Engine, text: str, model: str = "quick"):
    options = parse_prompt(f"{text} --model {model}")
    return resolved(engine, options)


def test_fast_mode_runs_the_lcm_lora_with_the_lcm_scheduler_in_few_steps(fast_store, tiny_pipeline_dir):
    engine = make_engine(fast_store)
    request = from_text(engine, "a red fox --fast --seed 5")
    assert (request.fast, request.steps, request.guidance, request.scheduler) == (True, 6, 1.5, "lcm")
    [result] = engine.generate([request])
    assert result.fast_lora == "lcm"

    # The same as diffusers draws with the LoRA attached and the LCM scheduler, by hand.
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), local_files_only=True)
    pipe.load_lora_weights(str(fast_store / "lcm"), adapter_name="lcm")
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red fox", num_inference_steps=6, guidance_scale=1.5, width=64, height=64,
                    generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(expected, dtype=int)).max() <= 1

    # Without --fast, the same settings draw without the LoRA: another image.
    [plain] = engine.generate([from_text(engine, "a red fox --seed 5 --steps 6 --cfg 1.5 --scheduler lcm")])
    assert plain.fast_lora is None
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))


def test_after_a_fast_request_the_model_draws_as_before(fast_store):
    engine = make_engine(fast_store)
    before = engine.generate([from_text(engine, "a boat --seed 2")])[0].images[0]
    engine.generate([from_text(engine, "a boat --seed 2 --fast")])
    after = engine.generate([from_text(engine, "a boat --seed 2")])[0].images[0]
    assert np.array_equal(np.asarray(before), np.asarray(after))


def test_fast_requests_batch_only_with_fast_requests(fast_store):
    engine = make_engine(fast_store)
    fast, slow = from_text(engine, "a cat --fast --seed 1"), from_text(engine, "a cat --seed 1 --steps 6 --cfg 1.5 "
                                                                             "--scheduler lcm")
    assert fast.batch_key() != slow.batch_key()
    with pytest.raises(ValueError):
        engine.generate([fast, slow])


def test_an_lcm_model_without_a_lora_has_a_fast_mode_of_its_own(models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "turbo", tiny_pipeline_dir,
                         'kind = "pipeline"\n[defaults]\nfast_steps = 4\nfast_guidance = 1.0\n')
    engine = make_engine(models_dir)
    request = from_text(engine, "a kite --fast --seed 9", model="turbo")
    assert (request.steps, request.guidance, request.scheduler) == (4, 1.0, "lcm")
    [result] = engine.generate([request])
    assert result.fast_lora is None and result.images[0].size == (64, 64)


def test_fast_mode_refusals_say_what_is_allowed(fast_store):
    engine = make_engine(fast_store)
    with pytest.raises(UserError, match="'demo' has no fast mode.*one: quick\."):
        from_text(engine, "a cat --fast", model="demo")
    with pytest.raises(UserError, match="steps must be 1-8"):
        from_text(engine, "a cat --fast --steps 20")
    with pytest.raises(UserError, match="guidance must be 0-2"):
        from_text(engine, "a cat --fast --cfg 7")
    with pytest.raises(UserError, match="--fast takes no value"):
        from_text(engine, "a cat --fast please")


def test_a_fast_lora_that_is_not_a_lora_breaks_only_its_variant(models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "odd", tiny_pipeline_dir, 'kind = "pipeline"\nfast_lora = "demo"\n')
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    assert "is a pipeline, not a LoRA" in registry.unavailable()["odd"]
    assert "demo" in registry.ready_defaults()


# --- upscaling -------------------------------------------------------------------------------


def noise_image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def add_upscaler(models_dir: Path, name: str, file: str, toml_extra: str = "", arch: str = "esrgan") -> None:
    save_tiny_upscaler(models_dir / name / file, arch=arch)
    (models_dir / name / "variant.toml").write_text(f'kind = "upscaler"\nfile = "{file}"\n{toml_extra}')


def test_upscaler_variants_load_safetensors_and_refuse_pickles_unless_allowed(models_dir):
    add_upscaler(models_dir, "esr", "tiny-2x.safetensors")
    add_upscaler(models_dir, "pickled", "tiny-2x.pth")
    add_upscaler(models_dir, "trusted", "tiny-2x.pth", "allow_pickle = true\n")
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    unavailable = registry.unavailable()
    assert "pickled weights" in unavailable["pickled"] and "allow_pickle = true" in unavailable["pickled"]
    assert "it is an upscaler" in unavailable["esr"]  # not a model to draw with
    assert set(registry.ready_defaults()) == {"demo"}
    for name in ("esr", "trusted"):
        upscaler = load_upscaler(registry.get(name), torch.device("cpu"), torch.float32)
        assert upscaler.scale == 2


def test_an_upscaler_without_spandrel_installed_says_what_to_install(models_dir, monkeypatch):
    """spandrel is an extra (it needs torchvision); without it the message names the extra."""
    add_upscaler(models_dir, "esr", "tiny-2x.safetensors")
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    monkeypatch.setitem(sys.modules, "spandrel", None)  # what an environment without it raises
    with pytest.raises(UpscalerError, match=r'needs spandrel.*pip install -e "\.\[upscale\]"'):
        load_upscaler(registry.get("esr"), torch.device("cpu"), torch.float32)


def test_the_upscaler_runs_in_tiles_without_seams(models_dir):
    add_upscaler(models_dir, "esr", "tiny-2x.safetensors")
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    upscaler = load_upscaler(registry.get("esr"), torch.device("cpu"), torch.float32)
    image = noise_image(320)  # two tiles a side
    tiled = np.asarray(run_upscaler(upscaler, image, (640, 640)), dtype=float)
    with torch.inference_mode():
        whole = upscaler.model(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None])
    whole = (whole[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    assert tiled.std() > 1  # the random network does not draw a flat image
    assert np.abs(tiled - whole).max() <= 2


def test_tiles_cover_the_image_at_full_size_and_blend_back():
    boxes = tile_boxes(128, 96, 64, 64, 16)
    assert {(b - t, r - l) for t, l, b, r in boxes} == {(64, 64)}
    covered = np.zeros((96, 128), bool)
    for t, l, b, r in boxes:
        covered[t:b, l:r] = True
    assert covered.all()
    image = noise_image(128).crop((0, 0, 128, 96))
    tiles = [image.crop((l, t, r, b)) for t, l, b, r in boxes]
    assert np.array_equal(np.asarray(blend_tiles(tiles, boxes, (128, 96), 16)), np.asarray(image))


def upscale_request(engine, source: Path, size: int, upscaler: str | None, strength: float, limits=LIMITS):
    return resolved(engine, RequestOptions(prompt="a red fox", model="demo", seed=4, width=size, height=size,
                                           init_image=str(source), upscale=True, upscaler=upscaler,
                                           strength=strength), limits)


def test_upscale_without_an_upscaler_redraws_the_resized_image_in_tiles(models_dir, tmp_path):
    engine = make_engine(models_dir)
    source = tmp_path / "source.png"
    noise_image(64).save(source)
    request = upscale_request(engine, source, 128, None, 0.35)
    [result] = engine.generate([request])
    image = np.asarray(result.images[0], dtype=float)
    resized = np.asarray(Image.open(source).resize((128, 128), Image.Resampling.LANCZOS), dtype=float)
    assert image.shape == (128, 128, 3)
    assert engine.stats.images == 9  # 3 x 3 tiles of the model's native 64 px
    assert np.abs(image - resized).mean() > 1  # redrawn (a random-weight model keeps little of the picture)
    [again] = engine.generate([request])
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_upscale_with_an_upscaler_then_a_tiled_img2img_pass(models_dir, tmp_path):
    add_upscaler(models_dir, "esr", "tiny-2x.safetensors")
    engine = make_engine(models_dir)
    engine.registry.scan()
    source = tmp_path / "source.png"
    noise_image(64).save(source)
    [plain] = engine.generate([upscale_request(engine, source, 128, "esr", 0)])
    upscaler = load_upscaler(engine.registry.get("esr"), torch.device("cpu"), torch.float32)
    with Image.open(source) as image:
        expected = run_upscaler(upscaler, image, (128, 128))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(expected))  # strength 0: the network only
    assert engine.stats.images == 0
    [detailed] = engine.generate([upscale_request(engine, source, 128, "esr", 0.2)])
    assert engine.stats.images == 9
    assert not np.array_equal(np.asarray(detailed.images[0]), np.asarray(plain.images[0]))


def test_an_upscale_of_a_768_px_image_runs_the_upscaler_at_full_size(models_dir, tmp_path):
    add_upscaler(models_dir, "compact", "compact-2x.safetensors", arch="compact")
    engine = make_engine(models_dir)
    source = tmp_path / "source.png"
    noise_image(768).save(source)
    request = upscale_request(engine, source, 1536, "compact", 0, Limits(min_side=32))
    [result] = engine.generate([request])
    assert result.images[0].size == (1536, 1536)


def test_an_upscale_of_a_768_px_image_without_an_upscaler_redraws_it_in_native_tiles(models_dir, tmp_path,
                                                                                    tiny_pipeline_dir):
    """No upscaler configured: 768 px becomes 1536 px by a resize and a tiled img2img pass, each tile
    at the model's native size (here 512), so memory stays that of one native-size image."""
    add_pipeline_variant(models_dir, "wide", tiny_pipeline_dir,
                         'kind = "pipeline"\n[defaults]\nwidth = 512\nheight = 512\nsteps = 2\n')
    engine = make_engine(models_dir)
    source = tmp_path / "source.png"
    noise_image(768).save(source)
    request = resolve(RequestOptions(prompt="a red fox", model="wide", seed=4, width=1536, height=1536,
                                     init_image=str(source), upscale=True, strength=0.35),
                      engine.registry.ready_defaults(), "wide", Limits(min_side=32),
                      unavailable=engine.registry.unavailable())
    [result] = engine.generate([request])
    assert result.images[0].size == (1536, 1536)
    assert engine.stats.images == 16  # 4 x 4 tiles of 512 px, a quarter of a tile overlapping
    resized = np.asarray(Image.open(source).resize((1536, 1536), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(result.images[0], dtype=float) - resized).mean() > 1  # redrawn, not only resized


def test_upscale_sizes_have_their_own_limit():
    variants = {"demo": VariantDefaults(width=768, height=768)}
    limits = Limits(min_side=32)  # max_side 1024, max_upscaled_side 2048
    options = RequestOptions(prompt="x", width=1536, height=1536, init_image="a.png", upscale=True, strength=0.2)
    assert resolve(options, variants, "demo", limits).width == 1536
    with pytest.raises(UserError, match="side_out_of_range|must be 32-1024"):
        resolve(RequestOptions(prompt="x", width=1536, height=1536), variants, "demo", limits)
    with pytest.raises(UserError, match="larger than 2048 px a side"):
        resolve(RequestOptions(prompt="x", width=3072, height=3072, init_image="a.png", upscale=True),
                variants, "demo", limits)
