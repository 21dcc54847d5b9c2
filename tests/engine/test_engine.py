"""The engine on tiny random-weight models loaded through the real registry and diffusers."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.config import EngineConfig, Limits
from bot.core.errors import Cancelled, UserError
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from bot.models.variant import SCHEDULERS
from tests.helpers.models import add_pipeline_variant
from tests.helpers.tiny import save_tiny_lora, save_tiny_pipeline
from training.to_single_file import export_single_file

LIMITS = Limits(min_side=32)


def make_engine(models_dir: Path, **engine_options) -> Engine:
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", **engine_options), allow_download=False)


def request(engine: Engine, text: str, model: str = "demo"):
    registry = engine.registry
    registry.scan_if_due()  # as the service does before each request
    return resolve(parse_prompt(text), registry.ready_defaults(), model, LIMITS, unavailable=registry.unavailable())


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def generate_one(engine, text, model="demo"):
    [result] = engine.generate([request(engine, text, model)])
    return result


def test_generates_images_of_the_requested_size_and_count(models_dir):
    engine = make_engine(models_dir)
    result = generate_one(engine, "a red circle --seed 3 --n 2 --size 64x48")
    assert [image.size for image in result.images] == [(64, 48), (64, 48)]
    assert result.seeds == [3, 4]
    assert not np.array_equal(pixels(result.images[0]), pixels(result.images[1]))


def test_same_seed_same_image_and_other_seed_other_image(models_dir):
    engine = make_engine(models_dir)
    first = generate_one(engine, "a red circle --seed 11").images[0]
    again = generate_one(engine, "a red circle --seed 11").images[0]
    other = generate_one(engine, "a red circle --seed 12").images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


@pytest.mark.parametrize("guidance", ["7", "1"])  # with and without classifier-free guidance
def test_an_image_is_pixel_identical_alone_or_in_a_batch(models_dir, guidance):
    engine = make_engine(models_dir, max_batch=8)
    texts = [f"a red circle --seed 1 --n 2 --cfg {guidance}",
             # A negative prompt needs guidance above 1 to do anything (it is refused below).
             f"a blue square on grass --seed 500 {'--no green ' if guidance != '1' else ''}--cfg {guidance}",
             f"tree --seed 77 --cfg {guidance}"]
    requests = [request(engine, text) for text in texts]
    batched = engine.generate(requests)
    assert engine.stats.batches == 1  # really one pipeline call for four images
    for req, in_batch in zip(requests, batched):
        [alone] = engine.generate([req])
        for a, b in zip(in_batch.images, alone.images):
            assert np.array_equal(pixels(a), pixels(b))


def test_batches_are_split_at_max_batch(models_dir):
    engine = make_engine(models_dir, max_batch=2)
    [result] = engine.generate([request(engine, "a cat --n 3 --seed 5")])
    assert len(result.images) == 3
    assert engine.stats.batches == 2


def test_incompatible_requests_are_refused_as_one_batch(models_dir):
    engine = make_engine(models_dir)
    with pytest.raises(ValueError, match="share"):
        engine.generate([request(engine, "a --steps 2"), request(engine, "b --steps 3")])


def test_progress_reports_every_step(models_dir):
    engine = make_engine(models_dir)
    seen = []
    engine.generate([request(engine, "a cat --steps 4")], on_progress=lambda p: seen.append((p.step, p.total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancellation_stops_between_steps_and_the_engine_goes_on(models_dir):
    engine = make_engine(models_dir)
    seen = []
    with pytest.raises(Cancelled):
        engine.generate([request(engine, "a cat --steps 5")], on_progress=lambda p: seen.append(p.step),
                        should_cancel=lambda: len(seen) >= 2)
    assert seen == [1, 2]
    assert len(generate_one(engine, "a cat --steps 2").images) == 1


def test_cancellation_takes_effect_inside_a_step_not_only_after_it(models_dir):
    """A step of a big model can take a minute: the check also runs between the UNet's blocks."""
    engine = make_engine(models_dir)
    checks, seen = [], []

    def cancel_on_the_third_check() -> bool:  # the first is before the call, the next ones inside step 1
        checks.append(1)
        return len(checks) >= 3

    with pytest.raises(Cancelled):
        engine.generate([request(engine, "a cat --steps 5")], on_progress=lambda p: seen.append(p.step),
                        should_cancel=cancel_on_the_third_check)
    assert seen == []  # stopped before the first step ended
    unet = engine_pipe_unet(engine)
    assert not any(module._forward_pre_hooks for module in unet.modules())  # no check left behind
    assert len(generate_one(engine, "a cat --steps 2").images) == 1


