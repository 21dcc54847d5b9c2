"""Train a small Stable Diffusion model from scratch and publish it into the model store.

The shipped demo model (how long it takes on a CPU is in docs/training.md, "The demo model"; `python
bench/training.py` measures steps per second on the machine at hand):

    python -m training.train_scratch --config training/configs/demo.toml --name demo --models-dir models

Resume an interrupted run (same output folder; flags given now override the saved config):

    python -m training.train_scratch --resume runs/demo/checkpoint.pt

Other uses:

    python -m training.train_scratch --time-budget 3 --max-steps 100000         # stop after 3 minutes
    python -m training.train_scratch --data manifest --manifest data/logs-train.json --image-size 64
    python -m training.train_scratch --vae runs/demo/vae --config training/configs/demo.toml  # reuse a VAE

The recipe (measured in docs/training.md, "The demo model"): (a) a tiny AutoencoderKL (32 px -> 8x8x4) is
trained first on the images; (b) every image is encoded once, latents scaled to unit variance (the
factor is recorded as the VAE's `scaling_factor`), and a UNet2DConditionModel is trained jointly
with a small CLIP text encoder on them: epsilon prediction, scaled_linear betas, 10% empty
captions (for classifier-free guidance), AdamW, gradient clipping, an EMA of both networks. The
EMA weights are sampled with DPM-Solver++ and exported as a float16 StableDiffusionPipeline with
the real CLIP tokenizer. With a time budget (the demo config has one) the VAE stage gets at most
`vae_time_fraction` of it and the UNet stage stops when it is spent; the run then evaluates and
exports as usual. (c) Optionally (`decoder_steps`), the VAE's decoder alone is trained further, its
encoder frozen so the UNet's latents keep their meaning, on training images and shapes in random
colours, so that colour pairs no training image showed decode right too.

Configuration: the `TrainingConfig` defaults below, then a TOML file (`--config`), then `--key value`
flags for any field (`--max-steps 500`, `--unet-channels 64,128`). The final config is written
to `<output_dir>/config.toml`, next to `checkpoint.pt`.

Output folder (`output_dir`):

    config.toml       the final configuration of this run
    checkpoint.pt     models, optimizer, LR schedule, EMA, step, data order, RNG (written atomically)
    log.jsonl         one JSON object per line: losses, learning rate, seconds per step, sample scores
    vae/              the trained VAE (diffusers folder, scaling_factor recorded)
    samples/          reconstruction grids of the VAE (and of the refined decoder), sample grids of the EMA weights every N steps
    pipeline/         the final float16 pipeline
    eval.json         held-out prompts scored by training.shapes.judge (shapes data only)

and, with `--name NAME`, the pipeline published atomically as `<models_dir>/NAME` (bot.models.publish).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from training import shapes
from training.common.data import Dataset, load_image
from training.common.networks import quietly_to
from training.common.run import Run, hide_progress_bars, load_checkpoint, log, run_script, torch_threads
from training.manifest import training_pairs
from training.scratch_decoder import refine_decoder
from training.scratch_export import evaluate, export
from training.scratch_networks import TEXT_POSITIONS
from training.scratch_unet import train_unet
from training.scratch_vae import encode_latents, stage_a
from training.settings import Settings, SettingsError

# Also importable from here, where callers and tests have found them.
from training.scratch_networks import build_text_encoder, build_unet, build_vae  # noqa: F401
from training.scratch_unet import Inputs, StageB, unet_loss  # noqa: F401


@dataclass
class TrainingConfig:
    # --- as in the reference project's TrainingConfig (its values where they fit a tiny model) ---
    image_size: int = 32  # the generated image resolution (the reference trained at 768)
    train_batch_size: int = 16
    eval_batch_size: int = 16  # images per pipeline call when sampling / evaluating
    num_epochs: int = 10  # passes over the data for the UNet stage; 0 = no limit
    max_steps: int = 0  # UNet optimizer steps; 0 = no limit (the first of epochs/steps/time ends the run)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 500
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization name (cosine, linear, ...)
    sample_every: int = 250  # steps between sample grids (the reference's save_image_epochs); 0 = only at the end
    save_every: int = 250  # steps between checkpoints (the reference's save_model_epochs); 0 = only at the end
    mixed_precision: str = "no"  # no | fp16 | bf16 ("fp16" needs a GPU; the reference used it on one)
    seed: int = 0
    output_dir: str = "runs/scratch"

    # --- data ---
    data: str = "shapes"  # shapes (training.shapes, rendered once) | manifest
    manifest: str = ""  # data = manifest: .json / .jsonl / .csv / .txt with link + caption
    num_images: int = 20000  # shapes: how many images to render
    modifier_prob: float = 0.0  # shapes: chance of a size word, and of a position word, in a caption

    # --- stage a: the VAE ---
    vae_path: str = ""  # reuse this VAE (a VAE folder, or a pipeline folder with vae/) instead of training one
    vae_steps: int = 3000
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 levels: 32 px -> 8x8 latents
    vae_norm_groups: int = 32
    vae_kl_weight: float = 1e-6
    vae_time_fraction: float = 0.25  # with a time budget: the VAE stage gets at most this share of it

    # --- stage c: the decoder, refined after stage b ---
    # Train the VAE decoder alone (the encoder frozen, so the latents the UNet learned keep their
    # meaning, as Stable Diffusion's ft-MSE decoder was made), on batches that are half training
    # images and, for shapes, half shapes in random colours. A VAE that only ever saw the palette's
    # pairs decodes pairs it never saw into the wrong colours. 0 = skip. It runs after the time
    # budget's stages (a few minutes), and is done again when a run is resumed.
    decoder_steps: int = 0
    decoder_lr: float = 3e-4

    # --- stage b: UNet + text encoder ---
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 2
    unet_attention_heads: int = 8
    unet_plain_levels: int = 0  # the first N (highest-resolution) levels without attention, as SDXL's first
    unet_norm_groups: int = 32
    text_width: int = 64  # hidden size of the CLIP text encoder (full 49408-token vocabulary)
    text_layers: int = 2
    text_heads: int = 4
    # The tokenizer's window: every caption is padded to this many tokens, in training and by the
    # pipeline that serves the model (longer prompts are read as several windows). CLIP's is 77; a
    # model of short captions trains ~12% faster a step at 24, since every cross-attention reads
    # only those. The text encoder keeps 77 positions, the SD 1.x layout.
    prompt_tokens: int = TEXT_POSITIONS
    caption_dropout: float = 0.1  # share of empty captions: what classifier-free guidance needs
    ema_decay: float = 0.999  # with warm-up: min(decay, (1 + step) / (10 + step))
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    snr_gamma: float = 0.0  # min-SNR loss weighting (Hang et al. 2023; 5 is their choice); 0 = plain MSE
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"

    # --- samples, evaluation, budget ---
    sample_steps: int = 20  # DPM-Solver++ steps for samples, evaluation and the exported default
    sample_guidance: float = 3.0  # guidance of the sample grids and the exported default
    sample_prompts: tuple[str, ...] = ()  # grid prompts; empty: 8 fixed shapes prompts, or the first captions
    eval_prompts: int = 48  # shapes: held-out prompts scored at the end; 0 = skip
    eval_guidances: tuple[float, ...] = (2.0, 3.0, 3.5)
    time_budget: float = 0.0  # minutes for the whole run (both stages, resumes included); 0 = none
    threads: int = 0  # CPU threads for torch; 0 = torch's default (1 beats 2 for tiny models on a busy machine)
    log_every: int = 10

    # --- export ---
    name: str = ""  # publish the result as models_dir/<name>; empty: only output_dir/pipeline
    models_dir: str = "models"
    description: str = ""
    examples: tuple[str, ...] = ()  # prompts the model draws well; the web page offers them
    negative_prompt: str = ""


STAGES = ("vae", "unet")  # in the order they run; a checkpoint records the one it was taken in


# =============================================================================================
# Configuration: defaults < checkpoint's config (resume) < --config TOML < --key value flags
# =============================================================================================


SETTINGS = Settings(TrainingConfig, what="training run", hidden=("vae_path",))


def load_toml_config(path: Path, base: TrainingConfig) -> TrainingConfig:
    try:
        return SETTINGS.read(path, base)
    except SettingsError as error:
        raise SystemExit(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = SETTINGS.parser(
        prog="python -m training.train_scratch",
        description="Train a small Stable Diffusion model from scratch (VAE, then UNet + text encoder) "
                    "and publish it into the model store.",
        epilog="Every setting of TrainingConfig is also a flag: --max-steps 500, --unet-channels 64,128, ... "
               "(see training/configs/demo.toml for a config file).",
    )
    parser.add_argument("--vae", dest="vae_path", metavar="PATH", help="reuse this trained VAE (skips stage a)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainingConfig, Path | None]:
    """The run's configuration and the checkpoint to resume from (None: a fresh run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return SETTINGS.parse(args, check_config)
    except SettingsError as error:
        parser.error(str(error))


