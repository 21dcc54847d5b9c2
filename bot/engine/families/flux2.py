"""FLUX.2 [klein]: a rectified-flow transformer with a Qwen3 text encoder (its hidden states of three
layers), 1024 px. The step-distilled release draws in 4 steps without guidance; the base release
takes 50 steps with classifier-free guidance. model_index.json's `is_distilled` tells them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bot.engine.families.base import Family
from bot.engine.families.common import flow_scheduler, read_index
from bot.models.variant import FamilyTraits

TOKENS = 512
PIPELINES = {"text": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline"}


def _distilled(folder: Path) -> bool:
    return bool(read_index(folder).get("is_distilled"))


def _distilled_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    # Guidance is ignored by the distilled model; 1.0 keeps diffusers from warning on every call.
    return dict(prompt=list(prompts), guidance_scale=1.0, max_sequence_length=TOKENS)


def _base_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    arguments: dict[str, Any] = dict(prompt=list(prompts), guidance_scale=request.guidance,
                                     max_sequence_length=TOKENS)
    if any(negatives) and request.guidance > 1:
        # The pipeline guides away from the empty prompt unless it is handed the negative's embeddings.
        embeddings, _ = pipe.encode_prompt(prompt=list(negatives), device=pipe._execution_device,
                                           max_sequence_length=TOKENS)
        arguments["negative_prompt_embeds"] = embeddings
    return arguments


KLEIN_TRAITS = dict(native_size=1024, size_step=16, scheduler="euler", schedulers=("euler",), prompt_weights=False,
                    prompt_tokens=TOKENS, img2img=False, fast_scheduler="euler")

KLEIN = Family(
    traits=FamilyTraits(name="flux2-klein", label="FLUX.2 [klein]", steps=4, guidance=1.0, guidance_kind="none",
                        negative_prompt=False, fast_steps=4, **KLEIN_TRAITS),
    pipelines=PIPELINES,
    denoiser="transformer",
    quantizable=("transformer", "text_encoder"),
    repo_words=("flux.2-klein",),
    claims=_distilled,
    call_arguments=_distilled_arguments,
    make_scheduler=flow_scheduler,
)
KLEIN_BASE = Family(
    traits=FamilyTraits(name="flux2-klein-base", label="FLUX.2 [klein] base", steps=50, guidance=4.0,
                        **KLEIN_TRAITS),
    pipelines=PIPELINES,
    denoiser="transformer",
    quantizable=("transformer", "text_encoder"),
    claims=lambda folder: not _distilled(folder),
    call_arguments=_base_arguments,
    make_scheduler=flow_scheduler,
)
FAMILIES = (KLEIN, KLEIN_BASE)