def engine_pipe_unet(engine):
    [resident] = engine.residency.models.values()
    return resident.pipe.unet


def test_cancelled_before_start_runs_nothing(models_dir):
    engine = make_engine(models_dir)
    with pytest.raises(Cancelled):
        engine.generate([request(engine, "a cat")], should_cancel=lambda: True)
    assert engine.stats.batches == 0


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs(models_dir, scheduler):
    engine = make_engine(models_dir)
    result = generate_one(engine, f"a cat --steps 3 --seed 1 --scheduler {scheduler}")
    assert result.images[0].size == (64, 64)
    assert pixels(result.images[0]).std() > 0


def test_single_file_variant_matches_the_pipeline_it_came_from(models_dir, tiny_pipeline_dir):
    folder = models_dir / "checkpoint"
    folder.mkdir()
    export_single_file(tiny_pipeline_dir, folder / "model.safetensors")
    # The tiny architecture's configs (a real checkpoint would use the shipped sd15/sd21/sdxl ones).
    config = folder / "arch"
    for item in ("model_index.json", "scheduler", "unet/config.json", "vae/config.json", "text_encoder/config.json"):
        target = config / item
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tiny_pipeline_dir / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    (folder / "variant.toml").write_text('file = "model.safetensors"\narch = "sd15"\nconfig = "arch"\n'
                                         '[defaults]\nsteps = 3\n')
    engine = make_engine(models_dir)
    assert engine.registry.get("checkpoint").kind == "single_file"
    from_file = generate_one(engine, "a lighthouse --seed 9", model="checkpoint").images[0]
    from_folder = generate_one(engine, "a lighthouse --seed 9", model="demo").images[0]
    assert np.array_equal(pixels(from_file), pixels(from_folder))


def test_lora_variant_shares_its_base_and_changes_the_images(models_dir, tiny_pipeline_dir):
    save_tiny_lora(tiny_pipeline_dir, models_dir / "style")
    (models_dir / "style" / "variant.toml").write_text('kind = "lora"\nbase = "demo"\nscale = 1.0\n')
    engine = make_engine(models_dir)
    base_before = generate_one(engine, "a house --seed 2").images[0]
    styled = generate_one(engine, "a house --seed 2", model="style").images[0]
    base_after = generate_one(engine, "a house --seed 2").images[0]
    assert not np.array_equal(pixels(base_before), pixels(styled))
    assert np.array_equal(pixels(base_before), pixels(base_after))  # the adapter is off for the base
    assert engine.loaded() == {"demo": ["style"]}  # one copy of the base weights

    # The same LoRA applied by hand with diffusers gives the same image.
    from diffusers import StableDiffusionPipeline

    from bot.engine.batch_invariance import make_pipeline_batch_invariant
    from bot.engine.schedulers import make_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), local_files_only=True)
    pipe.load_lora_weights(str(models_dir / "style"), adapter_name="style")
    make_pipeline_batch_invariant(pipe)
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    by_hand = pipe("a house", num_inference_steps=3, guidance_scale=7.0, width=64, height=64,
                   negative_prompt="", generator=[torch.Generator().manual_seed(2)]).images[0]
    assert np.array_equal(pixels(by_hand), pixels(styled))


def test_lora_with_missing_base_is_reported_and_others_still_work(models_dir, tiny_pipeline_dir):
    save_tiny_lora(tiny_pipeline_dir, models_dir / "orphan")
    (models_dir / "orphan" / "variant.toml").write_text('kind = "lora"\nbase = "nothere"\n')
    engine = make_engine(models_dir)
    with pytest.raises(UserError, match="nothere"):
        generate_one(engine, "a cat", model="orphan")
    assert generate_one(engine, "a cat").images


