"""training.finetune and training.concept: DreamBooth / LoRA runs on tiny models, published variants
that the real Registry + Engine load, the class-image cache, resume, atomic export, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bot.config import EngineConfig, Limits
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models import publish
from bot.models.registry import Registry
from tests.helpers.tiny import save_tiny_pipeline
from training import concept, finetune, shapes
from training.finetune import FinetuneConfig, FinetuneError, main, parse_args

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(min_side=16)
PROMPT = "a yellow zwx star on a blue background"


pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model store with a tiny 32 px base variant 'base', and 4 concept images."""
    root = tmp_path_factory.mktemp("finetune")
    models = root / "models"
    save_tiny_pipeline(models / "base", sample_size=4)
    (models / "base" / "variant.toml").write_text(
        'kind = "pipeline"\n[defaults]\nsteps = 2\nguidance = 3.0\nwidth = 32\nheight = 32\n', encoding="utf-8")
    concept.write_concept(root / "instance", "star", "zwx", count=4)
    return root, models


def args(setup, run: str, *extra: str) -> list[str]:
    """A tiny, fast run: 2 steps, 2 class images, 1 validation image, on one thread."""
    root, models = setup
    return ["--base", "base", "--models-dir", str(models), "--instance-data-dir", str(root / "instance"),
            "--instance-prompt", PROMPT, "--class-prompt", "a yellow triangle on a blue background",
            "--num-class-images", "2", "--sample-batch-size", "2", "--max-train-steps", "2", "--log-every", "1",
            "--num-validation-images", "1", "--validation-steps", "1", "--threads", "1", "--seed", "3",
            "--output-dir", str(root / run), *extra]


def is_up(key: str) -> bool:
    """LoRA's second matrix (peft starts it at zero) under the names diffusers' format uses."""
    return "lora_B" in key or ".up." in key


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def generate(models: Path, model: str, prompt: str = PROMPT, seed: int = 5) -> np.ndarray:
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    engine = Engine(registry, EngineConfig(device="cpu"), allow_download=False)
    request = resolve(parse_prompt(f"{prompt} --seed {seed}"), registry.ready_defaults(), model, LIMITS,
                      unavailable=registry.unavailable())
    [result] = engine.generate([request])
    return np.asarray(result.images[0])


@pytest.fixture(scope="module")
def lora_run(setup):
    """A 2-step LoRA run published as 'star-lora'. The learning rate is high so that 2 steps
    visibly change the images."""
    root, models = setup
    assert main(args(setup, "lora", "--method", "lora", "--learning-rate", "1e-2", "--name", "star-lora")) == 0
    return root / "lora", models


# --- LoRA -------------------------------------------------------------------------------------


def test_lora_run_writes_its_outputs(lora_run):
    run, _ = lora_run
    for name in ("config.toml", "checkpoint.pt", "lora/pytorch_lora_weights.safetensors",
                 "samples/validation_000001.png", "samples/validation_000002.png", "class_images/index.json"):
        assert (run / name).is_file(), name
    rows = read_log(run)
    train = [r for r in rows if r["stage"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["loss_instance"] > 0 and r["loss_prior"] > 0 for r in train)  # prior preservation is in the loss
    assert [r["step"] for r in rows if r["stage"] == "validation"] == [1, 2]
    saved = finetune.load_config(run / "config.toml", FinetuneConfig())
    assert (saved.method, saved.resolution, saved.learning_rate, saved.max_train_steps) == ("lora", 32, 1e-2, 2)
    assert (run / "config.toml").parent == (run / "checkpoint.pt").parent


def test_lora_weights_are_in_diffusers_format(lora_run):
    run, _ = lora_run
    weights = load_file(str(run / "lora" / "pytorch_lora_weights.safetensors"))
    assert {key.split(".")[0] for key in weights} == {"unet"}
    unet_keys = [k for k in weights if k.startswith("unet.")]
    assert all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in unet_keys)
    ups = [v for k, v in weights.items() if is_up(k)]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # trained away from peft's zero start
    assert {v.dtype for v in weights.values()} == {torch.float16}


def test_lora_variant_loads_and_changes_the_images(lora_run):
    _, models = lora_run
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    entry = registry.entry("star-lora")
    assert entry is not None and entry.ready, entry
    spec = entry.spec
    assert (spec.kind, spec.base, spec.file.name, spec.scale) == ("lora", "base", "pytorch_lora_weights.safetensors", 1.0)
    assert "zwx" in spec.description
    assert (spec.defaults.width, spec.defaults.steps, spec.defaults.guidance) == (32, 2, 3.0)  # inherited from base
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    with_lora, without = generate(models, "star-lora"), generate(models, "base")
    assert with_lora.shape == (32, 32, 3)
    assert np.abs(with_lora.astype(int) - without.astype(int)).max() > 0


