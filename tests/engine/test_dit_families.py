"""The diffusion-transformer families end to end, through the real model store and engine: SD 3.5,
FLUX.1 dev and schnell, FLUX.2 klein, Z-Image and Qwen-Image as tiny random-weight pipeline
folders (64 px, 2 steps), a FLUX.1 transformer as one original-layout file and as GGUF, and what
each family refuses at submit."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from bot.outputs import read_png_parameters, save_result
from tests.helpers.tiny_dit import save_tiny_dit, tiny_flux2_klein_pipeline

LIMITS = Limits(min_side=32)
SMALL = '[defaults]\nwidth = 64\nheight = 64\nsteps = 2\n'
FAMILY_OF = {"sd3": "sd3", "flux1-dev": "flux1-dev", "flux1-schnell": "flux1-schnell",
             "flux2-klein": "flux2-klein", "zimage": "zimage", "qwenimage": "qwenimage"}


@pytest.fixture(scope="module")
def tiny_dit_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-dit")
    return {name: save_tiny_dit(name, root / name) for name in FAMILY_OF}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dit_dirs) -> Path:
    """One variant per family, named after it, plus 'flux-true-cfg' (FLUX.1 dev with true CFG) and
    'klein-base' (FLUX.2 klein's undistilled release)."""
    import shutil

    models = tmp_path_factory.mktemp("models")
    for name, source in tiny_dit_dirs.items():
        shutil.copytree(source, models / name)
        (models / name / "variant.toml").write_text(SMALL, encoding="utf-8")
    tiny_flux2_klein_pipeline(distilled=False).save_pretrained(models / "klein-base")
    (models / "klein-base" / "variant.toml").write_text(SMALL, encoding="utf-8")
    shutil.copytree(tiny_dit_dirs["flux1-dev"], models / "flux-true-cfg")
    (models / "flux-true-cfg" / "variant.toml").write_text(SMALL + "true_cfg = 3\n", encoding="utf-8")
    return models


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    registry = Registry(store, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", threads=1), allow_download=False)


def request(engine: Engine, text: str, model: str):
    registry = engine.registry
    registry.scan_if_due()
    return resolve(parse_prompt(text), registry.ready_defaults(), model, LIMITS, unavailable=registry.unavailable())


def draw(engine: Engine, text: str, model: str) -> np.ndarray:
    [result] = engine.generate([request(engine, text, model)])
    [image] = result.images
    return np.asarray(image)


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_each_family_is_detected_and_draws(engine, name):
    spec = engine.registry.get(name)
    assert spec.defaults.family.name == FAMILY_OF[name]
    first = draw(engine, "a red circle on a blue background --seed 3", name)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, draw(engine, "a red circle on a blue background --seed 3", name))
    assert not np.array_equal(first, draw(engine, "a red circle on a blue background --seed 4", name))


def test_family_defaults_fill_what_the_variant_leaves_out(engine):
    defaults = engine.registry.get("flux1-dev").defaults
    assert (defaults.guidance, defaults.scheduler) == (3.5, "euler")
    assert engine.registry.get("flux1-schnell").defaults.guidance == 0.0
    assert engine.registry.get("zimage").defaults.guidance == 0.0
    assert engine.registry.get("qwenimage").defaults.guidance == 4.0


@pytest.mark.parametrize("text, model, key", [
    ("a fox --no blurry", "flux1-dev", "family_no_negative"),
    ("a fox --no blurry", "flux1-schnell", "family_no_negative"),
    ("a fox --no blurry", "flux2-klein", "family_no_negative_ever"),  # no true CFG to switch on
    ("a (red:1.4) fox", "flux1-dev", "family_no_weights"),
    ("a (red:1.4) fox", "sd3", "family_no_weights"),
    ("a fox --sampler dpm++", "flux1-dev", "family_scheduler"),
    ("a fox --sampler euler_a", "qwenimage", "family_scheduler"),
    ("a fox --cfg 5", "flux1-schnell", "family_no_guidance"),
    ("a fox --no blurry", "zimage", "negative_needs_cfg"),  # Turbo draws without CFG unless --cfg says
])
def test_what_a_family_cannot_do_is_refused_with_its_name(engine, text, model, key):
    with pytest.raises(UserError) as refused:
        request(engine, text, model)
    assert refused.value.key == key
    label = engine.registry.get(model).defaults.family.label
    assert label in str(refused.value) or key == "negative_needs_cfg"


def test_plain_brackets_are_text_for_an_encoder_without_weights(engine):
    assert request(engine, "a fox (in the snow)", "flux1-dev").prompt == "a fox (in the snow)"


def test_sizes_snap_to_the_family_grid(engine):
    flux = request(engine, "a fox --size 100x76", "flux1-dev")
    assert (flux.width, flux.height) == (96, 80)  # multiples of 16: 8 px latents in 2x2 patches
    wide = request(engine, "a fox --ar 16:9", "flux1-dev")
    assert wide.width % 16 == 0 and wide.height % 16 == 0


def test_a_negative_prompt_works_where_the_family_guides_with_one(engine):
    plain = draw(engine, "a red circle --seed 5 --cfg 4", "zimage")
    negated = draw(engine, "a red circle --seed 5 --cfg 4 --no blue", "zimage")
    assert not np.array_equal(plain, negated)
    qwen = request(engine, "a red circle --no blue", "qwenimage")
    assert qwen.negative_prompt == "blue"


def test_true_cfg_gives_flux_dev_a_negative_prompt(engine):
    req = request(engine, "a red circle --seed 5 --no blue", "flux-true-cfg")
    assert req.true_cfg == 3.0
    [result] = engine.generate([req])
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("name", ["sd3", "flux1-dev", "zimage", "qwenimage"])
def test_image_to_image_and_inpainting(engine, name, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    with Image.open(mask) as black:
        black.paste(255, (0, 0, 32, 64))
        black.save(mask)
    changed = request(engine, "a blue square --seed 1 --steps 4", name)
    changed = type(changed)(**{**changed.to_dict(), "init_image": str(source), "strength": 0.5})
    [result] = engine.generate([changed])
    assert result.images[0].size == (64, 64)
    masked = type(changed)(**{**changed.to_dict(), "mask_image": str(mask)})
    [painted] = engine.generate([masked])
    pixels = np.asarray(painted.images[0]).astype(int)
    assert (pixels[:, 40:] == (200, 30, 30)).all()  # outside the mask the source stays


def test_flux2_klein_refuses_image_to_image(engine, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64)).save(source)
    options = replace(parse_prompt("a fox"), init_image=str(source))
    registry = engine.registry
    with pytest.raises(UserError) as refused:
        resolve(options, registry.ready_defaults(), "flux2-klein", LIMITS)
    assert refused.value.key == "family_no_img2img" and "FLUX.2 [klein]" in str(refused.value)


def test_png_parameters_say_what_forge_writes_for_flux(engine, tmp_path):
    [result] = engine.generate([request(engine, "a red circle --seed 2 --cfg 2.5", "flux1-dev")])
    [path] = save_result(result, "imagebot test", tmp_path, "flux").images
    with Image.open(path) as png:
        text = png.text["parameters"]
    assert "Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 2" in text
    read = read_png_parameters(path)
    assert (read.guidance, read.distilled_guidance) == (1.0, 2.5)
    [result] = engine.generate([request(engine, "a red circle --seed 2 --cfg 3 --no blue", "qwenimage")])
    [path] = save_result(result, "imagebot test", tmp_path, "qwen").images
    with Image.open(path) as png:
        text = png.text["parameters"]
    assert "CFG scale: 3," in text and "Distilled" not in text


def test_flux2_klein_inpaints_though_it_has_no_image_to_image(engine, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    mask = tmp_path / "mask.png"
    black = Image.new("L", (64, 64), 0)
    black.paste(255, (0, 0, 32, 64))
    black.save(mask)
    options = replace(parse_prompt("a blue square --seed 1 --steps 4"), init_image=str(source), mask_image=str(mask))
    [painted] = engine.generate([resolve(options, engine.registry.ready_defaults(), "flux2-klein", LIMITS)])
    pixels = np.asarray(painted.images[0]).astype(int)
    assert (pixels[:, 40:] == (200, 30, 30)).all()  # outside the mask the source stays
    assert np.abs(pixels[:, :24] - (200, 30, 30)).mean() > 10  # inside it is redrawn


def test_flux2_klein_base_guides_with_a_negative_prompt(engine):
    assert engine.registry.get("klein-base").defaults.family.name == "flux2-klein-base"
    plain = draw(engine, "a red circle --seed 2 --cfg 4", "klein-base")
    negated = draw(engine, "a red circle --seed 2 --cfg 4 --no blue green", "klein-base")
    assert not np.array_equal(plain, negated)  # the negative's own embeddings, not the empty prompt's