def check_config(c: TrainingConfig) -> str | None:
    if c.data not in ("shapes", "manifest"):
        return f"data must be 'shapes' or 'manifest', got {c.data!r}"
    if c.data == "manifest" and not c.manifest:
        return "data = 'manifest' needs --manifest PATH (.json, .jsonl, .csv or .txt with link + caption)"
    if c.mixed_precision not in ("no", "fp16", "bf16"):
        return f"mixed_precision must be no, fp16 or bf16, got {c.mixed_precision!r}"
    if not (c.max_steps or c.num_epochs or c.time_budget):
        return "set at least one of max_steps, num_epochs or time_budget, or the run never ends"
    factor = 2 ** (len(c.vae_channels) - 1)
    if c.image_size % (factor * 2 ** (len(c.unet_channels) - 1)):
        return (f"image_size {c.image_size} must be divisible by {factor} (VAE) times "
                f"{2 ** (len(c.unet_channels) - 1)} (UNet levels)")
    if c.image_size % 8:
        return f"image_size must be a multiple of 8 (the bot's size rule), got {c.image_size}"
    if any(ch % c.vae_norm_groups for ch in c.vae_channels) or any(ch % c.unet_norm_groups for ch in c.unet_channels):
        return "every VAE / UNet channel count must be divisible by its norm groups"
    if not 8 <= c.prompt_tokens <= TEXT_POSITIONS:
        return (f"prompt_tokens must be from 8 to {TEXT_POSITIONS} (the text encoder's positions), "
                f"got {c.prompt_tokens}")
    if c.text_width % c.text_heads:
        return "text_width must be divisible by text_heads"
    if not 0 <= c.unet_plain_levels < len(c.unet_channels):
        return (f"unet_plain_levels must be from 0 to {len(c.unet_channels) - 1} (one level at least keeps "
                f"attention, or the prompt is never read), got {c.unet_plain_levels}")
    if c.decoder_steps < 0 or (c.decoder_steps and c.decoder_lr <= 0):
        return "decoder_steps must be 0 (off) or more, with a positive decoder_lr"
    if c.decoder_steps and c.vae_batch_size < 2:
        return "decoder_steps needs vae_batch_size 2 or more (half training images, half random colours)"
    if c.snr_gamma < 0:
        return f"snr_gamma must be 0 (off) or positive, got {c.snr_gamma}"
    if not 0 <= c.caption_dropout < 1 or not 0 <= c.ema_decay < 1:
        return "caption_dropout and ema_decay must be in [0, 1)"
    if min(c.train_batch_size, c.vae_batch_size, c.eval_batch_size, c.gradient_accumulation_steps) < 1:
        return "batch sizes and gradient_accumulation_steps must be at least 1"
    return None


