"""The models shipped in models/: they load from a fresh checkout and draw what they are asked.

`demo` was trained from scratch on training/shapes.py (training/configs/demo.toml) and
`demo-finetuned` is a DreamBooth LoRA over it that knows one more shape, the "zwx heart"
(training/configs/demo-finetuned.toml). These tests use the committed files themselves.
"""

from pathlib import Path

import pytest

from bot.config import EngineConfig, load_config
from bot.core.request import GenerationRequest
from bot.engine.engine import Engine
from bot.models.registry import Registry
from training import shapes

pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def engine() -> Engine:
    registry = Registry(MODELS, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu"), allow_download=False)


def request(engine: Engine, model: str, prompt: str, seed: int) -> GenerationRequest:
    d = engine.registry.ready_defaults()[model]
    return GenerationRequest(prompt=prompt, negative_prompt=d.negative_prompt, model=model, seed=seed,
                             steps=d.steps, guidance=d.guidance, width=d.width, height=d.height,
                             scheduler=d.scheduler)


SHIPPED = ("demo", "demo-finetuned")  # what the repository ships; users add their own models beside them


def test_shipped_models_are_small_float16_and_the_default(engine):
    files = [f for name in SHIPPED for f in (MODELS / name).rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25_000_000  # 25 MB in all
    demo, finetuned = engine.registry.entry("demo"), engine.registry.entry("demo-finetuned")
    assert demo.ready and demo.spec.kind == "pipeline"
    assert finetuned.ready and finetuned.spec.kind == "lora" and finetuned.spec.base == "demo"
    from safetensors import safe_open

    for weights in (w for name in SHIPPED for w in (MODELS / name).rglob("*.safetensors")):
        with safe_open(str(weights), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}, weights
    defaults = engine.registry.ready_defaults()["demo"]
    assert (defaults.width, defaults.height) == (32, 32)
    assert load_config(REPO / "config.toml").models.default == "demo"


def test_demo_draws_what_it_is_asked(engine):
    """Held-out prompts of its vocabulary (seeds never used in training), judged from the pixels."""
    prompts = shapes.held_out_prompts(12, seed=5, modifiers=False)
    results = engine.generate([request(engine, "demo", p.prompt, p.seed) for p in prompts])
    verdicts = [shapes.judge(r.images[0], p.spec) for r, p in zip(results, prompts)]
    score = shapes.score(verdicts)
    # Over 100 prompts the shipped model's scores are in docs/training.md; 12 prompts leave some slack.
    assert score["colours_ok"] >= 10 / 12, verdicts
    assert score["shape_kind_ok"] >= 10 / 12, verdicts


def test_demo_draws_sizes_and_places(engine):
    """Held-out prompts with size and place words ("a small red triangle at the top on a blue
    background"), some in colour pairs no training image showed."""
    prompts = [p for p in shapes.held_out_prompts(24, seed=7) if p.spec.size or p.spec.position][:12]
    results = engine.generate([request(engine, "demo", p.prompt, p.seed) for p in prompts])
    verdicts = [shapes.judge(r.images[0], p.spec) for r, p in zip(results, prompts)]
    score = shapes.score(verdicts)
    assert score["n_position_ok"] >= 8 and score["n_size_ok"] >= 6 and score["n_held_out_colours_ok"] >= 2
    # Over 200 prompts: position 99.4%, size and held-out pairs 100% (docs/training.md); 12 leave some slack.
    assert score["position_ok"] >= 0.75 and score["size_ok"] >= 0.75, verdicts
    assert score["colours_ok"] >= 10 / 12 and score["held_out_colours_ok"] >= 0.5, verdicts


def test_demo_finetuned_draws_the_new_concept_and_keeps_the_old_ones(engine):
    from training.concept import held_out_concept_prompts, is_heart

    hearts = held_out_concept_prompts(8, "zwx", "heart", seed=5)
    tuned = engine.generate([request(engine, "demo-finetuned", p.prompt, p.seed) for p in hearts])
    base = engine.generate([request(engine, "demo", p.prompt, p.seed) for p in hearts])
    tuned_hearts, base_hearts = (sum(is_heart(r.images[0]) for r in results) for results in (tuned, base))
    # The base never learned the word (its blobs for it are sometimes pointed enough to pass).
    assert tuned_hearts >= 6 and tuned_hearts >= base_hearts + 2, (tuned_hearts, base_hearts)
    assert sum(shapes.judge(r.images[0])["shape_colour"] == p.spec.colour for r, p in zip(tuned, hearts)) >= 6
    # Prior preservation over the whole vocabulary (same prompts and seeds as the base): shape kinds
    # stay what they were (none of 100 plain prompts changes, docs/training.md; over the previous base 3% did,
    # squares that pass the heart test or come out round). The first LoRA changed 31%.
    prompts = shapes.held_out_prompts(18, seed=6, modifiers=False)
    before = engine.generate([request(engine, "demo", p.prompt, p.seed) for p in prompts])
    after = engine.generate([request(engine, "demo-finetuned", p.prompt, p.seed) for p in prompts])
    kinds = [(shapes.judge(a.images[0])["shape_kind"], shapes.judge(b.images[0])["shape_kind"])
             for a, b in zip(before, after)]
    assert sum(a != b for a, b in kinds) <= 2, kinds
    turned = [p.spec.shape for p, r in zip(prompts, after) if is_heart(r.images[0])]
    assert not any(is_heart(r.images[0]) for r in before)
    assert len(turned) <= 2 and "triangle" not in turned, turned
