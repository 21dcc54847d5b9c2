"""Inpainting: redraw the masked part of an image, keep the rest.

A variant may name an inpainting model of its own (`inpaint = "sd15-inpainting"` in its
variant.toml); otherwise the variant itself inpaints through diffusers' standard inpainting
pipeline over the same weights, which with an ordinary (4-channel) UNet keeps the unmasked latents
from the source at every step. Either way the pipelines blend at the mask's edge and the VAE
round trip shifts pixels a little, so the unmasked pixels are pasted back from the source: outside
the mask the answer is the image the user sent.
"""

from __future__ import annotations

from diffusers import AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image


def inpainting_pipeline(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """An inpainting pipeline over `pipe`'s weights (no second copy in memory); `pipe` itself when
    it already is one (a 9-channel inpainting model loads as one)."""
    if "mask_image" in _call_parameters(pipe):
        return pipe
    inpainting = AutoPipelineForInpainting.from_pipe(pipe)
    inpainting.set_progress_bar_config(disable=True)
    return inpainting


def load_mask(path: str, size: tuple[int, int]) -> Image.Image:
    """The mask as 8-bit grey at the image's size: white is redrawn, black kept."""
    with Image.open(path) as mask:
        return mask.convert("L").resize(size, Image.Resampling.BILINEAR)


def paste_unmasked(generated: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated pixels where the mask is white, the source's where it is black, mixed in between."""
    generated = generated.convert("RGB")
    if generated.size != source.size:
        generated = generated.resize(source.size, Image.Resampling.LANCZOS)
    return Image.composite(generated, source.convert("RGB"), mask)


def _call_parameters(pipe: DiffusionPipeline) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)
