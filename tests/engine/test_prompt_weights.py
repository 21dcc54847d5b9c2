"""Prompt weights and long prompts on the shipped demo model, encoded by compel through the engine."""

from pathlib import Path

import numpy as np
import pytest

from bot.config import EngineConfig, Limits
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry

MODELS = Path(__file__).resolve().parents[2] / "models"
SCENE = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine() -> Engine:
    registry = Registry(MODELS, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def draw(engine: Engine, text: str) -> np.ndarray:
    registry = engine.registry
    request = resolve(parse_prompt(f"{text} --seed 5 --steps 6"), registry.ready_defaults(), "demo", Limits(),
                      lora_bases=registry.lora_bases())
    [result] = engine.generate([request])
    return np.asarray(result.images[0]).astype(np.float64)


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_a_weight_changes_the_image_and_a_weight_of_one_does_not(engine):
    plain = draw(engine, SCENE)
    assert differ(plain, draw(engine, "a (red:1.5) circle on a blue background")) > 1
    assert differ(plain, draw(engine, "a (red) circle on a blue background")) > 0
    assert differ(plain, draw(engine, "a [red] circle on a blue background")) > 0
    # Weight 1 through compel is the plain prompt through the pipeline, pixel for pixel.
    assert differ(plain, draw(engine, "a (red:1) circle on a blue background")) < 0.5


def test_stronger_weights_move_the_image_further(engine):
    plain = draw(engine, SCENE)
    near = differ(plain, draw(engine, "a red circle on a (blue:1.2) background"))
    far = differ(plain, draw(engine, "a red circle on a (blue:2) background"))
    assert 0 < near < far


def test_the_negative_prompt_takes_weights_too(engine):
    plain = draw(engine, f"{SCENE} --no green")
    assert differ(plain, draw(engine, f"{SCENE} --no (green:2)")) > 0


def test_a_word_past_the_77th_token_still_changes_the_image(engine):
    long = SCENE + ", and so on" * 30  # about 100 tokens: past what CLIP reads at once
    tokenizer = engine.residency.resident_for(engine.registry.get("demo")).pipe.tokenizer
    assert len(tokenizer.tokenize(long)) > 77
    assert differ(draw(engine, long), draw(engine, long + ", green")) > 0


def test_the_png_keeps_the_prompt_as_typed(engine, tmp_path):
    from bot.outputs import read_png_parameters, save_result

    registry = engine.registry
    typed = "a (red:1.5) circle on a [blue] background"
    request = resolve(parse_prompt(f"{typed} --seed 1 --steps 2"), registry.ready_defaults(), "demo", Limits())
    [result] = engine.generate([request])
    saved = save_result(result, "imagebot test", tmp_path, "weights")
    assert read_png_parameters(saved.images[0]).prompt == typed


# --- the other families: SD 2.x (one OpenCLIP encoder), SDXL (two encoders and a pooled embedding),
# SDXL with its refiner (only the second encoder). Tiny random-weight models.


@pytest.fixture(scope="module")
def family_engine(tmp_path_factory, tiny_sd2_dir, tiny_sdxl_dir, tiny_sdxl_refiner_dir) -> Engine:
    from tests.helpers.models import add_pipeline_variant

    store = tmp_path_factory.mktemp("families") / "models"
    store.mkdir()
    steps = '[defaults]\nsteps = 3\nwidth = 64\nheight = 64\n'
    add_pipeline_variant(store, "sd2", tiny_sd2_dir, 'kind = "pipeline"\n' + steps)
    add_pipeline_variant(store, "xl", tiny_sdxl_dir, 'kind = "pipeline"\n' + steps)
    add_pipeline_variant(store, "xl-refined", tiny_sdxl_dir,
                         'kind = "pipeline"\nrefiner = "refiner"\nrefiner_switch = 0.6\n' + steps)
    add_pipeline_variant(store, "refiner", tiny_sdxl_refiner_dir, 'kind = "pipeline"\n' + steps)
    registry = Registry(store, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def family_draw(engine: Engine, text: str, model: str) -> np.ndarray:
    registry = engine.registry
    request = resolve(parse_prompt(f"{text} --seed 2"), registry.ready_defaults(), model, Limits())
    [result] = engine.generate([request])
    return np.asarray(result.images[0]).astype(np.float64)


@pytest.mark.parametrize("model", ["sd2", "xl", "xl-refined"])
def test_weights_and_long_prompts_on_sd2_and_sdxl(family_engine, model):
    plain = family_draw(family_engine, "a red circle --no (blur:1.0)", model)
    assert differ(plain, family_draw(family_engine, "a (red:1) circle --no blur", model)) < 0.5
    assert differ(plain, family_draw(family_engine, "a (red:1.8) circle --no blur", model)) > 0
    assert differ(plain, family_draw(family_engine, "a red circle --no (blur:1.8)", model)) > 0
    long = "a red circle" + ", and so on" * 30
    assert differ(family_draw(family_engine, long, model), family_draw(family_engine, long + ", green", model)) > 0


# Line breaks in a prompt become spaces when the request is parsed (bot/core/request.py), so they
# cannot forge lines of the PNG's `parameters` text; and a tab is kept as typed. \x1c-\x1e are
# control characters, spaces before that already.
@pytest.mark.parametrize("br", ["\n", "\r\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\t"])
@pytest.mark.parametrize("pad_token", [None, "!"])  # the tokenizer of SD 1.x, and SDXL's second one
def test_a_line_break_or_a_tab_is_tokenized_as_a_space(br, pad_token):
    from tests.helpers.tiny import clip_tokenizer, clip_tokenizer_with_pad

    tokenizer = clip_tokenizer() if pad_token is None else clip_tokenizer_with_pad(pad_token)
    assert tokenizer(f"a red{br}circle").input_ids == tokenizer("a red circle").input_ids
    assert tokenizer(f"a red {br} circle{br}").input_ids == tokenizer("a red circle").input_ids


def test_the_negative_prompt_label_is_tokenized_the_same_in_either_case():
    # The PNG's `parameters` text writes a stored prompt's "Negative prompt:" with a small "n" (bot/outputs.py).
    from tests.helpers.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()
    assert tokenizer("a Negative prompt: x").input_ids == tokenizer("a negative prompt: x").input_ids
