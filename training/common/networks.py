"""What the training scripts do with networks besides training them: AdamW, moving a pipeline
quietly, and the inputs computed once before the loop (latent distributions, token ids)."""

from __future__ import annotations

from typing import Sequence

import torch

from training.common.data import Dataset, to_unit_range


def adamw(parameters, **options) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch offers that (CPU since 2.4, CUDA)."""
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(parameters, **options)


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


def sample_latents(latents: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor, scale: float,
                   generator: torch.Generator, device) -> torch.Tensor:
    """Latents of the images at `index`, drawn from their distributions (mean, std) with CPU noise
    from `generator` (the same numbers on any device), scaled by the VAE's scaling factor."""
    means, stds = latents
    z = torch.randn(means[index].shape, generator=generator).to(means.device)
    return ((means[index] + stds[index] * z) * scale).to(device)


def tokenize_once(tokenizer, texts: Sequence[str], device) -> tuple[torch.Tensor, dict[str, int]]:
    """Token ids of every text, padded to the model's length as the pipeline pads a prompt, and the
    row of each text."""
    ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    return ids, {text: row for row, text in enumerate(texts)}
