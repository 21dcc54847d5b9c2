"""What one model family module declares: its traits (read without torch, at submit) and the
hooks the engine calls to load and run it (they import torch and diffusers when called).

A family module is importable without torch: the model store reads its traits and which pipeline
classes and checkpoint architectures it serves while it lists variants, and the core refuses what
the family cannot do before a job is queued. Everything that draws lives in the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bot.models.variant import FamilyTraits

# The tasks a family may have a diffusers pipeline class for.
TASKS = ("text", "img2img", "inpaint")


@dataclass(frozen=True)
class Family:
    traits: FamilyTraits
    # task -> the diffusers pipeline class name ("text" is the one a pipeline folder is saved as)
    pipelines: Mapping[str, str]
    # The `arch` names (variant.toml, single-file detection) whose checkpoints are this family.
    arches: tuple[str, ...] = ()
    # Words in a hub repository's name that say it is this family (lowercase), e.g. "flux.1-dev".
    repo_words: tuple[str, ...] = ()
    denoiser: str = "unet"  # the component that runs at every step ("unet" or "transformer")
    # Components worth quantizing to fit a card: the denoiser and the large text encoder(s).
    quantizable: tuple[str, ...] = ("unet",)
    # Where several families save as the same pipeline class (SD 1.x and 2.x; FLUX.1 dev and
    # schnell): whether a pipeline folder is this family, from its JSON configs.
    claims: Callable[[Path], bool] | None = None
    # (pipe, prompts, negatives, request) -> the pipeline's keyword arguments for the text and the
    # guidance (prompt or embeddings, negative prompt, guidance_scale, ...).
    call_arguments: Callable[[Any, Sequence[str], Sequence[str], Any], dict] | None = None
    # (scheduler name, the model's scheduler config) -> a scheduler instance
    make_scheduler: Callable[[str, Mapping[str, Any]], Any] | None = None
    # (variant spec, torch dtype) -> a pipeline from a single checkpoint file
    load_file: Callable[[Any, Any], Any] | None = None
    # (pipe, latents, height, width) -> latents as [batch, channels, h, w] for a preview (packed
    # transformer latents are unpacked); None: latents are that already
    unpack_latents: Callable[[Any, Any, int, int], Any] | None = None
    # channel -> (r, g, b) factors that turn latents into a rough picture; () gives no preview
    preview_factors: tuple[tuple[float, float, float], ...] = ()

    @property
    def name(self) -> str:
        return self.traits.name

    def pipeline_class_name(self, task: str) -> str | None:
        return self.pipelines.get(task)
