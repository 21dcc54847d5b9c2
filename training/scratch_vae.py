"""Stage a of train_scratch: the VAE, trained (or reused with --vae, or finished in an earlier
session of the run), then every image encoded once into its latent distribution.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from training.common.data import Batches, Dataset, grid, to_pil, to_unit_range
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw, encode_all
from training.common.run import Interrupted, Run, log, stop_requested
from training.scratch_networks import build_vae, load_vae

if TYPE_CHECKING:
    from training.train_scratch import TrainingConfig


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
