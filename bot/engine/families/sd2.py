"""Stable Diffusion 2.x: an OpenCLIP ViT-H text encoder (penultimate layer), 512 px base or 768 px
v-prediction, and its inpainting model."""

from __future__ import annotations

from pathlib import Path

from bot.engine.families.base import Family
from bot.engine.families.common import read_config
from bot.engine.families.sd1 import SD_HOOKS
from bot.models.variant import FamilyTraits


def _claims(folder: Path) -> bool:
    """OpenCLIP's text encoder uses gelu where OpenAI's CLIP (SD 1.x) uses quick_gelu."""
    return read_config(folder, "text_encoder").get("hidden_act") == "gelu"


FAMILY = Family(
    traits=FamilyTraits(name="sd2", label="Stable Diffusion 2.x", native_size=768),
    arches=("sd21", "sd21-v", "sd21-inpaint"),
    repo_words=("stable-diffusion-2",),
    claims=_claims,
    **SD_HOOKS,
)
FAMILIES = (FAMILY,)
