"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, a 4-channel UNet, 512 px (and its 9-channel
inpainting models)."""

from __future__ import annotations

from pathlib import Path

from bot.engine.families.base import Family
from bot.engine.families.common import clip_call_arguments, read_config, sd_scheduler, sd_single_file
from bot.models.variant import FamilyTraits

# Latent channel -> RGB: the factors AUTOMATIC1111 and ComfyUI use for SD 1.x/2.x previews.
SD_PREVIEW = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
              (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))


def _claims(folder: Path) -> bool:
    """SD 1.x and 2.x save as the same pipeline class; 1.x has OpenAI's CLIP (quick_gelu)."""
    return read_config(folder, "text_encoder").get("hidden_act", "quick_gelu") == "quick_gelu"


# What SD 1.x and 2.x share: their pipelines, CLIP prompts, schedulers and checkpoint files.
SD_HOOKS = dict(
    pipelines={"text": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
               "inpaint": "StableDiffusionInpaintPipeline"},
    call_arguments=clip_call_arguments,
    make_scheduler=sd_scheduler,
    load_file=sd_single_file,
    preview_factors=SD_PREVIEW,
)

FAMILY = Family(
    traits=FamilyTraits(name="sd1", label="Stable Diffusion 1.x", native_size=512),
    arches=("sd15", "sd15-inpaint"),
    claims=_claims,
    **SD_HOOKS,
)
FAMILIES = (FAMILY,)
