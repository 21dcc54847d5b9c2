"""Inpainting: the mask's region is redrawn, the rest of the image is the source's; a variant's own
inpainting model (`inpaint = "NAME"`) is used when it names one, else the model inpaints itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from bot.config import EngineConfig, Limits
from bot.core.request import options_from_fields
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from tests.helpers.models import add_pipeline_variant
from tests.helpers.tiny import tiny_pipeline, tiny_unet

LIMITS = Limits(min_side=32)


@pytest.fixture(scope="session")
def tiny_inpainting_dir(tmp_path_factory) -> Path:
    """A tiny 9-channel inpainting pipeline (latents, mask and masked image in), random weights."""
    torch.manual_seed(1)
    parts = tiny_pipeline().components
    unet = tiny_unet()
    unet = type(unet).from_config({**unet.config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(**{**parts, "unet": unet})
    folder = tmp_path_factory.mktemp("inpainting") / "pipeline"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def source_and_mask(tmp_path) -> tuple[Path, Path, np.ndarray]:
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    source.paste((30, 60, 220), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # the middle is redrawn
    source.save(tmp_path / "source.png")
    mask.save(tmp_path / "mask.png")
    return tmp_path / "source.png", tmp_path / "mask.png", np.asarray(mask) > 0


def engine_on(models_dir: Path) -> Engine:
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def inpaint(engine: Engine, source: Path, mask: Path | None, model: str = "demo", **options):
    request = resolve(options_from_fields("a cat", seed=3, size="64x64", init_image=str(source), strength=0.8,
                                          mask_image=None if mask is None else str(mask), **options),
                      engine.registry.ready_defaults(), model, LIMITS)
    return np.asarray(engine.generate([request])[0].images[0], dtype=float)


def test_a_mask_changes_only_the_masked_region(models_dir, source_and_mask):
    source, mask, inside = source_and_mask
    engine = engine_on(models_dir)
    original = np.asarray(Image.open(source), dtype=float)
    result = inpaint(engine, source, mask)
    assert np.abs(result - original)[~inside].max() <= 2  # outside: the source, to rounding
    assert np.abs(result - original)[inside].mean() > 20  # inside: redrawn
    # Without the mask the same request changes the whole image (img2img).
    whole = inpaint(engine, source, None)
    assert np.abs(whole - original)[~inside].mean() > 20
    assert engine.stats.model_loads == 1  # inpainting shares the model's weights


def test_a_variant_uses_the_inpainting_model_it_names(models_dir, tiny_pipeline_dir, tiny_inpainting_dir,
                                                       source_and_mask):
    source, mask, inside = source_and_mask
    add_pipeline_variant(models_dir, "painter", tiny_pipeline_dir,
                         'kind = "pipeline"\ninpaint = "painter-inpainting"\n[defaults]\nsteps = 3\n')
    add_pipeline_variant(models_dir, "painter-inpainting", tiny_inpainting_dir)
    engine = engine_on(models_dir)
    assert engine.registry.get("painter").inpaint == "painter-inpainting"
    own = inpaint(engine, source, mask, model="painter")
    assert "painter-inpainting" in engine.loaded() and "painter" not in engine.loaded()
    plain = inpaint(engine, source, mask, model="demo")
    original = np.asarray(Image.open(source), dtype=float)
    assert np.abs(own - original)[~inside].max() <= 2
    assert np.abs(own - plain)[inside].mean() > 5  # another model drew the middle
    # Plain img2img on that variant still runs the variant itself.
    inpaint(engine, source, None, model="painter")
    assert "painter" in engine.loaded()
