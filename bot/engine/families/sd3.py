"""Stable Diffusion 3 and 3.5: an MMDiT transformer with CLIP-L, CLIP-G and T5-XXL text encoders,
16-channel latents, flow matching, 1024 px; classifier-free guidance over a negative prompt."""

from __future__ import annotations

from typing import Any, Sequence

from bot.engine.families.base import Family
from bot.engine.families.common import flow_scheduler, flow_text_arguments, transformer_file
from bot.models.variant import FamilyTraits

TOKENS = 256  # T5 tokens read (the pipeline's and Stability's default)


def _call_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    return flow_text_arguments(prompts, negatives, request.guidance, tokens=TOKENS)


FAMILY = Family(
    traits=FamilyTraits(name="sd3", label="Stable Diffusion 3.5", native_size=1024, size_step=16, steps=28,
                        guidance=4.5, scheduler="euler", schedulers=("euler",), prompt_weights=False,
                        prompt_tokens=TOKENS, fast_scheduler="euler"),
    pipelines={"text": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
               "inpaint": "StableDiffusion3InpaintPipeline"},
    arches=("sd3",),
    repo_words=("stable-diffusion-3",),
    denoiser="transformer",
    quantizable=("transformer", "text_encoder_3"),
    call_arguments=_call_arguments,
    make_scheduler=flow_scheduler,
    load_file=transformer_file,
)
FAMILIES = (FAMILY,)
