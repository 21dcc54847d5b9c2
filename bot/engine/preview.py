"""Cheap previews of an image while it is being made: latents straight to colours, no VAE.

A fixed linear map from the latent channels to RGB (the factors AUTOMATIC1111 and ComfyUI use; each
family module declares its own) gives a blurry 1/8-size picture for the cost of one small matrix
product.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

import bot.engine.families as families


def latent_preview(latents: torch.Tensor, family: str, size: int = 128) -> bytes | None:
    """One latent [channels, h, w] -> JPEG bytes of at most `size` pixels on the long side; None for
    a family without preview colours."""
    rows = families.by_name(family).preview_factors if family else ()
    if not rows or len(rows) != latents.shape[0]:
        return None
    factors = torch.tensor(rows, device=latents.device, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents.float(), factors)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().cpu().numpy()
    image = Image.fromarray(rgb)
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()
