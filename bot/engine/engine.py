"""The generation engine: the only place that runs diffusion pipelines.

One instance is owned by one thread (the GPU worker, or the CLI). Residency (which models are in
memory, their LoRA adapters, the memory budget) is `residency.py`; the pipeline call is
`generation.py`; what differs between model families is their module in `families/`. This class
puts a batch of compatible requests through them, as one pipeline call per `max_batch` images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from bot.config import EngineConfig
from bot.core.request import GenerationRequest
from bot.engine.devices import check_offload, memory_budget_bytes, pick_device, pick_dtype
from bot.engine.generation import (Call, CancelCheck, Item, ProgressCallback, Runner, load_mask,
                                   refiner_handoff)
from bot.engine.residency import Residency
from bot.engine.tiled_upscale import TiledUpscaler
from bot.models.registry import Registry
from bot.models.spec import VariantSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    model_fingerprint: str
    fast_lora: str | None = None  # the LCM-LoRA a fast-mode request ran with
    lora_fingerprints: tuple[tuple[str, str], ...] = ()  # (LoRA variant, fingerprint) applied, in order
    guidance_kind: str = "cfg"  # how the model's family took the guidance (its PNG parameters say so)


@dataclass
class EngineStats:
    """Counters for /metrics and benchmarks."""

    model_loads: int = 0
    model_load_seconds: float = 0.0
    batches: int = 0
    images: int = 0
    oom_retries: int = 0
    seconds_per_step: dict[str, float] = field(default_factory=dict)  # per image and step, by variant (moving average)
    seconds_per_image: dict[str, float] = field(default_factory=dict)  # by variant (moving average)


class Engine:
    def __init__(self, registry: Registry, config: EngineConfig | None = None, *, allow_download: bool = True,
                 want_latents: bool = False) -> None:
        self.registry = registry
        self.config = config or EngineConfig()
        self.device = pick_device(self.config)
        check_offload(self.config, self.device)
        self.dtype = pick_dtype(self.config, self.device)
        self.stats = EngineStats()
        self.residency = Residency(registry, self.config, self.device, self.dtype,
                                   memory_budget_bytes(self.config, self.device), allow_download, self.count_load)
        self.runner = Runner(self.config, self.stats, want_latents)
        self.upscaler = TiledUpscaler(self)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    # --- public API --------------------------------------------------------------------------

    def loaded(self) -> dict[str, list[str]]:
        """Resident models and, for each, the LoRA variants attached to it."""
        return self.residency.loaded()

    def refresh(self) -> None:
        """Pick up changes in the model store; call between batches."""
        self.registry.scan_if_due()
        self.residency.drop_changed()

    def unload(self, name: str) -> None:
        """Free a resident model now (a Ray replica's least recently used variant)."""
        self.residency.unload(name)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[GenerationResult]:
        """Run compatible requests (equal `batch_key()`) together, `max_batch` images per call."""
        if not requests:
            return []
        keys = {r.batch_key() for r in requests}
        if len(keys) != 1:
            raise ValueError(f"requests in one batch must share model, size, steps, guidance and scheduler: {keys}")
        first = requests[0]
        self.refresh()
        spec = self.residency.spec(first.model)
        wanted_loras = first.loras
        if first.mask_image is not None and spec.inpaint:
            spec = self.residency.spec(spec.inpaint)  # the model's own inpainting model
            wanted_loras = ()  # LoRAs are made for the model, not for its inpainting model
        fast_lora = self._fast_lora(spec) if first.fast else None
        call, loras = self._prepare(spec, first, wanted_loras, fast_lora)
        if first.upscale:
            images = self.upscaler.run(requests, spec, call, on_progress, should_cancel)
        else:
            images = self._draw(call, requests, spec, on_progress, should_cancel)
        return [GenerationResult(request, mine, request.seeds(), spec.fingerprint,
                                 fast_lora=fast_lora.name if fast_lora else None, lora_fingerprints=loras,
                                 guidance_kind=spec.defaults.family.guidance_kind)
                for request, mine in zip(requests, images)]

    # --- drawing -------------------------------------------------------------------------------

    def _prepare(self, spec: VariantSpec, request: GenerationRequest, loras, fast_lora) -> tuple[Call, tuple]:
        """The call that draws `request`: the model loaded with its LoRAs, the pipeline of its
        task and its scheduler. Only the call holds the pipeline, so the refiner can take the
        base's place in memory once the call lets go of it."""
        resident, applied = self.residency.activate(spec, loras, fast_lora)
        task = "inpaint" if request.mask_image is not None else "img2img" if request.init_image is not None else "text"
        pipe = resident.for_task(task)
        pipe.scheduler = resident.family.make_scheduler(request.scheduler, resident.scheduler_config)
        return Call(pipe, resident.family, request), applied

    def _draw(self, call: Call, requests, spec: VariantSpec, on_progress, should_cancel) -> list[list[Image.Image]]:
        """The images of each request, in order."""
        first = requests[0]
        self.configure_vae(call.pipe, first.width * first.height)
        items = [
            Item(index, request.prompt, request.negative_prompt, seed, init, mask=mask)
            for index, request in enumerate(requests)
            for init, mask in [(self._init_image(request), self._mask(request))]
            for seed in request.seeds()
        ]
        started = time.perf_counter()
        if first.refiner:
            # The ensemble of experts: the base denoises the first part of the schedule for every
            # image, then the refiner (specialised in the last, low-noise steps) finishes them. The
            # base's own references go first, so it can make way for the refiner if both do not fit.
            call.stage = "base"
            call.handoff = refiner_handoff(call.pipe.scheduler, first.steps, first.refiner_switch)
            handed = self.runner.run_chunks(call, items, on_progress, should_cancel)
            call.pipe = None
            refiner = self._refiner(first)
            finish = Call(refiner.for_task("img2img"), refiner.family, first, "refiner", call.handoff)
            del refiner
            images = self.runner.run_chunks(finish, handed, on_progress, should_cancel)
        else:
            images = self.runner.run_chunks(call, items, on_progress, should_cancel)
        self.record_speed(spec.name, first, time.perf_counter() - started, len(items))
        return [[image for item, image in zip(items, images) if item.request_index == index]
                for index in range(len(requests))]

    def _fast_lora(self, spec: VariantSpec) -> VariantSpec | None:
        """The LCM-LoRA of a variant's fast mode: its own, else its base's; None for an LCM or
        Turbo model, which is fast by itself."""
        name = spec.fast_lora
        if name is None and spec.kind == "lora":
            name = self.residency.spec(spec.base or "").fast_lora
        return self.residency.spec(name) if name else None

    def _refiner(self, request: GenerationRequest):
        """The refiner's resident model that finishes `request`: next to its base when the memory
        budget holds both, else in its place (the base loads again for its next batch)."""
        assert request.refiner
        resident = self.residency.resident_for(self.residency.spec(request.refiner))
        if resident.adapters:
            resident.pipe.disable_lora()
        pipe = resident.for_task("img2img")
        pipe.scheduler = resident.family.make_scheduler(request.scheduler, resident.scheduler_config)
        self.configure_vae(pipe, request.width * request.height)
        return resident

    def configure_vae(self, pipe, pixels: int) -> None:
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return
        if 0 < self.config.vae_tiling_pixels < pixels:
            vae.enable_tiling()
        else:
            vae.disable_tiling()

    def _init_image(self, request: GenerationRequest) -> Image.Image | None:
        if request.init_image is None:
            return None
        with Image.open(request.init_image) as source:
            return source.convert("RGB").resize((request.width, request.height), Image.Resampling.LANCZOS)

    def _mask(self, request: GenerationRequest) -> Image.Image | None:
        if request.mask_image is None:
            return None
        return load_mask(request.mask_image, (request.width, request.height))

    # --- statistics ----------------------------------------------------------------------------

    def count_load(self, seconds: float) -> None:
        self.stats.model_loads += 1
        self.stats.model_load_seconds += seconds

    def record_speed(self, model: str, request: GenerationRequest, seconds: float, images: int) -> None:
        for table, value in ((self.stats.seconds_per_step, seconds / max(1, request.steps * images)),
                             (self.stats.seconds_per_image, seconds / max(1, images))):
            old = table.get(model)
            table[model] = value if old is None else 0.8 * old + 0.2 * value

