"""training.train_scratch: a tiny end-to-end run, resume, and publishing into the model store."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bot.config import EngineConfig, Limits
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from training.train_scratch import (
    TrainingConfig,
    build_text_encoder,
    build_unet,
    build_vae,
    load_toml_config,
    main,
    parse_args,
)

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(min_side=16)

# Every stage at a size that takes well under a second a step on a CPU.
TINY = [
    "--num-images", "12", "--seed", "3",
    "--vae-steps", "2", "--vae-batch-size", "4", "--vae-channels", "8,8,8", "--vae-norm-groups", "4",
    "--train-batch-size", "4", "--unet-channels", "16,16", "--unet-layers-per-block", "1",
    "--unet-attention-heads", "2", "--unet-norm-groups", "4", "--text-width", "16", "--text-heads", "2",
    "--lr-warmup-steps", "1", "--learning-rate", "1e-3",
    "--sample-steps", "2", "--sample-every", "0", "--save-every", "1", "--log-every", "1",
    "--eval-prompts", "2", "--eval-guidances", "2.0", "--eval-batch-size", "2", "--threads", "1",
]


pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step VAE + 2-step UNet run with a 16-token prompt window, published as 'scratch' into a
    fresh model store."""
    root = tmp_path_factory.mktemp("scratch")
    run = root / "run"
    models = root / "models"
    assert main([*TINY, "--max-steps", "2", "--prompt-tokens", "16", "--output-dir", str(run),
                 "--name", "scratch", "--models-dir", str(models)]) == 0
    return run, models


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_run_writes_its_outputs(trained):
    run, _ = trained
    for name in ("config.toml", "checkpoint.pt", "log.jsonl", "eval.json", "vae/config.json",
                 "pipeline/model_index.json", "samples/vae_reconstruction.png", "samples/unet_000002.png"):
        assert (run / name).exists(), name
    rows = read_log(run)
    assert [r["step"] for r in rows if r["stage"] == "vae"] == [1, 2]
    assert [r["step"] for r in rows if r["stage"] == "unet"] == [1, 2]
    assert all(r["loss"] > 0 for r in rows if r["stage"] == "unet")
    vae_config = json.loads((run / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != 0.18215  # measured on the data, not the SD default
    report = json.loads((run / "eval.json").read_text())
    assert report["prompts"] == 2 and set(report["by_guidance"]) == {"2.0"}


def test_config_is_saved_next_to_the_checkpoint(trained):
    run, models = trained
    assert (run / "config.toml").parent == (run / "checkpoint.pt").parent
    saved = load_toml_config(run / "config.toml", TrainingConfig())
    assert (saved.max_steps, saved.name, saved.models_dir, saved.output_dir) == (2, "scratch", str(models), str(run))
    assert (saved.unet_channels, saved.eval_guidances, saved.threads) == ((16, 16), (2.0,), 1)
    assert saved.vae_kl_weight == TrainingConfig.vae_kl_weight  # defaults are written out too
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == "unet" and checkpoint["step"] == 2
    assert TrainingConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in checkpoint["config"].items()}) == saved


def test_published_variant_is_ready_and_generates(trained):
    _, models = trained
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    entry = registry.entry("scratch")
    assert entry is not None and entry.ready, entry
    assert (entry.spec.defaults.width, entry.spec.defaults.height) == (32, 32)
    assert entry.spec.defaults.scheduler == "dpm++" and entry.spec.defaults.steps == 2
    assert not list(models.glob(".*"))  # no staging folder left behind

    engine = Engine(registry, EngineConfig(device="cpu"), allow_download=False)
    request = resolve(parse_prompt("a red circle on a blue background --seed 5"), registry.ready_defaults(),
                      "scratch", LIMITS, unavailable=registry.unavailable())
    [result] = engine.generate([request])
    assert [image.size for image in result.images] == [(32, 32)]

    # The window it was trained with is the one it is served with, and a prompt longer than the
    # window is read as several windows, not cut off.
    from bot.engine.prompts import prompt_embeddings

    pipe = engine.residency.resident_for(registry.get("scratch")).pipe  # the pipeline the engine serves
    assert pipe.tokenizer.model_max_length == 16
    long = "a small red circle at the top on a blue background " * 3  # 33 tokens: 3 windows of 14
    embeds = prompt_embeddings(pipe, [long], [""])
    assert embeds["prompt_embeds"].shape[1] == 3 * 16
    request = resolve(parse_prompt(f"{long} --seed 5"), registry.ready_defaults(), "scratch", LIMITS,
                      unavailable=registry.unavailable())
    [result] = engine.generate([request])
    assert [image.size for image in result.images] == [(32, 32)]


