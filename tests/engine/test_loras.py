"""LoRAs per request: <lora:NAME:W> tags and --lora flags, several at once, on the shipped demo model."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bot.config import EngineConfig, Limits
from bot.core.errors import UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from tests.helpers.models import add_pipeline_variant
from tests.helpers.tiny import save_tiny_lora

MODELS = Path(__file__).resolve().parents[2] / "models"
HEART = "a red zwx heart on a blue background"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_pipeline_dir) -> Path:
    """The shipped demo and demo-finetuned, a second LoRA over demo, and a LoRA for another model."""
    models = tmp_path_factory.mktemp("loras") / "models"
    models.mkdir()
    for name in ("demo", "demo-finetuned"):
        shutil.copytree(MODELS / name, models / name)
    save_tiny_lora(MODELS / "demo", models / "speckles", seed=3)
    (models / "speckles" / "variant.toml").write_text('kind = "lora"\nbase = "demo"\n')
    add_pipeline_variant(models, "other", tiny_pipeline_dir)
    save_tiny_lora(tiny_pipeline_dir, models / "other-style")
    (models / "other-style" / "variant.toml").write_text('kind = "lora"\nbase = "other"\n')
    return models


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    registry = Registry(store, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def request(engine: Engine, text: str, model: str = "demo", limits: Limits = Limits(), seed: int = 4):
    registry = engine.registry
    return resolve(parse_prompt(f"{text} --seed {seed} --steps 6"), registry.ready_defaults(), model, limits,
                   lora_bases=registry.lora_bases())


def draw(engine: Engine, text: str, model: str = "demo", seed: int = 4) -> np.ndarray:
    [result] = engine.generate([request(engine, text, model, seed=seed)])
    return np.asarray(result.images[0]).astype(np.float64)


def differ(a, b) -> float:
    return float(np.abs(a - b).mean())


def test_a_lora_tag_on_demo_draws_what_the_lora_variant_draws(engine):
    variant = draw(engine, HEART, model="demo-finetuned")
    tagged = draw(engine, f"{HEART} <lora:demo-finetuned:1>")
    flagged = draw(engine, f"{HEART} --lora demo-finetuned:1")
    plain = draw(engine, HEART)
    assert np.array_equal(variant, tagged) and np.array_equal(variant, flagged)
    assert differ(plain, variant) > 5


def test_a_weight_between_draws_between(engine):
    # A light weight moves the picture a little towards the LoRA's. (At 0.5 this LoRA already draws
    # its heart; and seed 4 sits on an edge where even a weight of 0.1 flips the whole picture.)
    plain, full = draw(engine, HEART, seed=1), draw(engine, f"{HEART} <lora:demo-finetuned:1>", seed=1)
    light = draw(engine, f"{HEART} <lora:demo-finetuned:0.2>", seed=1)
    assert 0 < differ(plain, light) < differ(light, full) < differ(plain, full)


def test_two_loras_combine(engine):
    one = draw(engine, f"{HEART} <lora:demo-finetuned:1>")
    other = draw(engine, f"{HEART} <lora:speckles:1>")
    both = draw(engine, f"{HEART} <lora:demo-finetuned:1> --lora speckles:1")
    assert differ(both, one) > 1 and differ(both, other) > 1
    assert sorted(engine.loaded()["demo"]) == ["demo-finetuned", "speckles"]


def test_switching_back_to_a_loaded_lora_loads_nothing(engine):
    draw(engine, f"{HEART} <lora:demo-finetuned:1>")
    draw(engine, f"{HEART} <lora:speckles:1>")
    loads = engine.stats.model_loads
    again = draw(engine, f"{HEART} <lora:demo-finetuned:1>")
    assert engine.stats.model_loads == loads
    assert np.array_equal(again, draw(engine, HEART, model="demo-finetuned"))


def test_loras_for_another_base_unknown_ones_and_too_many_are_refused(engine):
    with pytest.raises(UserError, match="made for other, not for demo") as refused:
        request(engine, f"{HEART} <lora:other-style:1>")
    assert "demo-finetuned, speckles" in str(refused.value)
    with pytest.raises(UserError, match="no LoRA 'nope'"):
        request(engine, f"{HEART} --lora nope:1")
    with pytest.raises(UserError, match="full model, not a LoRA"):
        request(engine, f"{HEART} <lora:other:1>")
    with pytest.raises(UserError, match="at most 1"):
        request(engine, f"{HEART} <lora:demo-finetuned:1> <lora:speckles:1>", limits=Limits(max_loras=1))
    with pytest.raises(UserError, match="not a number"):
        request(engine, f"{HEART} <lora:demo-finetuned:lots>")
    # A LoRA variant as the model takes more LoRAs made for its base.
    assert request(engine, HEART + " <lora:speckles:0.5>", model="demo-finetuned").loras == (("speckles", 0.5),)


def test_the_png_lists_the_loras_as_automatic1111_does(engine, tmp_path):
    from bot.outputs import read_png_parameters, save_result

    req = request(engine, f"{HEART} <lora:demo-finetuned:0.8> --lora speckles:0.5")
    [result] = engine.generate([req])
    params = read_png_parameters(save_result(result, "imagebot test", tmp_path, "lora").images[0])
    fingerprints = dict(result.lora_fingerprints)
    assert params.lora_hashes == (f"demo-finetuned: {fingerprints['demo-finetuned'][:12]}, "
                                  f"speckles: {fingerprints['speckles'][:12]}")
    # The prompt as typed, plus a tag for the LoRA given as a flag.
    assert params.prompt == f"{HEART} <lora:demo-finetuned:0.8> <lora:speckles:0.5>"


def test_batches_only_share_a_lora_set(engine):
    with_lora = request(engine, f"{HEART} <lora:demo-finetuned:1>")
    without = request(engine, HEART)
    assert with_lora.batch_key() != without.batch_key()
    with pytest.raises(ValueError):
        engine.generate([with_lora, without])
