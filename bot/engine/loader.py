"""Turn a variant spec into a diffusers pipeline (weights only; device placement is the engine's)."""

from __future__ import annotations

import logging
import os
import threading

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

import bot.engine.families as families
from bot.core.errors import UserError
from bot.models.spec import VariantSpec

log = logging.getLogger(__name__)

# Loading progress bars belong in a terminal session of diffusers, not in a bot's log.
diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()


# diffusers and accelerate build models under process-wide patches (empty-weight initialisation
# swaps torch's parameter registration while a model is built), so two threads loading at once
# (a worker abandoned after a timeout and its replacement, or two services in one process) can
# corrupt each other's models ("Cannot copy out of meta tensor"). Loads take turns.
_ONE_LOAD_AT_A_TIME = threading.Lock()


class ModelLoadError(RuntimeError):
    """A variant's files are present but could not be loaded; names the variant and the cause."""


def load_base_pipeline(spec: VariantSpec, dtype: torch.dtype, allow_download: bool) -> DiffusionPipeline:
    """Load a full model (pipeline folder, single checkpoint file or hub id)."""
    with _ONE_LOAD_AT_A_TIME:
        return _load_base_pipeline(spec, dtype, allow_download)


def _load_base_pipeline(spec: VariantSpec, dtype: torch.dtype, allow_download: bool) -> DiffusionPipeline:
    try:
        if spec.kind == "pipeline":
            return DiffusionPipeline.from_pretrained(str(spec.folder), torch_dtype=dtype, local_files_only=True)
        if spec.kind == "single_file":
            family = families.by_name(spec.defaults.family.name)
            if family.load_file is None:
                raise ValueError(f"{family.traits.label} models do not load from a single file")
            return family.load_file(spec, dtype)
        if spec.kind == "hub":
            return _load_from_hub(spec, dtype, allow_download)
    except UserError:
        raise
    except Exception as error:  # diffusers raises many types; the user needs the variant and the cause
        raise ModelLoadError(f"model '{spec.name}' could not be loaded: {type(error).__name__}: {error}") from error
    raise ModelLoadError(f"model '{spec.name}' of kind {spec.kind} is not a full model")


def _load_from_hub(spec: VariantSpec, dtype: torch.dtype, allow_download: bool) -> DiffusionPipeline:
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        return DiffusionPipeline.from_pretrained(spec.repo, revision=spec.revision, torch_dtype=dtype,
                                                 local_files_only=offline)
    except (OSError, ValueError) as error:
        # Missing from the local cache, and either offline or the download failed.
        log.warning("hub model %s (%s) unavailable: %s", spec.name, spec.repo, error)
        raise UserError("model_offline", name=spec.name, repo=spec.repo, folder=str(spec.folder)) from error


def load_lora(pipe: DiffusionPipeline, spec: VariantSpec) -> None:
    """Attach a LoRA variant to its (already loaded) base pipeline as a named adapter."""
    try:
        with _ONE_LOAD_AT_A_TIME:
            _load_lora(pipe, spec)
    except Exception as error:
        raise ModelLoadError(f"LoRA '{spec.name}' could not be applied to '{spec.base}': "
                             f"{type(error).__name__}: {error}") from error


def _load_lora(pipe: DiffusionPipeline, spec: VariantSpec) -> None:
    if spec.file is not None:
        pipe.load_lora_weights(str(spec.file.parent), weight_name=spec.file.name, adapter_name=spec.name)
    else:
        pipe.load_lora_weights(str(spec.folder), adapter_name=spec.name)


def model_bytes(pipe: DiffusionPipeline) -> int:
    """Memory held by a pipeline's weights (what the resident-model budget counts)."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def weight_file_bytes(spec: VariantSpec) -> int:
    """The size of a variant's weight files on disk: what loading it will roughly take in memory
    (0 for a hub model, whose files are elsewhere)."""
    if spec.kind == "hub":
        return 0
    files = [spec.file] if spec.kind == "single_file" and spec.file is not None else spec.folder.rglob("*")
    return sum(path.stat().st_size for path in files if path.suffix.lower() in WEIGHT_SUFFIXES and path.is_file())