def test_exported_weights_are_float16_safetensors(trained):
    _, models = trained
    files = list((models / "scratch").rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert not list((models / "scratch").rglob("*.bin"))
    for file in files:
        with safe_open(str(file), "pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert dtypes <= {"F16", "I64"}, (file, dtypes)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(models / "scratch" / "tokenizer"))
    assert len(tokenizer) == 49408  # the real CLIP vocabulary
    assert tokenizer("a red circle").input_ids[:2] == [49406, 320]


@pytest.mark.parametrize("name, size, limit", [("demo", 32, 25_000_000), ("demo-64", 64, 40_000_000)])
def test_demo_configs_fit_in_the_repository(name, size, limit):
    config = load_toml_config(REPO / "training" / "configs" / f"{name}.toml", TrainingConfig())
    factor = 2 ** (len(config.vae_channels) - 1)
    models = [build_vae(config), build_unet(config, config.image_size // factor), build_text_encoder(config)]
    parameters = sum(p.numel() for m in models for p in m.parameters())
    tokenizer = 3_700_000  # tokenizer.json as transformers 5 writes it (3.6 MB)
    assert parameters * 2 + tokenizer < limit
    assert config.data == "shapes" and config.image_size == size and config.sample_steps == 20
    assert 2.0 <= config.sample_guidance <= 4.0


def test_resume_continues_at_the_saved_step(trained, tmp_path):
    run, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["--resume", str(resumed / "checkpoint.pt"), "--max-steps", "3", "--name", "",
                 "--eval-prompts", "0"]) == 0
    checkpoint = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    rows = read_log(resumed)
    assert [r["step"] for r in rows if r["stage"] == "unet"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["stage"] == "vae"] == [1, 2]  # the VAE was not trained again

    # The same as a run that was never interrupted: weights, EMA and optimizer state to the bit.
    straight = tmp_path / "straight"
    assert main([*TINY, "--max-steps", "3", "--prompt-tokens", "16", "--output-dir", str(straight),
                 "--eval-prompts", "0"]) == 0
    reference = torch.load(straight / "checkpoint.pt", weights_only=True)
    for part in ("unet", "text_encoder"):
        for key, value in reference["models"][part].items():
            assert torch.equal(value, checkpoint["models"][part][key]), (part, key)
    assert all(torch.equal(a, b) for a, b in zip(reference["ema"]["shadow"], checkpoint["ema"]["shadow"]))
    assert reference["batches"]["pos"] == checkpoint["batches"]["pos"]


def test_decoder_refinement_trains_the_decoder_only(trained, tmp_path):
    """Stage c, here on a resumed run: the exported VAE keeps the encoder the UNet learned on and
    has a retrained decoder."""
    from safetensors.torch import load_file

    run, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["--resume", str(resumed / "checkpoint.pt"), "--decoder-steps", "2", "--name", "",
                 "--eval-prompts", "0"]) == 0
    before = load_file(str(resumed / "vae" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(resumed / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors"))
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k].half(), after[k])}
    assert changed == {"decoder", "post_quant_conv"} or changed == {"decoder"}, changed
    assert [r["step"] for r in read_log(resumed) if r["stage"] == "decoder"] == [1, 2]
    assert (resumed / "samples" / "decoder_reconstruction.png").is_file()


def test_time_budget_stops_cleanly_and_still_exports(tmp_path):
    models = tmp_path / "models"
    main([*TINY, "--max-steps", "100000", "--vae-steps", "100000", "--time-budget", "0.05",
          "--eval-prompts", "0", "--output-dir", str(tmp_path / "run"), "--name", "budget",
          "--models-dir", str(models)])
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == "unet" and checkpoint["step"] < 100000
    registry = Registry(models)
    registry.scan()
    assert registry.entry("budget").ready


def test_bad_settings_are_refused(trained, tmp_path, capsys):
    run, _ = trained
    with pytest.raises(SystemExit):
        parse_args(["--max-steps", "many"])
    assert "max_steps must be an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--data", "manifest"])
    assert "--manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", str(run)])  # would overwrite a run
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--decoder-steps", "5", "--vae-batch-size", "1", "--output-dir", str(tmp_path / "d")])
    assert "decoder_steps needs vae_batch_size 2 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--prompt-tokens", "100", "--output-dir", str(tmp_path / "p")])
    assert "prompt_tokens must be from 8 to 77" in capsys.readouterr().err
    config, resume = parse_args(["--unet-channels", "32,64", "--vae", "some/vae", "--time_budget", "3",
                                 "--output-dir", str(tmp_path / "new")])
    assert config.unet_channels == (32, 64) and config.vae_path == "some/vae" and config.time_budget == 3.0
    assert resume is None