def test_hub_variant_offline_says_what_to_do(models_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    folder = models_dir / "sd21"
    folder.mkdir()
    (folder / "variant.toml").write_text('repo = "stabilityai/stable-diffusion-2-1"\n')
    engine = make_engine(models_dir)
    with pytest.raises(UserError) as caught:
        generate_one(engine, "a cat", model="sd21")
    message = str(caught.value)
    assert "stabilityai/stable-diffusion-2-1" in message and "offline" in message and str(folder) in message
    assert generate_one(engine, "a cat").images  # nothing else broke


def test_new_changed_and_removed_variants_are_picked_up_while_running(models_dir, tiny_pipeline_dir, tmp_path):
    engine = make_engine(models_dir)
    before = generate_one(engine, "a boat --seed 4").images[0]
    loads = engine.stats.model_loads

    # Added: a second variant appears and can be used at once.
    other = save_tiny_pipeline(tmp_path / "other", seed=1)
    add_pipeline_variant(models_dir, "second", other, 'kind = "pipeline"\n[defaults]\nsteps = 3\n')
    assert generate_one(engine, "a boat --seed 4", model="second").images

    # Changed: demo's weights are replaced (files first, variant.toml last, as producers do).
    shutil.rmtree(models_dir / "demo")
    add_pipeline_variant(models_dir, "demo", other, 'kind = "pipeline"\n[defaults]\nsteps = 3\n')
    after = generate_one(engine, "a boat --seed 4").images[0]
    assert not np.array_equal(pixels(before), pixels(after))
    assert engine.stats.model_loads == loads + 2

    # Removed: gone from the store means gone from memory and refused with the list of models.
    shutil.rmtree(models_dir / "second")
    with pytest.raises(UserError, match="demo"):
        generate_one(engine, "a boat", model="second")
    engine.refresh()  # the worker does this between batches
    assert "second" not in engine.loaded()


def test_half_written_variant_is_ignored_until_its_variant_toml_exists(models_dir, tiny_pipeline_dir):
    engine = make_engine(models_dir)
    partial = models_dir / "incoming"
    shutil.copytree(tiny_pipeline_dir, partial)
    weights = next(partial.glob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as if still copying
    engine.registry.scan()
    assert engine.registry.entry("incoming") is None
    with pytest.raises(UserError, match="no model 'incoming'"):
        generate_one(engine, "a cat", model="incoming")


def test_broken_weights_fail_that_variant_only(models_dir, tiny_pipeline_dir):
    broken = add_pipeline_variant(models_dir, "broken", tiny_pipeline_dir)
    weights = next(broken.glob("unet/*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    engine = make_engine(models_dir)
    with pytest.raises(Exception, match="broken"):
        generate_one(engine, "a cat", model="broken")
    assert generate_one(engine, "a cat").images


def test_out_of_memory_retries_with_smaller_batches(models_dir):
    engine = make_engine(models_dir, max_batch=4)
    req = request(engine, "a cat --n 4 --seed 8")
    [expected] = engine.generate([req])

    pipe = engine.residency.models["demo"].pipe
    real_forward = pipe.unet.forward

    def forward_with_little_memory(sample, *args, **kwargs):
        if sample.shape[0] > 2:  # more than one image with guidance: "the GPU is full"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(sample, *args, **kwargs)

    pipe.unet.forward = forward_with_little_memory
    [result] = engine.generate([req])
    assert engine.stats.oom_retries >= 2
    for a, b in zip(expected.images, result.images):
        assert np.array_equal(pixels(a), pixels(b))


def test_out_of_memory_for_a_single_image_is_a_user_error(models_dir):
    engine = make_engine(models_dir)
    generate_one(engine, "warm up")
    pipe = engine.residency.models["demo"].pipe

    def always_full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    pipe.unet.forward = always_full
    with pytest.raises(UserError, match="smaller size"):
        generate_one(engine, "a cat --size 64x64")


def test_img2img_uses_the_same_weights(models_dir, tmp_path):
    engine = make_engine(models_dir)
    source = generate_one(engine, "a cat --seed 1").images[0]
    path = tmp_path / "source.png"
    source.save(path)
    from bot.core.request import options_from_fields

    options = options_from_fields("a cat, painted", seed=5, init_image=str(path), strength=0.5, size="64x64")
    req = resolve(options, engine.registry.ready_defaults(), "demo", LIMITS)
    [first] = engine.generate([req])
    [second] = engine.generate([req])
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    assert engine.stats.model_loads == 1


def test_memory_budget_unloads_the_least_recently_used_model(models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "second", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    engine = make_engine(models_dir, memory_budget_gb=0.001)  # room for one tiny model
    generate_one(engine, "a cat")
    generate_one(engine, "a cat", model="second")
    assert list(engine.loaded()) == ["second"]


def test_unknown_engine_settings_fail_with_what_to_change(models_dir):
    from bot.engine.devices import EngineSetupError

    registry = Registry(models_dir)
    with pytest.raises(EngineSetupError, match="float32"):
        Engine(registry, EngineConfig(device="cpu", dtype="float16"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineSetupError, match="CUDA"):
            Engine(registry, EngineConfig(device="cuda"))


def test_engine_never_reaches_a_hub():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