def test_lora_on_the_cross_attention_keys_and_values_only(setup):
    """lora_targets narrows the adapters; the bot loads such a LoRA like any other."""
    root, models = setup
    assert main(args(setup, "kv", "--method", "lora", "--lora-targets", "attn2.to_k,attn2.to_v",
                     "--learning-rate", "1e-2", "--name", "star-kv")) == 0
    weights = load_file(str(root / "kv" / "lora" / "pytorch_lora_weights.safetensors"))
    adapted = {key.split(".lora")[0].rsplit(".", 1)[-1] for key in weights}
    assert adapted == {"to_k", "to_v"} and all(".attn2." in key for key in weights)
    assert np.abs(generate(models, "star-kv").astype(int) - generate(models, "base").astype(int)).max() > 0


def test_text_encoder_lora(setup, capsys):
    root, models = setup
    assert main(args(setup, "te", "--method", "lora", "--train-text-encoder", "--max-train-steps", "1",
                     "--learning-rate", "1e-2", "--with-prior-preservation", "false",
                     "--num-validation-images", "0")) == 0
    weights = load_file(str(root / "te" / "lora" / "pytorch_lora_weights.safetensors"))
    text_ups = [v for k, v in weights.items() if k.startswith("text_encoder.") and is_up(k)]
    assert {k.split(".")[0] for k in weights} == {"unet", "text_encoder"}
    assert text_ups and all(v.abs().sum() > 0 for v in text_ups)
    # Publishing it: where the installed peft is too old for transformers to load text-encoder
    # adapters, the run is refused up front instead of producing a variant the bot cannot load.
    code = main(args(setup, "te2", "--method", "lora", "--train-text-encoder", "--max-train-steps", "1",
                     "--learning-rate", "1e-2", "--with-prior-preservation", "false",
                     "--num-validation-images", "0", "--name", "te-lora"))
    if finetune.text_encoder_lora_needs():
        assert code == 2 and "upgrade peft" in capsys.readouterr().err
    else:
        assert code == 0
        with_lora, without = generate(models, "te-lora"), generate(models, "base")
        assert np.abs(with_lora.astype(int) - without.astype(int)).max() > 0


# --- full DreamBooth ----------------------------------------------------------------------------


