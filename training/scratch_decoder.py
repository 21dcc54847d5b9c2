"""Stage c of train_scratch (optional, `decoder_steps`): the VAE's decoder alone trained further,
its encoder frozen so the UNet's latents keep their meaning, on training images and shapes in
random colours, so that colour pairs no training image showed decode right too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from training import shapes
from training.common.data import Batches, Dataset, to_unit_range
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw
from training.common.run import Run, log
from training.scratch_vae import save_reconstructions, vae_loss

if TYPE_CHECKING:
    from training.train_scratch import TrainingConfig


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