def test_ctrl_c_finishes_the_step_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "training.train_scratch", *TINY, "--max-steps", "100000",
                                "--output-dir", str(run), "--eval-prompts", "0"],
                               cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "log.jsonl").exists() or '"unet"' not in (run / "log.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
        err = process.stderr.read()
    finally:
        process.kill()
    assert code == 130, err
    assert "stopping after this step" in err
    assert f"checkpoint saved. Resume with: python -m training.train_scratch --resume {run / 'checkpoint.pt'}" in err
    assert "Traceback" not in err
    step = max(row["step"] for row in read_log(run) if row.get("stage") == "unet")
    assert main(["--resume", str(run / "checkpoint.pt"), "--max-steps", str(step + 1), "--eval-prompts", "0"]) == 0
    assert max(row["step"] for row in read_log(run) if row.get("stage") == "unet") == step + 1


def test_the_published_model_refuses_sizes_far_above_what_it_learned(trained):
    from bot.models.spec import read_variant

    _, models = trained
    spec = read_variant(models / "scratch")
    assert spec.defaults.max_side == 4 * spec.defaults.width


def test_plain_levels_and_min_snr_weighting():
    """unet_plain_levels drops attention from the first levels only; snr_gamma reweights the loss
    per timestep (a nearly clean timestep counts gamma / snr of its plain MSE); bad values are refused."""
    import torch

    from training.train_scratch import check_config, unet_loss

    config = TrainingConfig(unet_channels=(32, 64), unet_norm_groups=8, unet_plain_levels=1, text_width=16,
                            text_heads=2, unet_attention_heads=2)
    unet = build_unet(config, latent_size=8)
    assert unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert unet.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert "unet_plain_levels must be from 0 to 1" in check_config(TrainingConfig(unet_plain_levels=2))
    assert "snr_gamma" in check_config(TrainingConfig(snr_gamma=-1))

    class Fixed:
        """A 'network' whose prediction is fixed, so the loss is known by hand."""

        def __init__(self, prediction):
            self.prediction = prediction

        def __call__(self, *args):
            return type("Out", (), {"sample": self.prediction})()

    class Accelerator:
        device = torch.device("cpu")

        def autocast(self):
            import contextlib

            return contextlib.nullcontext()

        def backward(self, loss):
            self.loss = loss

    from training.train_scratch import Inputs, StageB

    generator = torch.Generator().manual_seed(0)
    latents = (torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8))
    inputs = Inputs(latents, 1.0, torch.zeros(2, 77, dtype=torch.long), torch.tensor([1, 1]))
    alphas = torch.linspace(0.999, 0.001, 1000)
    losses = {}
    for gamma in (0.0, 5.0):
        generator.manual_seed(0)
        progress = type("P", (), {"generator": generator})()
        text = lambda tokens: (torch.zeros(len(tokens), 77, 16),)  # noqa: E731
        b = StageB(Fixed(torch.zeros(2, 4, 8, 8)), text, None, None, [], None, None, progress, alphas)
        accelerator = Accelerator()
        losses[gamma] = unet_loss(TrainingConfig(snr_gamma=gamma, caption_dropout=0.0), b, inputs,
                                  torch.tensor([0, 1]), accelerator)
    # The same noise and timesteps both times; with gamma the per-sample MSE is scaled by min(snr, 5) / snr.
    generator.manual_seed(0)
    torch.randn(2, 4, 8, 8, generator=generator)  # the draw from the latent distributions comes first
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    per_sample = (noise ** 2).mean(dim=(1, 2, 3))
    snr = alphas[timesteps] / (1 - alphas[timesteps])
    assert abs(losses[0.0] - float(per_sample.mean())) < 1e-5
    assert abs(losses[5.0] - float((per_sample * snr.clamp(max=5) / snr).mean())) < 1e-5
    assert losses[5.0] != losses[0.0] or bool((snr <= 5).all())
