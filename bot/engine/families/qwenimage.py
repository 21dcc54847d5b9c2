"""Qwen-Image: a 20B MMDiT with Qwen2.5-VL as its text encoder (it reads long prompts and renders
text in pictures well), 16-channel latents, 1024+ px; true classifier-free guidance over a negative
prompt (`true_cfg_scale`), which the guidance number sets."""

from __future__ import annotations

from typing import Any, Sequence

from bot.engine.families.base import Family
from bot.engine.families.common import flow_scheduler
from bot.models.variant import FamilyTraits

TOKENS = 512


def _call_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    arguments: dict[str, Any] = dict(prompt=list(prompts), true_cfg_scale=request.guidance,
                                     max_sequence_length=TOKENS)
    if request.guidance > 1:
        # True CFG needs a negative prompt; " " is Qwen-Image's own stand-in for "none".
        arguments["negative_prompt"] = [negative or " " for negative in negatives]
    return arguments


FAMILY = Family(
    traits=FamilyTraits(name="qwenimage", label="Qwen-Image", native_size=1024, size_step=16, steps=50, guidance=4.0,
                        scheduler="euler", schedulers=("euler",), prompt_weights=False, prompt_tokens=TOKENS,
                        fast_scheduler="euler"),
    pipelines={"text": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline",
               "inpaint": "QwenImageInpaintPipeline"},
    repo_words=("qwen-image",),
    denoiser="transformer",
    quantizable=("transformer", "text_encoder"),
    call_arguments=_call_arguments,
    make_scheduler=flow_scheduler,
)
FAMILIES = (FAMILY,)
