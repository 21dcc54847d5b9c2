"""Z-Image (Turbo): a single-stream diffusion transformer with a Qwen3 text encoder and FLUX.1's VAE,
1024 px. Turbo draws in 8-9 steps without guidance (guidance 0); classifier-free guidance, and with
it the negative prompt, runs at any guidance above 0."""

from __future__ import annotations

from typing import Any, Sequence

from bot.engine.families.base import Family
from bot.engine.families.common import flow_scheduler, flow_text_arguments
from bot.models.variant import FamilyTraits

TOKENS = 512


def _call_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    return flow_text_arguments(prompts, negatives, request.guidance, tokens=TOKENS)


FAMILY = Family(
    traits=FamilyTraits(name="zimage", label="Z-Image", native_size=1024, size_step=16, steps=9, guidance=0.0,
                        cfg_above=0.0, scheduler="euler", schedulers=("euler",), prompt_weights=False,
                        prompt_tokens=TOKENS, fast_scheduler="euler"),
    pipelines={"text": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"},
    repo_words=("z-image",),
    denoiser="transformer",
    quantizable=("transformer", "text_encoder"),
    call_arguments=_call_arguments,
    make_scheduler=flow_scheduler,
)
FAMILIES = (FAMILY,)
