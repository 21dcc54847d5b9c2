"""The generation engine: the only place that runs diffusion pipelines.

One instance is owned by one thread (the GPU worker, or the CLI). It keeps recently used models
resident under a memory budget, shares a base model's weights between the base and its LoRA
variants (named adapters) and with img2img (`from_pipe`), and runs a batch of compatible requests
as one pipeline call with one random generator per image, so each image depends only on its own
seed and prompt, never on what else was in the batch.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from PIL import Image

from bot.config import EngineConfig
from bot.core.errors import Cancelled, UserError, model_refusal
from bot.core.prompt_syntax import strip_lora_tags
from bot.core.request import GenerationRequest
from bot.engine.batch_invariance import make_pipeline_batch_invariant
from bot.engine.devices import EngineSetupError, check_offload, memory_budget_bytes, pick_device, pick_dtype
from bot.engine.inpaint import inpainting_pipeline, load_mask, paste_unmasked
from bot.engine.interrupt import stoppable
from bot.engine.loader import load_base_pipeline, load_lora, model_bytes, weight_file_bytes
from bot.engine.prompts import needs_embeddings, prompt_embeddings
from bot.models.errors import ModelUnavailable
from bot.models.registry import Registry
from bot.models.spec import VariantSpec
from bot.engine.schedulers import make_scheduler
from bot.engine.upscale import Upscaler, UpscalerError, blend_tiles, load_upscaler, run_upscaler, tile_boxes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 1..total
    total: int
    latents: Any = None  # the current latents (torch tensor) for previews; None when not asked for


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    model_fingerprint: str
    fast_lora: str | None = None  # the LCM-LoRA a fast-mode request ran with
    lora_fingerprints: tuple[tuple[str, str], ...] = ()  # (LoRA variant, fingerprint) applied, in order


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


@dataclass
class _Resident:
    """A loaded full model and the LoRA adapters attached to it."""

    spec: VariantSpec
    pipe: DiffusionPipeline
    scheduler_config: dict
    nbytes: int
    # LoRA variant name -> its fingerprint and size, least recently used first
    adapters: OrderedDict[str, tuple[str, int]] = field(default_factory=OrderedDict)
    img2img: DiffusionPipeline | None = None
    inpaint: DiffusionPipeline | None = None

    def total_bytes(self) -> int:
        return self.nbytes + sum(size for _, size in self.adapters.values())


@dataclass(frozen=True)
class _Item:
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


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


class Engine:
    def __init__(self, registry: Registry, config: EngineConfig | None = None, *, allow_download: bool = True,
                 want_latents: bool = False) -> None:
        self.registry = registry
        self.config = config or EngineConfig()
        self.allow_download = allow_download
        self.want_latents = want_latents
        self.device = pick_device(self.config)
        check_offload(self.config, self.device)
        self.dtype = pick_dtype(self.config, self.device)
        self.budget = memory_budget_bytes(self.config, self.device)
        self.stats = EngineStats()
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # least recently used first
        self._upscaler: Upscaler | None = None  # the last upscaler used (one is configured at a time)
        self._lock = threading.Lock()  # the engine is one thread's, but listing may come from others
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    # --- public API --------------------------------------------------------------------------

    def loaded(self) -> dict[str, list[str]]:
        """Resident models and, for each, the LoRA variants attached to it."""
        with self._lock:
            return {name: list(r.adapters) for name, r in self._resident.items()}

    def refresh(self) -> None:
        """Pick up changes in the model store; call between batches.

        A model whose files changed is dropped and loads again (new weights) when next used; one
        that vanished is dropped at once to free its memory.
        """
        self.registry.scan_if_due()
        with self._lock:
            for name, resident in list(self._resident.items()):
                entry = self.registry.entry(name)
                if entry is None or not entry.ready or entry.spec.fingerprint != resident.spec.fingerprint:
                    log.info("model %s changed or removed in the store; unloading it", name)
                    self._evict(name)

    def unload(self, name: str) -> None:
        """Free a resident model now (a Ray replica's least recently used variant)."""
        with self._lock:
            self._evict(name)

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
        spec = self._spec(first.model)
        wanted_loras = first.loras
        if first.mask_image is not None and spec.inpaint:
            spec = self._spec(spec.inpaint)  # the model's own inpainting model
            wanted_loras = ()  # LoRAs are made for the model, not for its inpainting model
        fast_lora = self._fast_lora(spec) if first.fast else None
        pipe, resident, loras = self._activate(spec, wanted_loras, fast_lora)
        if first.mask_image is not None:
            if resident.inpaint is None:
                resident.inpaint = inpainting_pipeline(resident.pipe)
            pipe = resident.inpaint
        elif first.init_image is not None:
            pipe = self._img2img(resident)
        pipe.scheduler = make_scheduler(first.scheduler, resident.scheduler_config)
        if first.upscale:
            return self._upscale(requests, spec, pipe, fast_lora, loras, on_progress, should_cancel)
        self._configure_vae(pipe, first.width * first.height)

        items = [
            _Item(index, request.prompt, request.negative_prompt, seed, init, mask=mask)
            for index, request in enumerate(requests)
            for init, mask in [(self._init_image(request), self._mask(request))]
            for seed in request.seeds()
        ]
        started = time.perf_counter()
        if first.refiner:
            # The ensemble of experts: the base denoises the first part of the schedule for every
            # image, then the refiner (specialised in the last, low-noise steps) finishes them. The
            # base's own references go first, so it can make way for the refiner if both do not fit.
            handed = self._run_chunks(pipe, first, items, on_progress, should_cancel, "base")
            del pipe, resident
            images = self._run_chunks(self._refiner(first), first, handed, on_progress, should_cancel, "refiner")
        else:
            images = self._run_chunks(pipe, first, items, on_progress, should_cancel, "whole")
        self._record_speed(spec.name, first, time.perf_counter() - started, len(items))

        results = []
        for index, request in enumerate(requests):
            mine = [image for item, image in zip(items, images) if item.request_index == index]
            results.append(GenerationResult(request, mine, request.seeds(), spec.fingerprint,
                                            fast_lora=fast_lora.name if fast_lora else None,
                                            lora_fingerprints=loras))
        return results

    # --- models ------------------------------------------------------------------------------

    def _activate(self, spec: VariantSpec, loras: Sequence[tuple[str, float]] = (),
                  fast_lora: VariantSpec | None = None
                  ) -> tuple[DiffusionPipeline, _Resident, tuple[tuple[str, str], ...]]:
        """Make `spec`, with the request's LoRAs (and the fast mode's LCM-LoRA, if given) on top,
        what the next pipeline call uses; load what is missing. Returns the pipeline, its resident
        model and the request's LoRAs with their fingerprints."""
        base_spec = self._spec(spec.base or "") if spec.kind == "lora" else spec
        wanted: dict[str, tuple[VariantSpec, float]] = {}
        if spec.kind == "lora":
            wanted[spec.name] = (spec, spec.scale)
        for name, weight in loras:  # a weight in the request wins over the variant's own scale
            lora = spec if name == spec.name else self._spec(name)
            if lora.kind != "lora" or lora.base != base_spec.name:  # the store changed since admission
                raise UserError("lora_wrong_base", got=name, base=lora.base or name, model=spec.name,
                                available=", ".join(n for n, b in self.registry.lora_bases().items()
                                                    if b == base_spec.name) or "none")
            wanted[name] = (lora, weight)
        applied = tuple((name, lora.fingerprint) for name, (lora, _) in wanted.items())
        if fast_lora is not None:
            wanted[fast_lora.name] = (fast_lora, fast_lora.scale)
        resident = self._resident_for(base_spec)
        for lora, _ in wanted.values():
            self._load_adapter(resident, lora)
        if wanted:
            resident.pipe.enable_lora()
            resident.pipe.set_adapters(list(wanted), adapter_weights=[weight for _, weight in wanted.values()])
        elif resident.adapters:
            resident.pipe.disable_lora()
        with self._lock:
            self._enforce_budget(keep={base_spec.name}, keep_adapters=set(wanted))
        return resident.pipe, resident, applied

    def _load_adapter(self, resident: _Resident, lora: VariantSpec) -> None:
        """Attach a LoRA variant as a named adapter, once: later requests only switch to it."""
        loaded = resident.adapters.get(lora.name)
        if loaded is not None and loaded[0] == lora.fingerprint:
            resident.adapters.move_to_end(lora.name)
            return
        if loaded is not None:
            self._drop_adapter(resident, lora.name)
        started = time.perf_counter()
        load_lora(resident.pipe, lora)
        resident.adapters[lora.name] = (lora.fingerprint, weight_file_bytes(lora))
        self._count_load(time.perf_counter() - started)

    def _drop_adapter(self, resident: _Resident, name: str) -> None:
        resident.pipe.delete_adapters(name)
        del resident.adapters[name]

    def _spec(self, name: str) -> VariantSpec:
        """The usable variant `name`; a variant the store cannot hand out is a refusal (UserError)
        the person who asked for it reads."""
        try:
            return self.registry.get(name)
        except ModelUnavailable as unavailable:
            raise model_refusal(unavailable) from None

    def _fast_lora(self, spec: VariantSpec) -> VariantSpec | None:
        """The LCM-LoRA of a variant's fast mode: its own, else its base's; None for an LCM or
        Turbo model, which is fast by itself."""
        name = spec.fast_lora
        if name is None and spec.kind == "lora":
            name = self._spec(spec.base or "").fast_lora
        return self._spec(name) if name else None

    def _refiner(self, request: GenerationRequest) -> DiffusionPipeline:
        """The refiner pipeline that finishes `request`: next to its base when the memory budget
        holds both, else in its place (the base loads again for its next batch)."""
        assert request.refiner
        spec = self._spec(request.refiner)
        resident = self._resident_for(spec)
        if resident.adapters:
            resident.pipe.disable_lora()
        resident.pipe.scheduler = make_scheduler(request.scheduler, resident.scheduler_config)
        self._configure_vae(resident.pipe, request.width * request.height)
        return resident.pipe

    def _resident_for(self, spec: VariantSpec) -> _Resident:
        with self._lock:
            resident = self._resident.get(spec.name)
            if resident is not None and resident.spec.fingerprint == spec.fingerprint:
                self._resident.move_to_end(spec.name)
                return resident
            if resident is not None:
                self._evict(spec.name)
            # Make room before loading, not after, so two big models are never in memory together
            # beyond the budget; the size on disk stands in for the size in memory.
            self._enforce_budget(keep=set(), incoming=weight_file_bytes(spec))
        started = time.perf_counter()
        log.info("loading model %s (%s) on %s as %s", spec.name, spec.kind, self.device, self.dtype)
        pipe = load_base_pipeline(spec, self.dtype, self.allow_download, quantize_for=self.device)
        self._place(pipe)
        resident = _Resident(spec, pipe, dict(pipe.scheduler.config), model_bytes(pipe))
        self._count_load(time.perf_counter() - started)
        with self._lock:
            self._resident[spec.name] = resident
            self._enforce_budget(keep={spec.name})
        return resident

    def _place(self, pipe: DiffusionPipeline) -> None:
        """Device, attention kernel and memory layout, as configured."""
        pipe.set_progress_bar_config(disable=True)
        if self.config.cpu_offload != "none" and self.device.type == "cuda":
            if self.config.cpu_offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.device.type == "cpu":
            _own_weights(pipe)
        if self.config.attention == "xformers":
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as error:  # not installed, or no CUDA
                raise EngineSetupError(
                    f"engine.attention is 'xformers' but it cannot be used here ({error}). "
                    "Install it with pip install 'imagebot[xformers]' on a CUDA machine, "
                    "or set engine.attention = \"auto\".") from error
        invariant = self.config.batch_invariant
        if invariant == "on" or invariant == "auto" and self.device.type == "cpu":
            make_pipeline_batch_invariant(pipe)
        denoiser = getattr(pipe, "unet", None)
        if denoiser is not None and self.config.channels_last:
            denoiser.to(memory_format=torch.channels_last)
        if denoiser is not None and self.config.compile:
            pipe.unet = torch.compile(denoiser)

    def _img2img(self, resident: _Resident) -> DiffusionPipeline:
        """An image-to-image pipeline over the same weights (no second copy in memory)."""
        if resident.img2img is None:
            resident.img2img = AutoPipelineForImage2Image.from_pipe(resident.pipe)
            resident.img2img.set_progress_bar_config(disable=True)
        return resident.img2img

    def _enforce_budget(self, keep: set[str], incoming: int = 0, keep_adapters: set[str] = frozenset()) -> None:
        """Unload least recently used LoRA adapters, then models, until the budget holds; never
        what the next call uses."""
        total = incoming + sum(r.total_bytes() for r in self._resident.values())
        for resident in self._resident.values():
            for adapter in list(resident.adapters):
                if total <= self.budget:
                    return
                if adapter not in keep_adapters:
                    total -= resident.adapters[adapter][1]
                    log.info("unloading LoRA %s to stay within the memory budget", adapter)
                    self._drop_adapter(resident, adapter)
        for name in list(self._resident):
            if total <= self.budget:
                break
            if name not in keep:
                total -= self._resident[name].total_bytes()
                log.info("unloading model %s to stay within the memory budget", name)
                self._evict(name)

    def _evict(self, name: str) -> None:
        if self._resident.pop(name, None) is not None:
            gc.collect()  # pipelines hold reference cycles; free the weights now, not some time later
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _count_load(self, seconds: float) -> None:
        self.stats.model_loads += 1
        self.stats.model_load_seconds += seconds

    # --- running -----------------------------------------------------------------------------

    def _configure_vae(self, pipe: DiffusionPipeline, pixels: int) -> None:
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

    def _run_chunks(self, pipe, request, items, on_progress, should_cancel, stage: str) -> list:
        out: list = []
        for start in range(0, len(items), self.config.max_batch):
            chunk = items[start: start + self.config.max_batch]
            out += self._run_with_oom_retry(pipe, request, chunk, on_progress, should_cancel, stage)
        return out

    def _run_with_oom_retry(self, pipe, request, items, on_progress, should_cancel, stage: str) -> list:
        try:
            return self._call(pipe, request, items, on_progress, should_cancel, stage)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                raise UserError("out_of_memory", width=request.width, height=request.height) from None
            self.stats.oom_retries += 1
            half = len(items) // 2
            log.warning("out of memory with %d images; retrying as %d + %d", len(items), half, len(items) - half)
            return (self._run_with_oom_retry(pipe, request, items[:half], on_progress, should_cancel, stage)
                    + self._run_with_oom_retry(pipe, request, items[half:], on_progress, should_cancel, stage))

    def _call(self, pipe, request: GenerationRequest, items: list[_Item], on_progress, should_cancel, stage: str):
        """One pipeline call for `items`. `stage` is "whole" (an ordinary call, images out), "base"
        (the first part of the schedule; the items come back with their latents) or "refiner"
        (finishes the items' latents; images out)."""
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        # One CPU generator per image: the same seed gives the same starting noise on any device
        # and in any batch.
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        for generator, item in zip(generators, items):
            if item.rng_state is not None:
                generator.set_state(item.rng_state)
        prompts = [strip_lora_tags(item.prompt) for item in items]
        negatives = [strip_lora_tags(item.negative_prompt) for item in items]
        if needs_embeddings(pipe, prompts + negatives):
            # Weights or a prompt over the text encoder's window: compel encodes them.
            text: dict[str, Any] = prompt_embeddings(pipe, prompts, negatives)
        elif not any(negatives) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            text = dict(prompt=prompts, negative_prompt=None)  # SDXL's own convention for "no negative prompt"
        else:
            text = dict(prompt=prompts, negative_prompt=negatives)

        reported = [items[0].steps_done]  # the refiner's steps count on from the base's

        def on_step_end(pipeline, step, timestep, tensors):
            if should_cancel is not None and should_cancel():
                raise Cancelled()  # leaves the denoising loop at once, skipping the decode
            latents = tensors.get("latents") if self.want_latents else None
            if stage == "whole":
                total = getattr(pipeline, "num_timesteps", None) or request.steps
                step_done = step + 1
            else:  # base and refiner share the request's steps between them
                total = request.steps
                reported[0] += 1
                step_done = min(total, reported[0])
            if on_progress is not None:
                on_progress(Progress(step_done, total, latents))
            return {}

        kwargs: dict[str, Any] = dict(
            **text,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=generators,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
        )
        if stage == "refiner":
            kwargs.update(image=torch.cat([item.latents for item in items]),
                          denoising_start=request.refiner_switch)
        elif request.init_image is not None:
            strength = request.strength or 0.6
            # img2img runs int(steps * strength) steps; make that at least one.
            kwargs.update(image=[item.init_image for item in items], strength=strength,
                          num_inference_steps=max(request.steps, math.ceil(1 / strength)))
            if request.mask_image is not None:
                kwargs.update(mask_image=[item.mask for item in items], width=request.width, height=request.height)
        else:
            kwargs.update(width=request.width, height=request.height)
        if stage == "base":
            kwargs.update(denoising_end=request.refiner_switch, output_type="latent")
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

    # --- upscaling ------------------------------------------------------------------------------

    def _upscale(self, requests, spec: VariantSpec, pipe, fast_lora, loras, on_progress, should_cancel):
        """Each request's `init_image` enlarged to its size: by the upscaler (or resized), then,
        at `strength` > 0, redrawn by img2img in tiles of the model's native size, all tiles of
        the batch sharing pipeline calls. Memory stays that of one native-size batch."""
        first = requests[0]
        upscaler = self._upscaler_for(first.upscaler) if first.upscaler else None
        started = time.perf_counter()
        enlarged = []
        for request in requests:
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            size = (request.width, request.height)
            with Image.open(request.init_image) as source:
                image = source.convert("RGB")
            enlarged.append(run_upscaler(upscaler, image, size) if upscaler
                            else image.resize(size, Image.Resampling.LANCZOS))

        if first.strength:
            tile_w, tile_h = spec.defaults.width, spec.defaults.height
            overlap = min(tile_w, tile_h) // 4
            layouts = [tile_boxes(request.width, request.height, tile_w, tile_h, overlap) for request in requests]
            items = [
                # Each tile its own seed, so no noise pattern repeats across the image.
                _Item(index, request.prompt, request.negative_prompt, (request.seed + n) % 2**32,
                      enlarged[index].crop((left, top, right, bottom)))
                for index, (request, boxes) in enumerate(zip(requests, layouts))
                for n, (top, left, bottom, right) in enumerate(boxes)
            ]
            self._configure_vae(pipe, tile_w * tile_h)
            chunks = [items[at: at + self.config.max_batch] for at in range(0, len(items), self.config.max_batch)]
            drawn: list[Image.Image] = []
            for number, chunk in enumerate(chunks):
                report = _chunk_progress(on_progress, number, len(chunks))
                drawn += self._run_with_oom_retry(pipe, first, chunk, report, should_cancel, "whole")
            for index, boxes in enumerate(layouts):
                mine = [image for item, image in zip(items, drawn) if item.request_index == index]
                enlarged[index] = blend_tiles(mine, boxes, (requests[index].width, requests[index].height), overlap)
        self._record_speed(spec.name, first, time.perf_counter() - started, len(requests))
        return [GenerationResult(request, [image], request.seeds(), spec.fingerprint,
                                 fast_lora=fast_lora.name if fast_lora else None, lora_fingerprints=loras)
                for request, image in zip(requests, enlarged)]

    def _upscaler_for(self, name: str) -> Upscaler:
        try:
            spec = self._spec(name)
        except UserError as error:
            raise UserError("upscaler_missing", name=name, error=str(error)) from None
        if spec.kind != "upscaler":
            raise UserError("upscaler_missing", name=name,
                            error=f"it is a {spec.kind} variant; [upscale] model names a variant of kind \"upscaler\"")
        if self._upscaler is None or (self._upscaler.name, self._upscaler.fingerprint) != (name, spec.fingerprint):
            self._upscaler = None
            started = time.perf_counter()
            try:
                self._upscaler = load_upscaler(spec, self.device, self.dtype)
            except UpscalerError as error:
                raise UserError("upscaler_missing", name=name, error=str(error)) from error
            self._count_load(time.perf_counter() - started)
        return self._upscaler

    def _record_speed(self, model: str, request: GenerationRequest, seconds: float, images: int) -> None:
        for table, value in ((self.stats.seconds_per_step, seconds / max(1, request.steps * images)),
                             (self.stats.seconds_per_image, seconds / max(1, images))):
            old = table.get(model)
            table[model] = value if old is None else 0.8 * old + 0.2 * value


def _chunk_progress(on_progress: ProgressCallback | None, number: int, count: int) -> ProgressCallback | None:
    """Progress of one of `count` pipeline calls, reported as progress of the whole job."""
    if on_progress is None:
        return None
    return lambda p: on_progress(Progress(number * p.total + p.step, count * p.total))


def _own_weights(pipe: DiffusionPipeline) -> None:
    """Copy weights out of memory-mapped checkpoint files into fresh, aligned tensors.

    On the CPU some kernels sum in another order when a weight starts at an odd address, as
    tensors inside a mapped .safetensors file do; the same model would then draw slightly different
    pixels depending on how it was loaded. Fresh allocations are always aligned.
    """
    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    tensor.data = tensor.data.clone()
