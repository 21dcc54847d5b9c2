"""The pipeline call: a batch of images through one family's pipeline, with per-image seeds,
progress, cancellation, out-of-memory retries and the SDXL base-to-refiner hand-off.

Each image gets its own CPU random generator, so an image depends only on its own seed and prompt,
never on what else was in the batch. What the family's pipeline takes for the text and the
guidance (embeddings, a negative prompt, distilled or true guidance) the family's hook says.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from PIL import Image

from bot.config import EngineConfig
from bot.core.errors import Cancelled, UserError
from bot.core.prompt_syntax import strip_lora_tags
from bot.core.request import GenerationRequest
from bot.engine.families.base import Family
from bot.engine.interrupt import stoppable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 1..total
    total: int
    latents: Any = None  # the current latents [images, channels, h, w] for previews; None when not asked for
    family: str = ""  # the family the latents belong to (their preview colours)


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class Item:
    """One image to make: which request it belongs to and its own seed."""

    request_index: int
    prompt: str
    negative_prompt: str
    seed: int
    init_image: Image.Image | None
    mask: Image.Image | None = None
    # Handed from an SDXL base to its refiner: the partly denoised latents of this image and its
    # random generator's state, so the refiner goes on with the same random stream.
    latents: Any = None
    rng_state: Any = None
    steps_done: int = 0  # steps the base reported, where the refiner's progress goes on from


@dataclass
class Call:
    """What one pipeline call runs with: the pipeline, its family and how it is staged.

    `stage` is "whole" (an ordinary call, images out), "base" (the first part of the schedule; the
    items come back with their latents) or "refiner" (finishes the items' latents; images out).
    `handoff` is where base and refiner meet, as diffusers' denoising_end/denoising_start fraction."""

    pipe: Any
    family: Family
    request: GenerationRequest
    stage: str = "whole"
    handoff: float | None = None


class Runner:
    def __init__(self, config: EngineConfig, stats, want_latents: bool) -> None:
        self.config = config
        self.stats = stats
        self.want_latents = want_latents

    def run_chunks(self, call: Call, items: list[Item], on_progress: ProgressCallback | None,
                   should_cancel: CancelCheck | None) -> list:
        out: list = []
        for start in range(0, len(items), self.config.max_batch):
            chunk = items[start: start + self.config.max_batch]
            out += self.run_with_oom_retry(call, chunk, on_progress, should_cancel)
        return out

    def run_with_oom_retry(self, call: Call, items: list[Item], on_progress, should_cancel) -> list:
        try:
            return self._call(call, items, on_progress, should_cancel)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            request = call.request
            if len(items) == 1:
                raise UserError("out_of_memory", width=request.width, height=request.height) from None
            self.stats.oom_retries += 1
            half = len(items) // 2
            log.warning("out of memory with %d images; retrying as %d + %d", len(items), half, len(items) - half)
            return (self.run_with_oom_retry(call, items[:half], on_progress, should_cancel)
                    + self.run_with_oom_retry(call, items[half:], on_progress, should_cancel))

    def _call(self, call: Call, items: list[Item], on_progress, should_cancel) -> list:
        """One pipeline call for `items`."""
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        pipe, request, stage = call.pipe, call.request, call.stage
        # One CPU generator per image: the same seed gives the same starting noise on any device
        # and in any batch.
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        for generator, item in zip(generators, items):
            if item.rng_state is not None:
                generator.set_state(item.rng_state)
        prompts = [strip_lora_tags(item.prompt) for item in items]
        negatives = [strip_lora_tags(item.negative_prompt) for item in items]
        text = call.family.call_arguments(pipe, prompts, negatives, request)
        on_step_end, reported = self._step_callback(call, items, on_progress, should_cancel)
        kwargs: dict[str, Any] = dict(
            **text,
            num_inference_steps=request.steps,
            generator=generators,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
        )
        kwargs.update(_image_arguments(call, items))
        with torch.inference_mode(), stoppable(pipe, should_cancel):
            output = pipe(**kwargs)
        self.stats.batches += 1
        if stage == "base":
            return [replace(item, latents=output.images[i: i + 1], rng_state=generators[i].get_state(),
                            steps_done=reported[0]) for i, item in enumerate(items)]
        self.stats.images += len(items)
        if request.mask_image is not None:
            return [paste_unmasked(image, item.init_image, item.mask) for image, item in zip(output.images, items)]
        return list(output.images)

    def _step_callback(self, call: Call, items: list[Item], on_progress, should_cancel):
        """The pipeline's per-step callback: cancellation, progress and (when asked) latents."""
        request, stage, family = call.request, call.stage, call.family
        reported = [items[0].steps_done]  # the refiner's steps count on from the base's

        def on_step_end(pipeline, step, timestep, tensors):
            if should_cancel is not None and should_cancel():
                raise Cancelled()  # leaves the denoising loop at once, skipping the decode
            latents = tensors.get("latents") if self.want_latents and family.preview_factors else None
            if latents is not None and family.unpack_latents is not None:
                latents = family.unpack_latents(pipeline, latents, request.height, request.width)
            if stage == "whole":
                total = getattr(pipeline, "num_timesteps", None) or request.steps
                step_done = step + 1
            else:  # base and refiner share the request's steps between them
                total = request.steps
                reported[0] += 1
                step_done = min(total, reported[0])
            if on_progress is not None:
                on_progress(Progress(step_done, total, latents, family.name))
            return {}

        return on_step_end, reported


def _image_arguments(call: Call, items: list[Item]) -> dict[str, Any]:
    """The size, or the images to start from, and the refiner's part of the schedule."""
    request = call.request
    if call.stage == "refiner":
        return dict(image=torch.cat([item.latents for item in items]), denoising_start=call.handoff)
    kwargs: dict[str, Any] = {}
    if request.init_image is not None:
        strength = request.strength or 0.6
        # img2img runs int(steps * strength) steps; make that at least one.
        kwargs.update(image=[item.init_image for item in items], strength=strength,
                      num_inference_steps=max(request.steps, math.ceil(1 / strength)))
        if request.mask_image is not None or "width" in call_parameters(type(call.pipe)):
            # The transformer families' image-to-image pipelines draw at their native size unless told.
            kwargs.update(width=request.width, height=request.height)
        if request.mask_image is not None:
            kwargs.update(mask_image=[item.mask for item in items])
    else:
        kwargs.update(width=request.width, height=request.height)
    if call.stage == "base":
        kwargs.update(denoising_end=call.handoff, output_type="latent")
    return kwargs


@functools.cache
def call_parameters(pipeline_class: type) -> frozenset[str]:
    """The keyword arguments a pipeline class's call takes (what it can do: an image, a mask, a size)."""
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


def refiner_handoff(scheduler, steps: int, switch: float) -> float:
    """Where the base hands over to its refiner, as the fraction diffusers' denoising_end and
    denoising_start take: after int(steps * switch) of the `steps` timesteps, as AUTOMATIC1111
    switches, and never so late or early that either model runs no step (`steps` >= 2).

    diffusers cuts the schedule at a timestep value, not a step count, and timesteps are spaced
    unevenly; the cut is put just above the first timestep the refiner runs, so the base runs
    exactly its steps on any spacing."""
    base_steps = min(steps - 1, max(1, int(steps * switch)))
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps[::getattr(scheduler, "order", 1)]][:steps]
    cutoff = timesteps[base_steps] + 1
    train_steps = scheduler.config.num_train_timesteps
    return (train_steps - cutoff) / train_steps


# --- inpainting -----------------------------------------------------------------------------------
# A variant may name an inpainting model of its own (`inpaint = "..."` in its variant.toml);
# otherwise the variant itself inpaints through its family's inpainting pipeline over the same
# weights, which with an ordinary (4-channel) UNet keeps the unmasked latents from the source at
# every step. Either way the pipelines blend at the mask's edge and the VAE round trip shifts pixels
# a little, so the unmasked pixels are pasted back from the source: outside the mask the answer is
# the image the user sent.


def load_mask(path: str, size: tuple[int, int]) -> Image.Image:
    """The mask as 8-bit grey at the image's size: white is redrawn, black kept."""
    with Image.open(path) as mask:
        return mask.convert("L").resize(size, Image.Resampling.BILINEAR)


def paste_unmasked(generated: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated pixels where the mask is white, the source's where it is black, mixed in between."""
    generated = generated.convert("RGB")
    if generated.size != source.size:
        generated = generated.resize(source.size, Image.Resampling.LANCZOS)
    return Image.composite(generated, source.convert("RGB"), mask)
