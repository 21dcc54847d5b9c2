"""Stable Diffusion XL: CLIP ViT-L + OpenCLIP bigG text encoders, 1024 px, size and crop
micro-conditioning; its refiner (bigG only, aesthetic score) and its inpainting model."""

from __future__ import annotations

from bot.engine.families.base import Family
from bot.engine.families.common import clip_call_arguments, sd_scheduler, sd_single_file
from bot.models.variant import FamilyTraits

# Latent channel -> RGB for SDXL's VAE (the factors ComfyUI uses).
SDXL_PREVIEW = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))

FAMILY = Family(
    traits=FamilyTraits(name="sdxl", label="Stable Diffusion XL", native_size=1024),
    pipelines={"text": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"},
    arches=("sdxl", "sdxl-refiner", "sdxl-inpaint"),
    repo_words=("stable-diffusion-xl", "sdxl"),
    call_arguments=clip_call_arguments,
    make_scheduler=sd_scheduler,
    load_file=sd_single_file,
    preview_factors=SDXL_PREVIEW,
)
FAMILIES = (FAMILY,)
