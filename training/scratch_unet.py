"""Stage b of train_scratch: the UNet and the text encoder trained together on the latents, with
an EMA of both; sample grids of the EMA weights on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training import shapes
from training.common.data import Batches, Dataset, grid
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw, sample_latents, tokenize_once
from training.common.run import Interrupted, Run, log, stop_requested
from training.scratch_networks import EMA, build_text_encoder, build_unet, make_pipeline

if TYPE_CHECKING:
    from training.train_scratch import TrainingConfig

DEFAULT_SAMPLE_SPECS = [
    shapes.Spec("red", "circle", "blue"), shapes.Spec("green", "square", "white", "small", "left"),
    shapes.Spec("blue", "triangle", "yellow", "large"), shapes.Spec("yellow", "circle", "black", None, "top"),
    shapes.Spec("purple", "square", "orange"), shapes.Spec("orange", "triangle", "green", "small", "bottom"),
    shapes.Spec("white", "circle", "red", "large", "right"), shapes.Spec("black", "square", "purple", "small"),
]


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
