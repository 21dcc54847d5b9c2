"""Which models are in memory: loading, the memory budget, least-recently-used eviction, and the
LoRA adapters attached to a loaded model.

A base model's weights are shared by the base and its LoRA variants (named adapters) and by its
image-to-image and inpainting pipelines (`from_pipe`). One instance is owned by the engine's thread.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import diffusers
import torch
from diffusers import DiffusionPipeline

import bot.engine.families as families
from bot.config import EngineConfig
from bot.core.errors import UserError, model_refusal
from bot.engine.batch_invariance import make_pipeline_batch_invariant
from bot.engine.devices import EngineSetupError
from bot.engine.families.base import Family
from bot.engine.generation import call_parameters
from bot.engine.loader import load_base_pipeline, load_lora, model_bytes, weight_file_bytes
from bot.models.errors import ModelUnavailable
from bot.models.registry import Registry
from bot.models.spec import VariantSpec

log = logging.getLogger(__name__)


@dataclass
class Resident:
    """A loaded full model, the LoRA adapters attached to it and its pipelines for other tasks."""

    spec: VariantSpec
    family: Family
    pipe: DiffusionPipeline
    scheduler_config: dict
    nbytes: int
    # LoRA variant name -> its fingerprint and size, least recently used first
    adapters: OrderedDict[str, tuple[str, int]] = field(default_factory=OrderedDict)
    tasks: dict[str, DiffusionPipeline] = field(default_factory=dict)  # "img2img", "inpaint" -> pipeline

    def total_bytes(self) -> int:
        return self.nbytes + sum(size for _, size in self.adapters.values())

    def for_task(self, task: str) -> DiffusionPipeline:
        """The pipeline for `task` over the same weights (no second copy in memory): the model's own
        when it already is one (an SDXL refiner is an image-to-image pipeline; a 9-channel
        inpainting model loads as an inpainting pipeline)."""
        if task == "text" or _takes(self.pipe, task):
            return self.pipe
        if task not in self.tasks:
            class_name = self.family.pipeline_class_name(task)
            if class_name is None:
                raise UserError(f"family_no_{task}", family=self.family.traits.label)
            pipeline = getattr(diffusers, class_name).from_pipe(self.pipe)
            pipeline.set_progress_bar_config(disable=True)
            self.tasks[task] = pipeline
        return self.tasks[task]


def _takes(pipe: DiffusionPipeline, task: str) -> bool:
    parameters = call_parameters(type(pipe))
    return "mask_image" in parameters if task == "inpaint" else "image" in parameters and "strength" in parameters


class Residency:
    def __init__(self, registry: Registry, config: EngineConfig, device: torch.device, dtype: torch.dtype,
                 budget: int, allow_download: bool, count_load) -> None:
        self.registry = registry
        self.config = config
        self.device = device
        self.dtype = dtype
        self.budget = budget
        self.allow_download = allow_download
        self.count_load = count_load  # (seconds) -> None: the engine's statistics
        self.models: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # the residency is one thread's, but listing may come from others

    def loaded(self) -> dict[str, list[str]]:
        """Resident models and, for each, the LoRA variants attached to it."""
        with self._lock:
            return {name: list(r.adapters) for name, r in self.models.items()}

    def drop_changed(self) -> None:
        """Unload models whose files changed (they load again, new weights, when next used) or that
        vanished from the store (to free their memory at once)."""
        with self._lock:
            for name, resident in list(self.models.items()):
                entry = self.registry.entry(name)
                if entry is None or not entry.ready or entry.spec.fingerprint != resident.spec.fingerprint:
                    log.info("model %s changed or removed in the store; unloading it", name)
                    self.evict(name)

    def unload(self, name: str) -> None:
        with self._lock:
            self.evict(name)

    def spec(self, name: str) -> VariantSpec:
        """The usable variant `name`; a variant the store cannot hand out is a refusal (UserError)
        the person who asked for it reads."""
        try:
            return self.registry.get(name)
        except ModelUnavailable as unavailable:
            raise model_refusal(unavailable) from None

    def activate(self, spec: VariantSpec, loras: Sequence[tuple[str, float]] = (),
                 fast_lora: VariantSpec | None = None) -> tuple[Resident, tuple[tuple[str, str], ...]]:
        """Make `spec`, with the request's LoRAs (and the fast mode's LCM-LoRA, if given) on top,
        what the next pipeline call uses; load what is missing. Returns its resident model and the
        request's LoRAs with their fingerprints."""
        base_spec = self.spec(spec.base or "") if spec.kind == "lora" else spec
        wanted: dict[str, tuple[VariantSpec, float]] = {}
        if spec.kind == "lora":
            wanted[spec.name] = (spec, spec.scale)
        for name, weight in loras:  # a weight in the request wins over the variant's own scale
            lora = spec if name == spec.name else self.spec(name)
            if lora.kind != "lora" or lora.base != base_spec.name:  # the store changed since admission
                raise UserError("lora_wrong_base", got=name, base=lora.base or name, model=spec.name,
                                available=", ".join(n for n, b in self.registry.lora_bases().items()
                                                    if b == base_spec.name) or "none")
            wanted[name] = (lora, weight)
        applied = tuple((name, lora.fingerprint) for name, (lora, _) in wanted.items())
        if fast_lora is not None:
            wanted[fast_lora.name] = (fast_lora, fast_lora.scale)
        resident = self.resident_for(base_spec)
        for lora, _ in wanted.values():
            self._load_adapter(resident, lora)
        if wanted:
            resident.pipe.enable_lora()
            resident.pipe.set_adapters(list(wanted), adapter_weights=[weight for _, weight in wanted.values()])
        elif resident.adapters:
            resident.pipe.disable_lora()
        with self._lock:
            self.enforce_budget(keep={base_spec.name}, keep_adapters=set(wanted))
        return resident, applied

    def _load_adapter(self, resident: Resident, lora: VariantSpec) -> None:
        """Attach a LoRA variant as a named adapter, once: later requests only switch to it."""
        loaded = resident.adapters.get(lora.name)
        if loaded is not None and loaded[0] == lora.fingerprint:
            resident.adapters.move_to_end(lora.name)
            return
        if loaded is not None:
            self.drop_adapter(resident, lora.name)
        started = time.perf_counter()
        load_lora(resident.pipe, lora)
        resident.adapters[lora.name] = (lora.fingerprint, weight_file_bytes(lora))
        self.count_load(time.perf_counter() - started)

    def drop_adapter(self, resident: Resident, name: str) -> None:
        resident.pipe.delete_adapters(name)
        del resident.adapters[name]

    def resident_for(self, spec: VariantSpec) -> Resident:
        with self._lock:
            resident = self.models.get(spec.name)
            if resident is not None and resident.spec.fingerprint == spec.fingerprint:
                self.models.move_to_end(spec.name)
                return resident
            if resident is not None:
                self.evict(spec.name)
            # Make room before loading, not after, so two big models are never in memory together
            # beyond the budget; the size on disk stands in for the size in memory.
            family = families.by_name(spec.defaults.family.name)
            self.enforce_budget(keep=set(), incoming=weight_file_bytes(spec, family.quantizable))
        started = time.perf_counter()
        log.info("loading model %s (%s) on %s as %s", spec.name, spec.kind, self.device, self.dtype)
        pipe = load_base_pipeline(spec, self.dtype, self.allow_download, quantize_for=self.device,
                                  components=family.quantizable)
        self._place(pipe, family)
        resident = Resident(spec, family, pipe, dict(pipe.scheduler.config), model_bytes(pipe))
        self.count_load(time.perf_counter() - started)
        with self._lock:
            self.models[spec.name] = resident
            self.enforce_budget(keep={spec.name})
        return resident

    def _place(self, pipe: DiffusionPipeline, family: Family) -> None:
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
        denoiser = getattr(pipe, family.denoiser, None)
        if denoiser is not None and self.config.channels_last and family.denoiser == "unet":
            denoiser.to(memory_format=torch.channels_last)
        if denoiser is not None and self.config.compile:
            setattr(pipe, family.denoiser, torch.compile(denoiser))

    def enforce_budget(self, keep: set[str], incoming: int = 0, keep_adapters: set[str] = frozenset()) -> None:
        """Unload least recently used LoRA adapters, then models, until the budget holds; never
        what the next call uses. The caller holds the lock."""
        total = incoming + sum(r.total_bytes() for r in self.models.values())
        for resident in self.models.values():
            for adapter in list(resident.adapters):
                if total <= self.budget:
                    return
                if adapter not in keep_adapters:
                    total -= resident.adapters[adapter][1]
                    log.info("unloading LoRA %s to stay within the memory budget", adapter)
                    self.drop_adapter(resident, adapter)
        for name in list(self.models):
            if total <= self.budget:
                break
            if name not in keep:
                total -= self.models[name].total_bytes()
                log.info("unloading model %s to stay within the memory budget", name)
                self.evict(name)

    def evict(self, name: str) -> None:
        if self.models.pop(name, None) is not None:
            gc.collect()  # pipelines hold reference cycles; free the weights now, not some time later
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


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
