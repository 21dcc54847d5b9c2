"""Train a small Stable Diffusion model from scratch and publish it into the model store.

The shipped demo model (how long it takes on a CPU is in the README, "The demo model"; `python
bench/training.py` measures steps per second on the machine at hand):

    python -m training.train_scratch --config training/configs/demo.toml --name demo --models-dir models

Resume an interrupted run (same output folder; flags given now override the saved config):

    python -m training.train_scratch --resume runs/demo/checkpoint.pt

Other uses:

    python -m training.train_scratch --time-budget 3 --max-steps 100000         # stop after 3 minutes
    python -m training.train_scratch --data manifest --manifest data/logs-train.json --image-size 64
    python -m training.train_scratch --vae runs/demo/vae --config training/configs/demo.toml  # reuse a VAE

The recipe (measured in the README, "The demo model"): (a) a tiny AutoencoderKL (32 px -> 8x8x4) is
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
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bot.files.atomic import write_text_atomic
from bot.models.publish import publish_variant
from training import shapes
from training.common.data import Batches, Dataset, grid, load_image, to_pil, to_unit_range
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw, encode_all, quietly_to, sample_latents, tokenize_once
from training.common.run import (Interrupted, Run, hide_progress_bars, load_checkpoint, log, run_script,
                                 stop_requested, torch_threads)
from training.manifest import training_pairs
from training.settings import Settings, SettingsError

TEXT_POSITIONS = 77  # the text encoder's positions: CLIP's window, the SD 1.x layout


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
DEFAULT_SAMPLE_SPECS = [
    shapes.Spec("red", "circle", "blue"), shapes.Spec("green", "square", "white", "small", "left"),
    shapes.Spec("blue", "triangle", "yellow", "large"), shapes.Spec("yellow", "circle", "black", None, "top"),
    shapes.Spec("purple", "square", "orange"), shapes.Spec("orange", "triangle", "green", "small", "bottom"),
    shapes.Spec("white", "circle", "red", "large", "right"), shapes.Spec("black", "square", "purple", "small"),
]


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
# Models
# =============================================================================================


def build_vae(c: TrainingConfig):
    from diffusers import AutoencoderKL

    levels = len(c.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(c.vae_channels), layers_per_block=1, norm_num_groups=c.vae_norm_groups,
        sample_size=c.image_size,
    )


def build_unet(c: TrainingConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    levels, plain = len(c.unet_channels), c.unet_plain_levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * (levels - plain)
    up = ("CrossAttnUpBlock2D",) * (levels - plain) + ("UpBlock2D",) * plain
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        block_out_channels=tuple(c.unet_channels), layers_per_block=c.unet_layers_per_block,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=c.text_width, attention_head_dim=c.unet_attention_heads,
        norm_num_groups=c.unet_norm_groups,
    )


def build_text_encoder(c: TrainingConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=TEXT_POSITIONS,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=c.text_width,
    ))


def load_vae(path: str | Path):
    from diffusers import AutoencoderKL

    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    return AutoencoderKL.from_pretrained(str(path))


def dpm_scheduler(c: TrainingConfig):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule=c.beta_schedule, prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
        steps_offset=1,  # what SD configs carry (diffusers warns otherwise); unused by "linspace" spacing
    )


class EMA:
    """Exponential moving average of parameters, with warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.shadow = [p.detach().float().clone() for p in parameters]

    @torch.no_grad()
    def update(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        for shadow, p in zip(self.shadow, parameters, strict=True):
            p.copy_(shadow.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("the checkpoint's EMA does not match this model (different architecture?)")
        self.decay, self.steps = state["decay"], state["steps"]
        self.shadow = [s.to(t.device) for s, t in zip(state["shadow"], self.shadow)]


# =============================================================================================
# Stage a: the VAE
# =============================================================================================


def train_vae(c: TrainingConfig, run: Run, data: Dataset, accelerator, checkpoint: dict | None):
    """Train the autoencoder (MSE + a tiny KL term) for vae_steps, or its share of the time budget."""
    from diffusers.optimization import get_scheduler

    # 1. The network, its optimizer and schedule, the data order; resumed where a checkpoint says.
    vae = build_vae(c)
    optimizer = adamw(vae.parameters(), lr=c.vae_lr, weight_decay=0.0)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=min(100, c.vae_steps // 10))
    vae, optimizer, lr_schedule = accelerator.prepare(vae, optimizer, lr_schedule)
    generator = torch.Generator().manual_seed(c.seed + 1)
    batches = Batches(len(data.captions), c.vae_batch_size, generator)
    progress = Progress(optimizer, lr_schedule, generator, {"batches": batches})
    if checkpoint:
        accelerator.unwrap_model(vae).load_state_dict(checkpoint["models"]["vae"])
        progress.load_state_dict(checkpoint)
        log(f"vae: resumed at step {progress.step}")

    def state() -> dict:
        return {"stage": "vae", "models": {"vae": accelerator.unwrap_model(vae).state_dict()},
                **progress.state_dict()}

    # 2. The loop, until vae_steps or the stage's share of the time budget.
    deadline = c.time_budget * 60 * c.vae_time_fraction if c.time_budget else math.inf
    vae.train()
    losses, timer = [], StepTimer(progress.step)
    while progress.step < c.vae_steps and run.elapsed() < deadline and not stop_requested():
        x = to_unit_range(data.images[batches.next()]).to(accelerator.device)
        losses.append(vae_loss(c, vae, x, generator, accelerator))
        progress.optimizer_step(accelerator, vae.parameters(), c.max_grad_norm)
        step = progress.step
        if step % c.log_every == 0 or step == c.vae_steps:
            seconds = timer.lap(step)
            row = {"stage": "vae", "step": step, "mse": float(np.mean(losses)), "lr": progress.lr(),
                   "s_per_step": round(seconds, 4)}
            run.write(row)
            log(f"vae {step}/{c.vae_steps}  mse {row['mse']:.5f}  {seconds:.3f} s/step  {run.elapsed() / 60:.1f} min")
            losses = []
        if c.save_every and step % c.save_every == 0:
            run.save_checkpoint(state())
    run.save_checkpoint(state())
    if stop_requested():
        raise Interrupted(run.dir / "checkpoint.pt", progress.step)
    if progress.step < c.vae_steps:
        log(f"vae: stopped at step {progress.step} (its share of the time budget is spent)")

    # 3. What it makes of the first images, to look at.
    vae = accelerator.unwrap_model(vae)
    save_reconstructions(vae, data, run, accelerator.device)
    accelerator.free_memory()
    return vae


def vae_loss(c: TrainingConfig, vae, x: torch.Tensor, generator: torch.Generator, accelerator) -> float:
    """Reconstruction MSE of a latent sampled from the posterior, plus the KL term; backpropagated.
    Returns the MSE."""
    with accelerator.autocast():
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(accelerator.device)
        z = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(z).sample
        mse = F.mse_loss(reconstruction.float(), x)
        loss = mse + c.vae_kl_weight * posterior.kl().mean()
    accelerator.backward(loss)
    return mse.item()


@torch.no_grad()
def save_reconstructions(vae, data: Dataset, run: Run, device, name: str = "vae_reconstruction.png") -> None:
    """The first 8 images above their reconstructions (posterior means, decoded)."""
    vae.eval()
    x = to_unit_range(data.images[:8]).to(device)
    reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample
    pictures = [to_pil(t) for t in torch.cat([x, reconstruction])]
    grid(pictures, columns=len(x)).save(run.dir / "samples" / name)


def stage_a(c: TrainingConfig, run: Run, data: Dataset, accelerator, checkpoint: dict | None):
    """The VAE: reused (--vae), finished in an earlier session of this run, or trained now. Returns
    it and the checkpoint stage b resumes from (None: stage b starts fresh)."""
    if c.vae_path:
        vae = load_vae(c.vae_path)
        log(f"vae: reusing {c.vae_path} (scaling_factor {vae.config.scaling_factor:.4f})")
        return vae, checkpoint
    if checkpoint and checkpoint["stage"] == "unet":
        return load_vae(run.dir / "vae"), checkpoint
    return train_vae(c, run, data, accelerator, checkpoint), None


def encode_latents(c: TrainingConfig, run: Run, vae, data: Dataset, device,
                   fresh: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's latent distribution (mean, std), encoded once. A `fresh` VAE (trained in this
    session) records the factor that gives latents unit std, and is saved with it."""
    started = time.perf_counter()
    means, stds = encode_all(vae, data, device)
    if fresh:
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        vae.save_pretrained(str(run.dir / "vae"), safe_serialization=True)
        log(f"vae: saved {run.dir / 'vae'}")
    log(f"latents {tuple(means.shape)} encoded in {time.perf_counter() - started:.1f} s; std {means.std():.4f}, "
        f"scaling_factor {vae.config.scaling_factor:.4f}")
    return means, stds


# =============================================================================================
# Stage b: UNet + text encoder on latents
# =============================================================================================


def make_pipeline(c: TrainingConfig, vae, text_encoder, unet, tokenizer):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=dpm_scheduler(c), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, c: TrainingConfig, prompts: Sequence[str], seeds: Sequence[int],
             guidance: float) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(prompts), c.eval_batch_size):
        chunk = slice(start, start + c.eval_batch_size)
        images += pipe(
            list(prompts[chunk]), num_inference_steps=c.sample_steps, guidance_scale=guidance,
            height=c.image_size, width=c.image_size, negative_prompt=None,
            generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]],
        ).images
    return images


def sample_prompts(c: TrainingConfig, data: Dataset) -> tuple[list[str], list[shapes.Spec] | None]:
    if c.sample_prompts:
        return list(c.sample_prompts), None
    if c.data == "shapes":
        return [shapes.caption(s) for s in DEFAULT_SAMPLE_SPECS], DEFAULT_SAMPLE_SPECS
    return list(dict.fromkeys(data.captions))[:8], None


@dataclass
class Inputs:
    """Stage b's data, prepared once: latent distributions and every caption's token ids."""

    latents: tuple[torch.Tensor, torch.Tensor]  # mean, std of each image's latent distribution
    scale: float  # the VAE's scaling_factor
    ids: torch.Tensor  # token ids; row 0 is "", the unconditional caption
    caption_rows: torch.Tensor  # each image's row of ids


def prepare_inputs(data: Dataset, vae, latents: tuple[torch.Tensor, torch.Tensor], tokenizer, device) -> Inputs:
    """Every distinct caption tokenized once, as the pipeline will; "" (row 0) is for guidance."""
    ids, row_of = tokenize_once(tokenizer, ["", *sorted(set(data.captions))], device)
    caption_rows = torch.tensor([row_of[text] for text in data.captions])
    return Inputs(latents, float(vae.config.scaling_factor), ids, caption_rows)


@dataclass
class StageB:
    """What stage b trains and keeps: UNet + text encoder (prepared by accelerate), their EMA
    copies, and the loop's resumable state."""

    unet: Any
    text_encoder: Any
    ema_unet: Any
    ema_text_encoder: Any
    parameters: list[torch.nn.Parameter]  # of unet and text_encoder: what the optimizer and EMA follow
    ema: EMA
    batches: Batches
    progress: Progress
    alphas: torch.Tensor  # the noise schedule's cumulative alphas, on the training device

    def state(self, accelerator) -> dict:
        return {"stage": "unet",
                "models": {"unet": accelerator.unwrap_model(self.unet).state_dict(),
                           "text_encoder": accelerator.unwrap_model(self.text_encoder).state_dict()},
                "ema": self.ema.state_dict(), **self.progress.state_dict()}

    def resume(self, checkpoint: dict, accelerator) -> None:
        accelerator.unwrap_model(self.unet).load_state_dict(checkpoint["models"]["unet"])
        accelerator.unwrap_model(self.text_encoder).load_state_dict(checkpoint["models"]["text_encoder"])
        self.ema.load_state_dict(checkpoint["ema"])
        self.progress.load_state_dict(checkpoint)
        log(f"unet: resumed at step {self.progress.step}, epoch {self.batches.epoch}")


def build_stage_b(c: TrainingConfig, latent_size: int, images: int, accelerator) -> StageB:
    """The networks (seeded), their EMA copies, AdamW, the LR schedule and the data order."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    torch.manual_seed(c.seed)
    unet = build_unet(c, latent_size=latent_size)
    text_encoder = build_text_encoder(c)
    ema_unet = build_unet(c, latent_size=latent_size).requires_grad_(False)
    ema_text_encoder = build_text_encoder(c).requires_grad_(False)
    log(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")
    noise_scheduler = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start,
                                    beta_end=c.beta_end, beta_schedule=c.beta_schedule, prediction_type="epsilon")
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = adamw(parameters, lr=c.learning_rate, weight_decay=c.weight_decay)
    generator = torch.Generator().manual_seed(c.seed + 2)
    batches = Batches(images, c.train_batch_size, generator)
    lr_schedule = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.lr_warmup_steps,
                                num_training_steps=total_steps(c, batches))
    ema = EMA(parameters, c.ema_decay)
    unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(unet, text_encoder, optimizer, lr_schedule)
    ema_unet.to(accelerator.device)
    ema_text_encoder.to(accelerator.device)
    return StageB(unet, text_encoder, ema_unet, ema_text_encoder, parameters, ema, batches,
                  Progress(optimizer, lr_schedule, generator, {"batches": batches}),
                  noise_scheduler.alphas_cumprod.to(accelerator.device))


def total_steps(c: TrainingConfig, batches: Batches) -> int:
    """The length of the LR schedule: max_steps or num_epochs, whichever ends first."""
    total = c.max_steps or (c.num_epochs * batches.steps_per_epoch()) or 10**9
    if c.num_epochs and c.max_steps:
        total = min(total, c.num_epochs * batches.steps_per_epoch())
    return total


def unet_loss(c: TrainingConfig, b: StageB, inputs: Inputs, index: torch.Tensor, accelerator) -> float:
    """Epsilon-prediction MSE on the images at `index` (captions dropped at random for guidance),
    backpropagated. Every random number comes from the loop's generator, in a fixed order."""
    device, generator = accelerator.device, b.progress.generator
    latents = sample_latents(inputs.latents, index, inputs.scale, generator, device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, c.num_train_timesteps, (len(index),), generator=generator).to(device)
    drop = torch.rand(len(index), generator=generator) < c.caption_dropout
    tokens = inputs.ids[torch.where(drop, 0, inputs.caption_rows[index]).to(device)]
    a = b.alphas[timesteps].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # what DDPMScheduler.add_noise does
    with accelerator.autocast():
        encoded = b.text_encoder(tokens)[0]
        prediction = b.unet(noisy, timesteps, encoded).sample
    loss = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if c.snr_gamma:
        # Min-SNR: the nearly clean timesteps, easy to denoise, stop dominating the gradient.
        snr = (a / (1 - a)).flatten()
        loss = loss * snr.clamp(max=c.snr_gamma) / snr
    loss = loss.mean()
    accelerator.backward(loss / c.gradient_accumulation_steps)
    return loss.item()


def stop_reason(c: TrainingConfig, run: Run, b: StageB) -> str | None:
    if stop_requested():
        return "interrupted (Ctrl+C)"
    if c.max_steps and b.progress.step >= c.max_steps:
        return f"max_steps {c.max_steps} reached"
    if c.num_epochs and b.batches.epochs_done() >= c.num_epochs:
        return f"{c.num_epochs} epochs done"
    if run.budget_left() <= 0:
        return f"time budget of {c.time_budget} min spent"
    return None


def log_unet_step(c: TrainingConfig, run: Run, b: StageB, losses: list[float], seconds: float) -> None:
    step = b.progress.step
    row = {"stage": "unet", "step": step, "epoch": b.batches.epoch, "loss": float(np.mean(losses)),
           "lr": b.progress.lr(), "s_per_step": round(seconds, 4)}
    run.write(row)
    left = run.budget_left()
    log(f"unet {step}/{c.max_steps or '-'}  epoch {b.batches.epoch}  loss {row['loss']:.4f}  "
        f"{seconds:.3f} s/step  {run.elapsed() / 60:.1f} min"
        + (f"  ({left / 60:.1f} min left)" if left < math.inf else ""))


def ema_pipeline(c: TrainingConfig, b: StageB, vae, tokenizer):
    """A pipeline of the EMA weights (float32, on the training device)."""
    b.ema.copy_to(list(b.ema_unet.parameters()) + list(b.ema_text_encoder.parameters()))
    return make_pipeline(c, vae, b.ema_text_encoder, b.ema_unet, tokenizer)


def samples(c: TrainingConfig, run: Run, pipe, data: Dataset, step: int) -> None:
    """A grid of the sample prompts, scored by training.shapes.judge where they are shapes."""
    prompts, specs = sample_prompts(c, data)
    seeds = [shapes.HELD_OUT_SEED_BASE + i for i in range(len(prompts))]
    images = generate(pipe, c, prompts, seeds, c.sample_guidance)
    grid(images).save(run.dir / "samples" / f"unet_{step:06d}.png")
    row: dict = {"stage": "sample", "step": step}
    if specs:
        row.update(shapes.score([shapes.judge(im, s) for im, s in zip(images, specs)]))
    run.write(row)
    log(f"samples at step {step}: {row}")


def train_unet(c: TrainingConfig, run: Run, data: Dataset, vae, latents: tuple[torch.Tensor, torch.Tensor],
               accelerator, checkpoint: dict | None):
    """Stage b on precomputed latent distributions (mean, std). Returns the EMA pipeline (float32,
    on the training device) and the last step."""
    from transformers import CLIPTokenizer

    from bot.engine.single_file import CLIP_TOKENIZER_DIR  # the real CLIP vocabulary shipped with the bot

    # 1. The inputs, prepared once; the networks, optimizer, schedule and data order, resumed where
    # a checkpoint says.
    vae.requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), model_max_length=c.prompt_tokens)
    inputs = prepare_inputs(data, vae, latents, tokenizer, accelerator.device)
    b = build_stage_b(c, latents[0].shape[-1], len(data.captions), accelerator)
    if checkpoint:
        b.resume(checkpoint, accelerator)

    # 2. The loop: gradients accumulated over micro-batches, one optimizer step, the EMA follows.
    b.unet.train()
    b.text_encoder.train()
    losses, timer, sampled = [], StepTimer(b.progress.step), -1
    while (reason := stop_reason(c, run, b)) is None:
        for _ in range(c.gradient_accumulation_steps):
            losses.append(unet_loss(c, b, inputs, b.batches.next(), accelerator))
        b.progress.optimizer_step(accelerator, b.parameters, c.max_grad_norm)
        b.ema.update(b.parameters)
        step = b.progress.step
        if step % c.log_every == 0:
            log_unet_step(c, run, b, losses, timer.lap(step))
            losses = []
        if c.save_every and step % c.save_every == 0:
            run.save_checkpoint(b.state(accelerator))
        if c.sample_every and step % c.sample_every == 0:
            samples(c, run, ema_pipeline(c, b, vae, tokenizer), data, step)
            sampled = step

    # 3. The last checkpoint, and samples of the last step.
    log(f"unet: stopping at step {b.progress.step}: {reason}")
    run.save_checkpoint(b.state(accelerator))
    if stop_requested():  # not finished: no samples, no export; the checkpoint resumes it
        raise Interrupted(run.dir / "checkpoint.pt", b.progress.step)
    if sampled != b.progress.step:
        samples(c, run, ema_pipeline(c, b, vae, tokenizer), data, b.progress.step)
    return ema_pipeline(c, b, vae, tokenizer), b.progress.step


# =============================================================================================
# Stage c: the decoder, refined
# =============================================================================================


def refine_decoder(c: TrainingConfig, run: Run, data: Dataset, vae, accelerator) -> None:
    """Train `vae`'s decoder for decoder_steps with its encoder frozen (see TrainingConfig)."""
    from diffusers.optimization import get_scheduler

    if not c.decoder_steps:
        return
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(c.seed + 3)
    sources = [(data.images, Batches(len(data.captions), c.vae_batch_size // 2, generator))]
    if c.data == "shapes":
        pictures = shapes.render_any_colours(len(data.captions), c.seed + 3, c.image_size, c.modifier_prob)
        other = Dataset.from_pictures(pictures, [""] * len(pictures)).images
        sources.append((other, Batches(len(other), c.vae_batch_size - c.vae_batch_size // 2, generator)))
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for parameter in trained:
        parameter.requires_grad_(True)
    # The VAE stage's loss and step: with the encoder frozen only the decoder learns (the KL term
    # reaches the encoder alone, so it changes nothing here).
    optimizer = adamw(trained, lr=c.decoder_lr, weight_decay=0.0)
    progress = Progress(optimizer, get_scheduler("constant", optimizer), generator, {})
    vae.train()
    losses, timer = [], StepTimer(0)
    while progress.step < c.decoder_steps:
        x = to_unit_range(torch.cat([images[batches.next()] for images, batches in sources])).to(accelerator.device)
        losses.append(vae_loss(c, vae, x, generator, accelerator))
        progress.optimizer_step(accelerator, trained, c.max_grad_norm)
        step = progress.step
        if step % c.log_every == 0 or step == c.decoder_steps:
            seconds = timer.lap(step)
            run.write({"stage": "decoder", "step": step, "mse": float(np.mean(losses)), "s_per_step": round(seconds, 4)})
            log(f"decoder {step}/{c.decoder_steps}  mse {np.mean(losses):.5f}  {seconds:.3f} s/step")
            losses = []
    vae.requires_grad_(False)
    vae.eval()
    save_reconstructions(vae, data, run, accelerator.device, "decoder_reconstruction.png")
    log(f"decoder: refined in {time.perf_counter() - started:.1f} s")


# =============================================================================================
# Evaluation and export
# =============================================================================================


def evaluate(pipe, c: TrainingConfig, run: Run) -> dict:
    """Score held-out prompts with training.shapes.judge at each of eval_guidances."""
    prompts = shapes.held_out_prompts(c.eval_prompts, seed=c.seed)
    report: dict = {"prompts": len(prompts), "steps": c.sample_steps, "by_guidance": {}}
    for guidance in c.eval_guidances:
        started = time.perf_counter()
        images = generate(pipe, c, [p.prompt for p in prompts], [p.seed for p in prompts], guidance)
        verdicts = [shapes.judge(image, p.spec) for image, p in zip(images, prompts)]
        scores = shapes.score(verdicts)
        scores["seconds"] = round(time.perf_counter() - started, 1)
        report["by_guidance"][str(guidance)] = scores
        grid(images).save(run.dir / "samples" / f"eval_guidance_{guidance}.png")
        log(f"eval guidance {guidance}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    write_text_atomic(run.dir / "eval.json", json.dumps(report, indent=2) + "\n")
    run.write({"stage": "eval", "step": 0, **{f"g{g}_{k}": v for g, s in report["by_guidance"].items()
                                              for k, v in s.items()}})
    return report


def variant_defaults(c: TrainingConfig) -> dict:
    # Far above the size it learned a model draws garbage, slowly: four times its size is the limit.
    return {"steps": c.sample_steps, "guidance": c.sample_guidance, "width": c.image_size,
            "height": c.image_size, "scheduler": "dpm++", "negative_prompt": c.negative_prompt or None,
            "max_side": 4 * c.image_size}


def describe(c: TrainingConfig, steps: int) -> str:
    if c.description:
        return c.description
    if c.data == "shapes":
        return (f"Tiny demo model trained from scratch on coloured shapes ({c.image_size} px, {steps} steps): "
                "try 'a red circle on a blue background'")
    return f"Trained from scratch on {Path(c.manifest).name} ({c.image_size} px, {steps} steps)"


def export(pipe, c: TrainingConfig, run: Run, steps: int) -> Path | None:
    """The pipeline in float16 (converted in place) into output_dir/pipeline and, with a name,
    published into the model store."""
    quietly_to(pipe, torch.float16)
    folder = run.dir / "pipeline"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20
    log(f"saved {folder} ({size:.1f} MiB of float16 weights)")
    if not c.name:
        return None
    published = publish_variant(c.models_dir, c.name,
                                lambda staging: pipe.save_pretrained(staging, safe_serialization=True),
                                variant_defaults(c), describe(c, steps),
                                fields={"examples": list(c.examples)} if c.examples else None)
    log(f"published model '{c.name}' at {published}")
    return published


# =============================================================================================
# main
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
