"""Upscaling: ESRGAN-family networks (through spandrel) and the tiling that keeps memory flat.

An upscaler variant's weights are read as a plain state dict (safetensors, or a .pth through
spandrel's restricted unpickler where the variant allows pickles) and spandrel recognises the
architecture from the keys, as ComfyUI and chaiNNer do. The network runs over overlapping tiles of
the image, so a 1024 px image needs no more memory than a 256 px one; the img2img pass that may
follow runs in tiles of the generating model's native size, blended where they overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bot.models.spec import VariantSpec

log = logging.getLogger(__name__)

UPSCALER_TILE = 256  # input pixels per side the network sees at once
UPSCALER_OVERLAP = 16  # context on each side of a tile, cropped away after the network


class UpscalerError(RuntimeError):
    """An upscaler variant whose weights are not an upscaling network spandrel knows."""


@dataclass
class Upscaler:
    name: str
    fingerprint: str
    model: torch.nn.Module
    scale: int
    nbytes: int


def load_upscaler(spec: VariantSpec, device: torch.device, dtype: torch.dtype) -> Upscaler:
    try:
        from spandrel import ImageModelDescriptor, ModelLoader  # a heavy import, only where upscalers are used
    except ImportError:
        raise UpscalerError(f"upscaler '{spec.name}' needs spandrel, which is not installed: "
                            "pip install -e \".[upscale]\" (docs/install.md)") from None

    assert spec.file is not None
    try:
        loader = ModelLoader(device="cpu")
        descriptor = loader.load_from_state_dict(loader.load_state_dict_from_file(spec.file))
    except Exception as error:  # spandrel raises several types for unknown or damaged files
        raise UpscalerError(f"upscaler '{spec.name}' could not be loaded from {spec.file.name}: "
                            f"{type(error).__name__}: {error}") from error
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.scale < 1:
        raise UpscalerError(f"'{spec.name}' ({descriptor.architecture.name}) is not an image upscaler")
    # Half precision is unsafe for some of these networks (they overflow); bfloat16 and float32 are fine.
    network_dtype = torch.float32 if dtype is torch.float16 and not descriptor.supports_half else dtype
    model = descriptor.model.to(device=device, dtype=network_dtype).eval()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    log.info("upscaler %s: %s, %dx", spec.name, descriptor.architecture.name, descriptor.scale)
    return Upscaler(spec.name, spec.fingerprint, model, descriptor.scale, nbytes)


def run_upscaler(upscaler: Upscaler, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` through the network, tile by tile, then resized to exactly `size`."""
    parameter = next(upscaler.model.parameters())
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # 1, 3, H, W
    height, width = pixels.shape[-2:]
    scale = upscaler.scale
    out = torch.zeros(1, 3, height * scale, width * scale)
    with torch.inference_mode():
        for top, left, bottom, right in tile_boxes(width, height, UPSCALER_TILE, UPSCALER_TILE, 0):
            # Each tile is cut with some context around it, which is cropped off again: the
            # network's receptive field then never sees a seam.
            t, l = max(0, top - UPSCALER_OVERLAP), max(0, left - UPSCALER_OVERLAP)
            b, r = min(height, bottom + UPSCALER_OVERLAP), min(width, right + UPSCALER_OVERLAP)
            tile = pixels[..., t:b, l:r].to(device=parameter.device, dtype=parameter.dtype)
            result = upscaler.model(tile).float().cpu()
            out[..., top * scale: bottom * scale, left * scale: right * scale] = result[
                ..., (top - t) * scale: (bottom - t) * scale, (left - l) * scale: (right - l) * scale]
    array = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    enlarged = Image.fromarray(array)
    if enlarged.size != size:
        enlarged = enlarged.resize(size, Image.Resampling.LANCZOS)
    return enlarged


def tile_boxes(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of tiles covering the image, neighbours sharing `overlap` pixels.

    Tiles keep their full size (the last one in a row or column is moved back inside the image), so
    every tile is drawn at the size the model knows; an image smaller than a tile is one tile.
    """
    def starts(length: int, tile: int) -> list[int]:
        if length <= tile:
            return [0]
        step = max(1, tile - overlap)
        positions = list(range(0, length - tile, step))
        return positions + [length - tile]

    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    return [(top, left, top + tile_h, left + tile_w)
            for top in starts(height, tile_h) for left in starts(width, tile_w)]


def blend_tiles(tiles: list[Image.Image], boxes: list[tuple[int, int, int, int]], size: tuple[int, int],
                overlap: int) -> Image.Image:
    """Put redrawn tiles back together; where they overlap, each fades out towards its edge."""
    width, height = size
    total = np.zeros((height, width, 3), dtype=np.float64)
    weight = np.zeros((height, width, 1), dtype=np.float64)
    for tile, (top, left, bottom, right) in zip(tiles, boxes):
        h, w = bottom - top, right - left
        mask = _feather(h, overlap)[:, None] * _feather(w, overlap)[None, :]
        total[top:bottom, left:right] += np.asarray(tile.convert("RGB"), dtype=np.float64) * mask[..., None]
        weight[top:bottom, left:right] += mask[..., None]
    return Image.fromarray((total / np.maximum(weight, 1e-8)).round().clip(0, 255).astype(np.uint8))


def _feather(length: int, overlap: int) -> np.ndarray:
    """1 in the middle, ramping down to a small positive value over `overlap` pixels at each end."""
    ramp = np.ones(length)
    if overlap > 0:
        edge = np.linspace(1.0 / (overlap + 1), 1.0, overlap, endpoint=False)
        n = min(overlap, length // 2)
        ramp[:n] = edge[:n]
        ramp[length - n:] = edge[:n][::-1]
    return ramp