# =============================================================================================
# Data: images as uint8 tensors [N, 3, H, W] and their captions
# =============================================================================================


def load_data(c: TrainingConfig) -> Dataset:
    started = time.perf_counter()
    if c.data == "shapes":
        specs, pictures = shapes.render_dataset(c.num_images, c.seed, c.image_size, c.modifier_prob)
        captions = [shapes.caption(s) for s in specs]
    else:
        pairs = training_pairs(c.manifest)
        pictures = [load_image(p, c.image_size) for p, _ in pairs]
        captions = [caption for _, caption in pairs]
    data = Dataset.from_pictures(pictures, captions)
    log(f"data: {len(captions)} images ({c.data}) in {time.perf_counter() - started:.1f} s")
    return data


# =============================================================================================
# main: the stages in order (training.scratch_vae, _unet, _decoder, _export)
# =============================================================================================


def train(c: TrainingConfig, resume: Path | None = None) -> dict:
    """Run both stages, evaluate, export. Returns paths and the final step (for callers and tests)."""
    with torch_threads(c.threads):
        return _train(c, resume)


def _train(c: TrainingConfig, resume: Path | None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # 1. The run folder (its log trimmed to the checkpoint when resuming), the device, the data.
    hide_progress_bars()
    checkpoint = load_checkpoint(resume)
    if checkpoint:
        log(f"resuming from {resume}: stage {checkpoint['stage']}, step {checkpoint['step']}")
    run = Run(c, checkpoint, script="training.train_scratch", stages=STAGES)
    # Gradient accumulation is done by hand (stage b only), not by the Accelerator, so the VAE
    # stage's steps stay plain steps.
    accelerator = Accelerator(mixed_precision=c.mixed_precision)
    set_seed(c.seed)
    log(f"device {accelerator.device}, mixed precision {c.mixed_precision}, output {run.dir}")
    data = load_data(c)

    # 2. Stage a: the VAE; then every image encoded once.
    vae, checkpoint = stage_a(c, run, data, accelerator, checkpoint)
    vae.to(accelerator.device)
    latents = encode_latents(c, run, vae, data, accelerator.device, fresh=not c.vae_path and not checkpoint)

    # 3. Stage b: UNet + text encoder.
    pipe, steps = train_unet(c, run, data, vae, latents, accelerator, checkpoint)

    # 4. Stage c: the decoder, refined (pipe holds this same VAE).
    refine_decoder(c, run, data, vae, accelerator)

    # 5. Export first (the model is usable even if evaluation fails), then evaluate exactly the
    # float16 weights that shipped, computed in float32 as the bot does on a CPU.
    published = export(pipe, c, run, steps)
    report = None
    if c.data == "shapes" and c.eval_prompts:
        quietly_to(pipe, torch.float32, accelerator.device)
        report = evaluate(pipe, c, run)
    log(f"done in {run.elapsed() / 60:.1f} min (training time, resumes included)")
    return {"output_dir": run.dir, "step": steps, "pipeline": run.dir / "pipeline", "published": published,
            "eval": report}


def main(argv: Sequence[str] | None = None) -> int:
    return run_script("train_scratch", SettingsError, lambda: train(*parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
