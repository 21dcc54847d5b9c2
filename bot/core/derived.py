"""Jobs made from a finished job: reroll, subtle and strong variations, Remix and upscale.

A button (Discord, Telegram, the web page) or an API call names a finished job and an action;
`DerivedJobs.options` says what the new job asks for, and the service queues it like any other
request, so admission (bans, quotas, limits) applies the same way.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.core.admission import Catalog
from bot.core.errors import UserError
from bot.core.jobs import Job
from bot.core.request import GenerationRequest, RequestOptions, parse_prompt
from bot.core.uploads import UploadStore

UPSCALE_STRENGTH = 0.35  # an upscale without an upscaler keeps the composition and redraws the detail

DERIVED_ACTIONS = ("reroll", "variation", "vary_subtle", "vary_strong", "remix", "upscale")


class DerivedJobs:
    def __init__(self, config: Config, uploads: UploadStore, catalog: Catalog) -> None:
        self.config = config
        self.uploads = uploads
        self.catalog = catalog

    def options(self, source: Job, ref: int | str, action: str, index: int = 0,
                prompt: str | None = None) -> RequestOptions:
        """What a new job from `source` (named `ref` by the caller) asks for: "reroll" (same
        settings, new seed); "vary_subtle" or "vary_strong" (image `index` redrawn close to it, or
        loosely; "variation" is the strong one, as V1-V4 buttons made before both existed ask
        for); "remix" (a strong variation drawn with the edited `prompt`, whose inline flags apply
        too); "upscale" (image `index` at twice the size)."""
        request = source.request
        same = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, model=request.model,
                    steps=request.steps, guidance=request.guidance, scheduler=request.scheduler,
                    loras=request.loras or None, fast=request.fast or None)
        if action == "remix":
            same.update(_remixed(prompt or ""))
        if action == "reroll":
            # A job owns its copies of uploads (a cancelled job's go with it): the reroll gets its own.
            return RequestOptions(**same, width=request.width, height=request.height, count=request.count,
                                  init_image=self._own_copy(request.init_image),
                                  mask_image=self._own_copy(request.mask_image), strength=request.strength,
                                  upscale=request.upscale or None, upscaler=request.upscaler,
                                  refiner=self._same_refiner(request))
        if action not in ("variation", "vary_subtle", "vary_strong", "remix", "upscale"):
            raise ValueError(f"unknown action {action!r}")
        if source.status != "done" or not 0 <= index < len(source.images):
            raise UserError("no_such_image", job=ref, index=index + 1)
        image = str(self.config.storage.outputs_path() / source.images[index].file)
        if action == "upscale":
            upscaler = self.config.upscale.model or None
            return RequestOptions(**same, width=request.width * 2, height=request.height * 2, count=1,
                                  init_image=image, upscale=True, upscaler=upscaler,
                                  strength=self.config.upscale.strength if upscaler else UPSCALE_STRENGTH)
        return RequestOptions(**same, width=request.width, height=request.height, count=request.count,
                              init_image=image,
                              strength=self.config.variations.subtle if action == "vary_subtle"
                              else self.config.variations.strong)

    def _own_copy(self, path: str | None) -> str | None:
        """A job's own copy of an upload another job kept (other paths, such as outputs, as they are)."""
        if path is None or Path(path).parent != self.uploads.folder:
            return path
        return str(self.uploads.keep_for_job(Path(path)))

    def _same_refiner(self, request: GenerationRequest) -> float | None:
        """The refiner setting that remakes `request`: its switch, or off (0) where the model has a
        refiner that did not run."""
        if request.refiner:
            return request.refiner_switch
        defaults = self.catalog.ready_defaults().get(request.model)
        return 0.0 if request.init_image is None and defaults is not None and defaults.refiner else None


def _remixed(text: str) -> dict[str, Any]:
    """What an edited Remix prompt changes: the prompt, and any setting its inline flags name
    (but not the size: the image being varied has one)."""
    edited = parse_prompt(text)
    if not edited.prompt:
        raise UserError("no_remix_prompt")
    changes = {name: value for name, value in asdict(edited).items()
               if value is not None and name not in ("width", "height", "aspect", "count", "init_image",
                                                      "strength", "seed")}
    changes["loras"] = edited.loras  # the edited text shows every LoRA as a tag (remix_text); none stays
    return changes
