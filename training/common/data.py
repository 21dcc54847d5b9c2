"""Images for training: loading, a dataset as one uint8 tensor, shuffled batches, sample grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


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

    @classmethod
    def from_pictures(cls, pictures: Sequence[Image.Image], captions: list[str]) -> Dataset:
        """Same-sized RGB pictures and their captions."""
        array = np.stack([np.asarray(picture, dtype=np.uint8) for picture in pictures]).transpose(0, 3, 1, 2)
        return cls(torch.from_numpy(np.ascontiguousarray(array)), captions)


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1], what the VAE takes."""
    return batch.float() / 127.5 - 1.0


def to_pil(t: torch.Tensor) -> Image.Image:
    """One [3, H, W] image in [-1, 1] as a picture."""
    array = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def grid(images: Sequence[Image.Image], columns: int = 8, scale: int = 3) -> Image.Image:
    """Pictures in rows of `columns`, each enlarged `scale` times without smoothing."""
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