def test_dreambooth_publishes_a_pipeline_variant(setup):
    root, models = setup
    assert main(args(setup, "full", "--method", "dreambooth", "--learning-rate", "1e-3",
                     "--with-prior-preservation", "false", "--validation-steps", "0", "--name", "star-db")) == 0
    rows = read_log(root / "full")
    assert [r["step"] for r in rows if r["stage"] == "train"] == [1, 2]
    assert not any(r["stage"] == "class_images" for r in rows)
    assert (root / "full" / "samples" / "validation_000002.png").is_file()  # the final grid
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    entry = registry.entry("star-db")
    assert entry is not None and entry.ready and entry.spec.kind == "pipeline", entry
    assert (entry.spec.defaults.width, entry.spec.defaults.steps) == (32, 2)
    tuned = load_file(str(models / "star-db" / "unet" / "diffusion_pytorch_model.safetensors"))
    original = load_file(str(models / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in tuned.values()} == {torch.float16}
    assert any(not torch.equal(tuned[k].float(), original[k].half().float()) for k in original)
    assert generate(models, "star-db").shape == (32, 32, 3)


# --- prior preservation: the class-image cache -------------------------------------------------


def test_class_images_are_cached_and_topped_up(setup):
    root, _ = setup
    cache = root / "class-cache"
    quick = ["--method", "lora", "--max-train-steps", "1", "--num-validation-images", "0",
             "--class-data-dir", str(cache)]
    assert main(args(setup, "cache1", *quick)) == 0
    [first] = [r for r in read_log(root / "cache1") if r["stage"] == "class_images"]
    assert (first["drawn"], first["reused"]) == (2, 0)
    pictures = sorted(cache.glob("*.png"))
    stamps = {p.name: p.stat().st_mtime_ns for p in pictures}
    assert len(pictures) == 2

    assert main(args(setup, "cache2", *quick, "--num-class-images", "3")) == 0
    [second] = [r for r in read_log(root / "cache2") if r["stage"] == "class_images"]
    assert (second["drawn"], second["reused"]) == (1, 2)  # only the missing one is drawn
    assert {p.name: p.stat().st_mtime_ns for p in pictures} == stamps
    index = json.loads((cache / "index.json").read_text())
    assert len(index) == 3 and {e["seed"] for e in index.values()} == {0, 1, 2}
    assert {e["key"]["prompt"] for e in index.values()} == {"a yellow triangle on a blue background"}

    # Another class prompt is another set of images.
    assert main(args(setup, "cache3", *quick, "--class-prompt", "a white circle on a blue background")) == 0
    [third] = [r for r in read_log(root / "cache3") if r["stage"] == "class_images"]
    assert (third["drawn"], third["reused"]) == (2, 0)


def test_several_class_prompts_are_drawn_in_turn(setup):
    """Prior preservation over a vocabulary: the j-th class image is drawn for prompt j mod n, with seed j."""
    root, _ = setup
    cache = root / "class-cache-several"
    prompts = ["a red circle on a white background", "a blue square on a white background",
               "a green triangle on a white background"]
    extra = ["--method", "lora", "--max-train-steps", "1", "--num-validation-images", "0", "--class-data-dir", str(cache),
             "--num-class-images", "4", "--sample-batch-size", "4", "--class-prompts", ",".join(prompts)]
    assert main(args(setup, "several", *extra)) == 0
    index = json.loads((cache / "index.json").read_text())
    assert sorted((e["seed"], e["key"]["prompt"]) for e in index.values()) == \
        [(0, prompts), (1, prompts), (2, prompts), (3, prompts)]
    [row] = [r for r in read_log(root / "several") if r["stage"] == "class_images"]
    assert (row["drawn"], row["reused"]) == (4, 0)
    # Each class image is the base's drawing of its own prompt: the same as a run with that prompt alone.
    alone_cache = root / "class-cache-alone"
    assert main(args(setup, "alone", *extra[:-2], "--class-data-dir", str(alone_cache), "--num-class-images", "2",
                     "--class-prompt", prompts[1])) == 0
    alone = json.loads((alone_cache / "index.json").read_text())
    [(alone_name, _)] = [(n, e) for n, e in alone.items() if e["seed"] == 1]
    [(several_name, _)] = [(n, e) for n, e in index.items() if e["seed"] == 1]
    assert np.array_equal(np.asarray(Image.open(alone_cache / alone_name)), np.asarray(Image.open(cache / several_name)))
    [(other_name, _)] = [(n, e) for n, e in index.items() if e["seed"] == 0]
    assert not np.array_equal(np.asarray(Image.open(alone_cache / alone_name)), np.asarray(Image.open(cache / other_name)))

    # The same prompts from a file (comments and blank lines skipped) are the same class images.
    listed = root / "class-prompts.txt"
    listed.write_text("# the vocabulary\n" + "\n\n".join(prompts) + "\n", encoding="utf-8")
    assert main(args(setup, "from-file", *extra[:-2], "--class-prompts-file", str(listed))) == 0
    [row] = [r for r in read_log(root / "from-file") if r["stage"] == "class_images"]
    assert (row["drawn"], row["reused"]) == (0, 4)


def test_an_empty_class_prompts_file_is_refused(setup, capsys):
    root, _ = setup
    empty = root / "no-prompts.txt"
    empty.write_text("# nothing here\n", encoding="utf-8")
    assert main(args(setup, "empty-file", "--method", "lora", "--class-prompts-file", str(empty))) == 2
    assert "holds no prompts" in capsys.readouterr().err


# --- resume --------------------------------------------------------------------------------------


def test_resume_continues_like_an_uninterrupted_run(lora_run, setup, tmp_path):
    run, _ = lora_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["--resume", str(resumed / "checkpoint.pt"), "--max-train-steps", "3", "--name", ""]) == 0
    checkpoint = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    rows = read_log(resumed)
    assert [r["step"] for r in rows if r["stage"] == "train"] == [1, 2, 3]
    assert [(r["drawn"], r["reused"]) for r in rows if r["stage"] == "class_images"] == [(2, 0), (0, 2)]

    straight = tmp_path / "straight"
    assert main([*args(setup, "unused", "--method", "lora", "--learning-rate", "1e-2",
                       "--max-train-steps", "3", "--class-data-dir", str(run / "class_images")),
                 "--output-dir", str(straight)]) == 0
    reference = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert reference["trainable"].keys() == checkpoint["trainable"].keys()
    for key, value in reference["trainable"].items():
        assert torch.equal(value, checkpoint["trainable"][key]), key
    losses = [r["loss"] for r in read_log(straight) if r["stage"] == "train"]
    assert losses == [r["loss"] for r in rows if r["stage"] == "train"]


