"""FLUX.1 [dev] and [schnell]: a 12B rectified-flow transformer with CLIP-L and T5-XXL text encoders,
16-channel latents packed 2x2, 1024 px.

[dev] is guidance-distilled: its guidance number goes into the model as an embedding (3.5 by
default), one pass per step, and it has no negative prompt, unless the variant turns on true
classifier-free guidance (`true_cfg = 4` in its [defaults]: two passes per step). [schnell] is
timestep-distilled: 4 steps, no guidance at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bot.engine.families.base import Family
from bot.engine.families.common import flow_scheduler, flow_text_arguments, read_config, transformer_file
from bot.models.variant import FamilyTraits

PIPELINES = {"text": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}


def _has_guidance_embedding(folder: Path) -> bool:
    return bool(read_config(folder, "transformer").get("guidance_embeds", True))


def _dev_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    if request.true_cfg > 1:
        return flow_text_arguments(prompts, negatives, request.guidance, tokens=512, true_cfg_scale=request.true_cfg)
    return flow_text_arguments(prompts, negatives, request.guidance, tokens=512, negative=False)


def _schnell_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    if request.true_cfg > 1:
        return flow_text_arguments(prompts, negatives, 0.0, tokens=256, true_cfg_scale=request.true_cfg)
    return flow_text_arguments(prompts, negatives, 0.0, tokens=256, negative=False)


def _unpack(pipe: Any, latents: Any, height: int, width: int) -> Any:
    """[images, tokens, 64] -> [images, 16, h, w]: the 2x2 patches back into latent pixels."""
    return type(pipe)._unpack_latents(latents, height, width, pipe.vae_scale_factor)


FLUX_TRAITS = dict(native_size=1024, size_step=16, scheduler="euler", schedulers=("euler",),
                   negative_prompt=False, true_cfg=True, prompt_weights=False, fast_scheduler="euler")

DEV = Family(
    traits=FamilyTraits(name="flux1-dev", label="FLUX.1 [dev]", steps=28, guidance=3.5, guidance_kind="distilled",
                        prompt_tokens=512, **FLUX_TRAITS),
    pipelines=PIPELINES,
    arches=("flux1-dev",),
    repo_words=("flux.1-dev", "flux1-dev"),
    denoiser="transformer",
    quantizable=("transformer", "text_encoder_2"),
    claims=_has_guidance_embedding,
    call_arguments=_dev_arguments,
    make_scheduler=flow_scheduler,
    load_file=transformer_file,
    unpack_latents=_unpack,
)
SCHNELL = Family(
    traits=FamilyTraits(name="flux1-schnell", label="FLUX.1 [schnell]", steps=4, guidance=0.0, guidance_kind="none",
                        prompt_tokens=256, fast_steps=4, **FLUX_TRAITS),
    pipelines=PIPELINES,
    arches=("flux1-schnell",),
    repo_words=("flux.1-schnell", "flux1-schnell"),
    denoiser="transformer",
    quantizable=("transformer", "text_encoder_2"),
    claims=lambda folder: not _has_guidance_embedding(folder),
    call_arguments=_schnell_arguments,
    make_scheduler=flow_scheduler,
    load_file=transformer_file,
    unpack_latents=_unpack,
)
FAMILIES = (DEV, SCHNELL)
