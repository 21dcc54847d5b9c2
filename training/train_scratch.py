"""Train a small Stable Diffusion model from scratch and publish it into the model store.

The shipped demo model (about 40 minutes on an idle 2-core CPU, much less on a GPU):

    python -m training.train_scratch --config training/configs/demo.toml --name demo --models-dir models

Timings of the demo config on the 2-core development machine (torch 2.13 CPU, 2 threads), measured
while other work kept the load at 2-3: a VAE step (batch 64) 1.3-2.2 s, encoding the 20,000 images
84 s, a UNet + text encoder step (batch 64) 1.7-2.5 s (median ~2.3 s), evaluation ~19 s per guidance
(48 images, 20 steps). On an idle machine a UNet step takes ~0.85 s (../shared/notes/demo-model.md),
so the run takes ~40 min: VAE ~7, encoding ~0.5, UNet ~30, samples, checkpoints, evaluation and
export ~2. At the loaded speeds the VAE stops at its 12-minute share and the 60-minute time budget
ends the UNet stage after roughly 1,200 of its 2,100 steps (then it evaluates and exports as usual).

Resume an interrupted run (same output folder; flags given now override the saved config):

    python -m training.train_scratch --resume runs/demo/checkpoint.pt

Other uses:

    python -m training.train_scratch --time-budget 3 --max-steps 100000         # stop after 3 minutes
    python -m training.train_scratch --data manifest --manifest data/logs-train.json --image-size 64
    python -m training.train_scratch --vae runs/demo/vae --config training/configs/demo.toml  # reuse a VAE

The recipe (measured in ../shared/notes/demo-model.md): (a) a tiny AutoencoderKL (32 px -> 8x8x4) is
trained first on the images; (b) every image is encoded once, latents scaled to unit variance (the
factor is recorded as the VAE's `scaling_factor`), and a UNet2DConditionModel is trained jointly
with a small CLIP text encoder on them: epsilon prediction, scaled_linear betas, 10% empty
captions (for classifier-free guidance), AdamW, gradient clipping, an EMA of both networks. The
EMA weights are sampled with DPM-Solver++ and exported as a float16 StableDiffusionPipeline with
the real CLIP tokenizer.

Configuration: the `TrainingConfig` defaults below, then a TOML file (`--config`), then `--key value`
flags for any field (`--max-steps 500`, `--unet-channels 64,128`). The final config is written
to `<output_dir>/config.toml`, next to `checkpoint.pt`.

Output folder (`output_dir`):

    config.toml       the final configuration of this run
    checkpoint.pt     models, optimizer, LR schedule, EMA, step, data order, RNG (written atomically)
    log.jsonl         one JSON object per line: losses, learning rate, seconds per step, sample scores
    vae/              the trained VAE (diffusers folder, scaling_factor recorded)
    samples/          reconstruction grid of the VAE, sample grids of the EMA weights every N steps
    pipeline/         the final float16 pipeline
    eval.json         held-out prompts scored by training.shapes.judge (shapes data only)

and, with `--name NAME`, the pipeline published atomically as `<models_dir>/NAME` (bot.models.publish).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

# OpenMP threads that spin while they wait make every step several times slower on a CPU shared
# with other work (measured here: a UNet step took 9-28 s with 2 spinning threads, 2.4 s with
# passive ones, at load 4.7 on 2 cores). Takes effect only if set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from bot.models.atomic import write_atomic, write_text_atomic  # noqa: E402
from bot.models.publish import publish_variant  # noqa: E402
from bot.models.toml_writer import to_toml  # noqa: E402
from training import shapes  # noqa: E402
from training.manifest import training_pairs  # noqa: E402
from training.settings import Settings, SettingsError  # noqa: E402


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

    # --- stage b: UNet + text encoder ---
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers_per_block: int = 2
    unet_attention_heads: int = 8
    unet_norm_groups: int = 32
    text_width: int = 64  # hidden size of the CLIP text encoder (full 49408-token vocabulary)
    text_layers: int = 2
    text_heads: int = 4
    caption_dropout: float = 0.1  # share of empty captions: what classifier-free guidance needs
    ema_decay: float = 0.999  # with warm-up: min(decay, (1 + step) / (10 + step))
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
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
    negative_prompt: str = ""


STAGES = ("vae", "unet")
DEFAULT_SAMPLE_SPECS = [
    shapes.Spec("red", "circle", "blue"), shapes.Spec("green", "square", "white"),
    shapes.Spec("blue", "triangle", "yellow"), shapes.Spec("yellow", "circle", "black"),
    shapes.Spec("purple", "square", "orange"), shapes.Spec("orange", "triangle", "green"),
    shapes.Spec("white", "circle", "red"), shapes.Spec("black", "square", "purple"),
]


def log(message: str) -> None:
    print(message, flush=True)


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
    if c.text_width % c.text_heads:
        return "text_width must be divisible by text_heads"
    if not 0 <= c.caption_dropout < 1 or not 0 <= c.ema_decay < 1:
        return "caption_dropout and ema_decay must be in [0, 1)"
    if min(c.train_batch_size, c.vae_batch_size, c.eval_batch_size, c.gradient_accumulation_steps) < 1:
        return "batch sizes and gradient_accumulation_steps must be at least 1"
    return None


# =============================================================================================
# Data: images as uint8 tensors [N, 3, H, W] and their captions
# =============================================================================================

# (image file, caption) pairs of a manifest; the reading lives in training.manifest.
read_manifest = training_pairs


def load_image(path: Path, size: int) -> Image.Image:
    """RGB (transparency over white), centre-cropped to a square, resized to `size`."""
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC)


@dataclass
class Dataset:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    captions: list[str]
    specs: list[shapes.Spec] | None = None  # shapes data: what each image shows


def load_data(c: TrainingConfig) -> Dataset:
    started = time.perf_counter()
    if c.data == "shapes":
        specs, images = shapes.render_dataset(c.num_images, c.seed, c.image_size, c.modifier_prob)
        captions = [shapes.caption(s) for s in specs]
    else:
        specs = None
        pairs = training_pairs(c.manifest)
        images = [load_image(p, c.image_size) for p, _ in pairs]
        captions = [caption for _, caption in pairs]
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images]).transpose(0, 3, 1, 2)
    log(f"data: {len(captions)} images ({c.data}) in {time.perf_counter() - started:.1f} s")
    return Dataset(torch.from_numpy(np.ascontiguousarray(array)), captions, specs)


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


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

    levels = len(c.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        block_out_channels=tuple(c.unet_channels), layers_per_block=c.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=c.text_width, attention_head_dim=c.unet_attention_heads,
        norm_num_groups=c.unet_norm_groups,
    )


def build_text_encoder(c: TrainingConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=77,
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


def adamw(parameters, **options) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch offers that (CPU since 2.4, CUDA)."""
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(parameters, **options)


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
# Checkpoints, log, grids
# =============================================================================================