# --- export: what a registry scanning during the export sees ----------------------------------------


def test_lora_export_appears_only_complete(setup, monkeypatch):
    root, models = setup
    registry = Registry(models, rescan_seconds=0)
    seen = {}

    def observe(step, name):
        registry.scan()
        entry = registry.entry(name)
        seen[step] = None if entry is None else (entry.ready, entry.spec.kind if entry.spec else None)
        if step == "variant_staged":  # the staged folder: weights there, variant.toml written after them
            [staging] = [p for p in models.iterdir() if p.name.startswith(f".{name}.tmp-")]
            toml, weights = staging / "variant.toml", staging / "pytorch_lora_weights.safetensors"
            seen["order"] = toml.stat().st_mtime_ns >= weights.stat().st_mtime_ns

    monkeypatch.setattr(publish, "_checkpoint", observe)
    assert main(args(setup, "atomic", "--method", "lora", "--max-train-steps", "1", "--num-validation-images", "0",
                     "--with-prior-preservation", "false", "--name", "atomic-lora")) == 0
    assert seen["weights_staged"] is None and seen["variant_staged"] is None  # invisible until renamed in
    assert seen["order"] is True
    assert seen["published"] == (True, "lora")
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--instance-data-dir", "/nonexistent/photos"], "instance data /nonexistent/photos does not exist"),
    (["--base", "nosuchmodel"], "unknown base 'nosuchmodel'"),
    (["--use-8bit-adam"], "use_8bit_adam needs the bitsandbytes package"),
    (["--attention", "xformers"], "attention 'xformers' needs the xformers package"),
    (["--method", "full"], "method must be one of dreambooth, lora"),
    (["--class-prompt", ""], "prior preservation needs --class-prompt"),
    (["--resolution", "30"], "resolution must be a positive multiple of 8"),
    (["--max-train-steps", "many"], "max_train_steps must be an integer"),
    (["--method", "lora", "--lora-targets", "conv1"], "lora_targets must name attention projections of the UNet"),
])
def test_bad_input_is_one_clear_line_and_exit_2(setup, capsys, monkeypatch, extra, message):
    real_find_spec = finetune.importlib.util.find_spec
    # As on a machine without bitsandbytes / xformers, whatever this one has.
    monkeypatch.setattr(finetune.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("bitsandbytes", "xformers") else real_find_spec(name, *a))
    assert main(args(setup, "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("finetune: error: ") and message in err, err
    assert not (setup[0] / "bad" / "checkpoint.pt").exists()


def test_a_lora_cannot_be_the_base(lora_run, setup, capsys):
    assert main(args(setup, "bad2", "--base", "star-lora")) == 2
    assert "is itself a LoRA" in capsys.readouterr().err


def test_instance_data_from_a_folder_or_a_manifest(setup, tmp_path):
    root, _ = setup
    from_folder = finetune.read_instance_data(FinetuneConfig(instance_data_dir=str(root / "instance")))
    assert [p.name for p, _ in from_folder] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(text == p.with_suffix(".txt").read_text().strip() for p, text in from_folder)  # own captions
    from_manifest = finetune.read_instance_data(FinetuneConfig(instance_data_dir=str(root / "instance" / "manifest.json")))
    assert [(p.resolve(), t) for p, t in from_manifest] == [(p.resolve(), t) for p, t in from_folder]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(root / "instance" / "000.png", bare / "photo.png")
    assert finetune.read_instance_data(FinetuneConfig(instance_data_dir=str(bare), instance_prompt="a sks dog")) == \
        [(bare / "photo.png", "a sks dog")]
    (bare / "photo.png").unlink()
    with pytest.raises(FinetuneError, match="holds no images"):
        finetune.read_instance_data(FinetuneConfig(instance_data_dir=str(bare)))


def test_settings_come_from_defaults_toml_and_flags(tmp_path):
    config, resume = parse_args(["--base", "demo", "--instance-data-dir", "x", "--class-prompt", "c",
                                 "--output-dir", str(tmp_path / "a")])
    assert resume is None
    assert (config.method, config.learning_rate, config.max_train_steps, config.lr_scheduler) == \
        ("dreambooth", 0.0, 400, "constant")  # learning rate 0: picked by method when training starts
    assert (config.train_batch_size, config.gradient_checkpointing, config.with_prior_preservation) == (1, True, True)
    assert (config.num_class_images, config.prior_loss_weight, config.validation_steps, config.checkpointing_steps) == \
        (100, 1.0, 100, 500)
    toml = tmp_path / "c.toml"
    toml.write_text('method = "lora"\nresolution = "auto"\nrank = 8\nmax_train_steps = 50\n', encoding="utf-8")
    config, _ = parse_args(["--config", str(toml), "--base", "demo", "--instance_data_dir=x", "--class-prompt", "c",
                            "--max-train-steps", "60", "--train_text_encoder", "--output-dir", str(tmp_path / "b")])
    assert (config.method, config.resolution, config.rank, config.max_train_steps, config.train_text_encoder) == \
        ("lora", 0, 8, 60, True)
    with pytest.raises(FinetuneError, match="unknown setting 'colour'"):
        toml.write_text('colour = "red"\n', encoding="utf-8")
        parse_args(["--config", str(toml)])


def test_imagebot_train_finetune_dispatches_here(capsys):
    from bot.cli import main as imagebot

    assert imagebot(["train", "finetune", "--base", "x", "--instance-data-dir", "y", "--method", "nope"]) == 2
    assert "method must be one of dreambooth, lora" in capsys.readouterr().err


# --- the demo concept and config -----------------------------------------------------------------


def test_concept_images_show_a_new_shape_with_the_rare_token(tmp_path):
    pairs = concept.write_concept(tmp_path / "c", "star", "zwx", count=8, seed=1)
    assert len(pairs) == 8 and len({text for _, text in pairs}) == 8
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [row["caption"] for row in manifest] == [text for _, text in pairs]
    for path, text in pairs:
        assert path.with_suffix(".txt").read_text().strip() == text
        words = text.split()
        assert words[0] in ("a", "an") and words[2:4] == ["zwx", "star"] and words[-1] == "background"
        image = Image.open(path)
        assert image.size == (32, 32)
        verdict = shapes.judge(image)
        # The pixels show what the caption says: the colours (read back by the shapes judge), and a
        # shape the base vocabulary does not have (a star fills much less of its box than a circle).
        assert (verdict["shape_colour"], verdict["background"]) == (words[1], words[-2])
        assert verdict["fill_ratio"] < 0.6
    assert sum(text.endswith("on a blue background") for _, text in pairs) == 4
    with pytest.raises(ValueError, match="shape must be one of star, heart, plus"):
        concept.render("red", "circle", "blue")


def test_demo_config_trains_end_to_end_on_a_stand_in(tmp_path):
    """training/configs/demo-finetuned.toml, shortened, over a tiny stand-in for the demo model:
    renders its concept, trains, publishes 'demo-finetuned' as a LoRA over 'demo'."""
    models = tmp_path / "models"
    save_tiny_pipeline(models / "demo", sample_size=4)
    (models / "demo" / "variant.toml").write_text('kind = "pipeline"\n[defaults]\nsteps = 2\nwidth = 32\nheight = 32\n')
    config_file = REPO / "training" / "configs" / "demo-finetuned.toml"
    config, _ = parse_args(["--config", str(config_file), "--output-dir", str(tmp_path / "run")])
    assert (config.method, config.base, config.name, config.resolution) == ("lora", "demo", "demo-finetuned", 32)
    class_file = REPO / config.class_prompts_file  # relative paths in the config are the repository's
    specs = [shapes.parse_caption(p) for p in finetune.read_class_prompts(class_file)]
    assert len(specs) == config.num_class_images  # one class image for each prompt
    assert {s.shape for s in specs} == set(shapes.SHAPES) and {s.size for s in specs} == {None, *shapes.SIZES}
    assert {s.position for s in specs} == {None, *shapes.POSITIONS}  # the whole vocabulary
    assert not {(s.colour, s.background) for s in specs} & shapes.HELD_OUT_PAIRS
    assert config.concept == "heart" and "zwx" in config.instance_prompt and config.rank <= 8
    assert main(["--config", str(config_file), "--models-dir", str(models), "--output-dir", str(tmp_path / "run"),
                 "--instance-data-dir", str(tmp_path / "concept"), "--class-prompts-file", str(class_file),
                 "--max-train-steps", "1",
                 "--num-class-images", "1", "--num-validation-images", "1", "--threads", "1"]) == 0
    assert len(list((tmp_path / "concept").glob("*.png"))) == config.concept_images
    registry = Registry(models)
    registry.scan()
    entry = registry.entry("demo-finetuned")
    assert entry is not None and entry.ready and entry.spec.base == "demo", entry