class Run:
    """The run's folder, clock and log. `elapsed()` counts training time across resumes."""

    def __init__(self, c: TrainingConfig, checkpoint: dict | None) -> None:
        self.config = c
        self.dir = Path(c.output_dir)
        (self.dir / "samples").mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.before = float(checkpoint["elapsed"]) if checkpoint else 0.0
        self.log_path = self.dir / "log.jsonl"
        if checkpoint:
            self._trim_log(STAGES.index(checkpoint["stage"]), checkpoint["step"])
        elif self.log_path.exists():
            self.log_path.unlink()  # a fresh run in an old folder starts a fresh log
        write_text_atomic(self.dir / "config.toml",
                          "# The final configuration of this training run (python -m training.train_scratch).\n"
                          + to_toml(asdict(c)))

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def budget_left(self) -> float:
        return math.inf if not self.config.time_budget else self.config.time_budget * 60 - self.elapsed()

    def write(self, row: dict) -> None:
        row = {**row, "elapsed": round(self.elapsed(), 1)}
        with open(self.log_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")

    def _trim_log(self, stage: int, step: int) -> None:
        """Drop rows written after the checkpoint (by the run that was cut short)."""
        if not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                order = (STAGES.index(row["stage"]) if row.get("stage") in STAGES else 1, row.get("step", 0))
            except (ValueError, KeyError):
                continue
            if order <= (stage, step):
                keep.append(line)
        write_text_atomic(self.log_path, "".join(line + "\n" for line in keep))

    def save_checkpoint(self, state: dict) -> None:
        checkpoint = {**state, "elapsed": self.elapsed(), "config": asdict(self.config)}
        write_atomic(self.dir / "checkpoint.pt", lambda f: torch.save(checkpoint, f), binary=True)


def rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def grid(images: Sequence[Image.Image], columns: int = 8, scale: int = 3) -> Image.Image:
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w * scale, rows * h * scale), (128, 128, 128))
    for i, image in enumerate(images):
        sheet.paste(image.resize((w * scale, h * scale), Image.Resampling.NEAREST),
                    ((i % columns) * w * scale, (i // columns) * h * scale))
    return sheet


class Batches:
    """Shuffled passes over N items, drawn from one generator: resumable from (epoch, order, pos)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.epoch, self.pos = 0, 0
        self.order = torch.randperm(n, generator=generator)

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n and self.pos > 0:
            self.epoch += 1
            self.pos = 0
            self.order = torch.randperm(self.n, generator=self.generator)
        picked = self.order[self.pos: self.pos + self.batch_size]
        if len(picked) < self.batch_size:  # fewer items than one batch: repeat them
            picked = picked.repeat(math.ceil(self.batch_size / len(picked)))[: self.batch_size]
        self.pos += self.batch_size
        return picked

    def epochs_done(self) -> int:
        """Complete passes: the current one counts once too few items are left for a batch."""
        return self.epoch + (self.pos + self.batch_size > self.n)

    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.order = state["epoch"], state["pos"], state["order"]


# =============================================================================================
# Stage a: the VAE
# =============================================================================================


def train_vae(c: TrainingConfig, run: Run, data: Dataset, accelerator, checkpoint: dict | None):
    """Train the autoencoder (MSE + a tiny KL term) for vae_steps, or its share of the time budget."""
    from diffusers.optimization import get_scheduler

    vae = build_vae(c)
    optimizer = adamw(vae.parameters(), lr=c.vae_lr, weight_decay=0.0)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=min(100, c.vae_steps // 10))
    vae, optimizer, lr_schedule = accelerator.prepare(vae, optimizer, lr_schedule)
    generator = torch.Generator().manual_seed(c.seed + 1)
    batches = Batches(len(data.captions), c.vae_batch_size, generator)
    step = 0
    if checkpoint:
        accelerator.unwrap_model(vae).load_state_dict(checkpoint["models"]["vae"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_schedule.load_state_dict(checkpoint["lr_schedule"])
        batches.load_state_dict(checkpoint["batches"])
        set_rng_state(generator, checkpoint["rng"])
        step = checkpoint["step"]
        log(f"vae: resumed at step {step}")

    def state() -> dict:
        return {"stage": "vae", "step": step, "models": {"vae": accelerator.unwrap_model(vae).state_dict()},
                "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                "batches": batches.state_dict(), "rng": rng_state(generator)}

    deadline = math.inf
    if c.time_budget:
        deadline = c.time_budget * 60 * c.vae_time_fraction
    device = accelerator.device
    vae.train()
    losses, tick = [], time.perf_counter()
    while step < c.vae_steps and run.elapsed() < deadline:
        x = to_unit_range(data.images[batches.next()]).to(device)
        with accelerator.autocast():
            posterior = vae.encode(x).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            z = posterior.mean + posterior.std * noise
            reconstruction = vae.decode(z).sample
            mse = F.mse_loss(reconstruction.float(), x)
            loss = mse + c.vae_kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(vae.parameters(), c.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(mse.item())
        if step % c.log_every == 0 or step == c.vae_steps:
            seconds = (time.perf_counter() - tick) / len(losses)
            row = {"stage": "vae", "step": step, "mse": float(np.mean(losses)), "lr": lr_schedule.get_last_lr()[0],
                   "s_per_step": round(seconds, 4)}
            run.write(row)
            log(f"vae {step}/{c.vae_steps}  mse {row['mse']:.5f}  {seconds:.3f} s/step  {run.elapsed() / 60:.1f} min")
            losses, tick = [], time.perf_counter()
        if c.save_every and step % c.save_every == 0:
            run.save_checkpoint(state())
    if step < c.vae_steps:
        log(f"vae: stopped at step {step} (its share of the time budget is spent)")
    run.save_checkpoint(state())

    vae = accelerator.unwrap_model(vae)
    vae.eval()
    with torch.no_grad():
        x = to_unit_range(data.images[:8]).to(device)
        reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample
    pictures = [_to_pil(t) for t in torch.cat([x, reconstruction])]
    grid(pictures, columns=len(x)).save(run.dir / "samples" / "vae_reconstruction.png")
    accelerator.free_memory()
    return vae


def _to_pil(t: torch.Tensor) -> Image.Image:
    array = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


@torch.no_grad()
def encode_all(vae, data: Dataset, device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of every image's latent distribution (computed once; latents are sampled per step)."""
    means, stds = [], []
    vae.eval()
    for start in range(0, len(data.captions), batch_size):
        x = to_unit_range(data.images[start: start + batch_size]).to(device, dtype=vae.dtype)
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


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


def train_unet(c: TrainingConfig, run: Run, data: Dataset, vae, latents: tuple[torch.Tensor, torch.Tensor],
               accelerator, checkpoint: dict | None):
    """Stage b on precomputed latent distributions (mean, std). Returns the EMA pipeline (float32,
    on the training device) and the last step."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from transformers import CLIPTokenizer

    from training.tiny import CLIP_TOKENIZER_DIR  # the real CLIP vocabulary shipped with the bot

    device = accelerator.device
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
    vae.requires_grad_(False)
    means, stds = latents
    scale = float(vae.config.scaling_factor)

    # Every distinct caption tokenized once, as the pipeline will: padded to 77 tokens; "" = unconditional.
    distinct = sorted(set(data.captions))
    ids = tokenizer([""] + distinct, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    row_of = {text: i + 1 for i, text in enumerate(distinct)}
    caption_index = torch.tensor([row_of[text] for text in data.captions])

    torch.manual_seed(c.seed)
    unet = build_unet(c, latent_size=means.shape[-1])
    text_encoder = build_text_encoder(c)
    ema_unet = build_unet(c, latent_size=means.shape[-1]).requires_grad_(False)
    ema_text_encoder = build_text_encoder(c).requires_grad_(False)
    log(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")
    noise_scheduler = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start,
                                    beta_end=c.beta_end, beta_schedule=c.beta_schedule, prediction_type="epsilon")
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = adamw(parameters, lr=c.learning_rate, weight_decay=c.weight_decay)
    generator = torch.Generator().manual_seed(c.seed + 2)
    batches = Batches(len(data.captions), c.train_batch_size, generator)
    total = c.max_steps or (c.num_epochs * batches.steps_per_epoch()) or 10**9
    if c.num_epochs and c.max_steps:
        total = min(total, c.num_epochs * batches.steps_per_epoch())
    lr_schedule = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.lr_warmup_steps,
                                num_training_steps=total)
    ema = EMA(parameters, c.ema_decay)
    unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(unet, text_encoder, optimizer, lr_schedule)
    ema_unet.to(device)
    ema_text_encoder.to(device)
    alphas = noise_scheduler.alphas_cumprod.to(device)

    step = 0
    if checkpoint:
        accelerator.unwrap_model(unet).load_state_dict(checkpoint["models"]["unet"])
        accelerator.unwrap_model(text_encoder).load_state_dict(checkpoint["models"]["text_encoder"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_schedule.load_state_dict(checkpoint["lr_schedule"])
        ema.load_state_dict(checkpoint["ema"])
        batches.load_state_dict(checkpoint["batches"])
        set_rng_state(generator, checkpoint["rng"])
        step = checkpoint["step"]
        log(f"unet: resumed at step {step}, epoch {batches.epoch}")

    def state() -> dict:
        return {"stage": "unet", "step": step,
                "models": {"unet": accelerator.unwrap_model(unet).state_dict(),
                           "text_encoder": accelerator.unwrap_model(text_encoder).state_dict()},
                "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                "ema": ema.state_dict(), "batches": batches.state_dict(), "rng": rng_state(generator)}

    def ema_pipeline():
        ema.copy_to(list(ema_unet.parameters()) + list(ema_text_encoder.parameters()))
        return make_pipeline(c, vae, ema_text_encoder, ema_unet, tokenizer)

    prompts, specs = sample_prompts(c, data)
    seeds = [shapes.HELD_OUT_SEED_BASE + i for i in range(len(prompts))]

    def samples() -> None:
        pipe = ema_pipeline()
        images = generate(pipe, c, prompts, seeds, c.sample_guidance)
        grid(images).save(run.dir / "samples" / f"unet_{step:06d}.png")
        row: dict = {"stage": "sample", "step": step}
        if specs:
            row.update(shapes.score([shapes.judge(im, s) for im, s in zip(images, specs)]))
        run.write(row)
        log(f"samples at step {step}: {row}")

    def done() -> str | None:
        if c.max_steps and step >= c.max_steps:
            return f"max_steps {c.max_steps} reached"
        if c.num_epochs and batches.epochs_done() >= c.num_epochs:
            return f"{c.num_epochs} epochs done"
        if run.budget_left() <= 0:
            return f"time budget of {c.time_budget} min spent"
        return None

    unet.train()
    text_encoder.train()
    losses, tick, first, sampled = [], time.perf_counter(), step, -1
    while (reason := done()) is None:
        for _ in range(c.gradient_accumulation_steps):
            index = batches.next()
            z = torch.randn(means[index].shape, generator=generator).to(device)
            latents = (means[index] + stds[index] * z) * scale
            noise = torch.randn(latents.shape, generator=generator).to(device)
            timesteps = torch.randint(0, c.num_train_timesteps, (len(index),), generator=generator).to(device)
            drop = torch.rand(len(index), generator=generator) < c.caption_dropout
            tokens = ids[torch.where(drop, 0, caption_index[index]).to(device)]
            a = alphas[timesteps].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # what DDPMScheduler.add_noise does
            with accelerator.autocast():
                encoded = text_encoder(tokens)[0]
                prediction = unet(noisy, timesteps, encoded).sample
            loss = F.mse_loss(prediction.float(), noise)
            accelerator.backward(loss / c.gradient_accumulation_steps)
            losses.append(loss.item())
        accelerator.clip_grad_norm_(parameters, c.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ema.update(parameters)
        if step % c.log_every == 0:
            seconds = (time.perf_counter() - tick) / max(1, step - first)
            row = {"stage": "unet", "step": step, "epoch": batches.epoch, "loss": float(np.mean(losses)),
                   "lr": lr_schedule.get_last_lr()[0], "s_per_step": round(seconds, 4)}
            run.write(row)
            left = run.budget_left()
            log(f"unet {step}/{c.max_steps or '-'}  epoch {batches.epoch}  loss {row['loss']:.4f}  "
                f"{seconds:.3f} s/step  {run.elapsed() / 60:.1f} min"
                + (f"  ({left / 60:.1f} min left)" if left < math.inf else ""))
            losses, tick, first = [], time.perf_counter(), step
        if c.save_every and step % c.save_every == 0:
            run.save_checkpoint(state())
        if c.sample_every and step % c.sample_every == 0:
            samples()
            sampled = step
    log(f"unet: stopping at step {step}: {reason}")
    run.save_checkpoint(state())
    if sampled != step:
        samples()
    return ema_pipeline(), step


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
    return {"steps": c.sample_steps, "guidance": c.sample_guidance, "width": c.image_size,
            "height": c.image_size, "scheduler": "dpm++", "negative_prompt": c.negative_prompt or None}


def describe(c: TrainingConfig, steps: int) -> str:
    if c.description:
        return c.description
    if c.data == "shapes":
        return (f"Tiny demo model trained from scratch on coloured shapes ({c.image_size} px, {steps} steps): "
                "try 'a red circle on a blue background'")
    return f"Trained from scratch on {Path(c.manifest).name} ({c.image_size} px, {steps} steps)"


def quietly_to(pipe, dtype: torch.dtype, device: str | torch.device = "cpu") -> None:
    """pipe.to(dtype) without diffusers' warnings about float16 on a CPU (the weights are only
    stored that way) and about "modules that should be kept in float32: []" (there are none)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.to(dtype=dtype)
        pipe.to(device)
    finally:
        diffusers_logging.set_verbosity(verbosity)


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
                                variant_defaults(c), describe(c, steps))
    log(f"published model '{c.name}' at {published}")
    return published


# =============================================================================================
# main
# =============================================================================================


def train(c: TrainingConfig, resume: Path | None = None) -> dict:
    """Run both stages, evaluate, export. Returns paths and the final step (for callers and tests)."""
    threads = torch.get_num_threads()
    if c.threads:
        torch.set_num_threads(c.threads)
    try:
        return _train(c, resume)
    finally:
        torch.set_num_threads(threads)


def _train(c: TrainingConfig, resume: Path | None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # "Writing model shards" and loading bars
    transformers_logging.disable_progress_bar()

    checkpoint = torch.load(resume, map_location="cpu", weights_only=True) if resume else None
    if checkpoint:
        log(f"resuming from {resume}: stage {checkpoint['stage']}, step {checkpoint['step']}")
    run = Run(c, checkpoint)
    # Gradient accumulation is done by hand (stage b only), not by the Accelerator, so the VAE
    # stage's steps stay plain steps.
    accelerator = Accelerator(mixed_precision=c.mixed_precision)
    set_seed(c.seed)
    log(f"device {accelerator.device}, mixed precision {c.mixed_precision}, output {run.dir}")
    data = load_data(c)

    # Stage a: the VAE (reused, finished in an earlier session of this run, or trained now).
    vae_dir = run.dir / "vae"
    if c.vae_path:
        vae = load_vae(c.vae_path)
        log(f"vae: reusing {c.vae_path} (scaling_factor {vae.config.scaling_factor:.4f})")
    elif checkpoint and checkpoint["stage"] == "unet":
        vae = load_vae(vae_dir)
    else:
        vae = train_vae(c, run, data, accelerator, checkpoint if checkpoint and checkpoint["stage"] == "vae" else None)
        checkpoint = None  # stage b starts fresh
    vae.to(accelerator.device)

    # Every image encoded once; a freshly trained VAE records the factor that gives latents unit std.
    started = time.perf_counter()
    means, stds = encode_all(vae, data, accelerator.device)
    if not c.vae_path and not checkpoint:
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        vae.save_pretrained(str(vae_dir), safe_serialization=True)
        log(f"vae: saved {vae_dir}")
    log(f"latents {tuple(means.shape)} encoded in {time.perf_counter() - started:.1f} s; std {means.std():.4f}, "
        f"scaling_factor {vae.config.scaling_factor:.4f}")

    # Stage b: UNet + text encoder.
    pipe, steps = train_unet(c, run, data, vae, (means, stds), accelerator, checkpoint)

    # Export first (the model is usable even if evaluation fails), then evaluate exactly the
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
    config, resume = parse_args(argv)
    train(config, resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
