"""Turn a variant spec into a diffusers pipeline (weights only; device placement is the engine's)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

import bot.engine.families as families
from bot.core.errors import UserError
from bot.engine.quantize import (QuantizeUnsupported, check_supported, missing_components,
                                 quantization_config, quantize_loaded, quantized_file_bytes, tensor_bytes)
from bot.models.spec import VariantSpec, pipeline_files

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


def load_base_pipeline(spec: VariantSpec, dtype: torch.dtype, allow_download: bool, *,
                       quantize_for: torch.device | None = None,
                       components: Sequence[str] | None = None) -> DiffusionPipeline:
    """Load a full model (pipeline folder, single checkpoint file or hub id).

    With `quantize_for` (the device the model will run on), the variant's `quantize` applies to
    `components` (by default what its family names as quantizable); without it the weights load as they are stored, as
    training needs them. A mode the device cannot run raises ModelLoadError saying what would."""
    quantize = spec.quantize if quantize_for is not None else "none"
    if quantize != "none":
        try:
            check_supported(quantize, quantize_for)
        except QuantizeUnsupported as error:
            raise ModelLoadError(f"model '{spec.name}' cannot be loaded here: {error}") from None
    # bitsandbytes weights load straight onto the current CUDA device: make that the engine's.
    on_device = torch.cuda.device(quantize_for) if quantize != "none" and quantize_for.type == "cuda" else nullcontext()
    with _ONE_LOAD_AT_A_TIME, on_device:
        pipe = _load_base_pipeline(spec, dtype, allow_download, quantize, quantize_for,
                                   tuple(components) if components is not None else quantizable(spec))
    if quantize != "none" and components is not None and missing_components(pipe, components):
        log.warning("model %s: quantize names components it does not have: %s", spec.name,
                    ", ".join(missing_components(pipe, components)))
    return pipe


def _load_base_pipeline(spec: VariantSpec, dtype: torch.dtype, allow_download: bool, quantize: str,
                        device: torch.device | None, components: tuple[str, ...]) -> DiffusionPipeline:
    # single_file quantizes after loading (diffusers' pipeline from_single_file takes no
    # quantization config); the others quantize while loading, never holding the full weights.
    try:
        config = None
        if device is not None and spec.kind != "single_file":
            config = quantization_config(quantize, components, device, dtype)
        if spec.kind == "pipeline":
            return DiffusionPipeline.from_pretrained(str(spec.folder), torch_dtype=dtype, local_files_only=True,
                                                     quantization_config=config)
        if spec.kind == "single_file":
            family = families.by_name(spec.defaults.family.name)
            if family.load_file is None:
                raise ValueError(f"{family.traits.label} models do not load from a single file")
            pipe = family.load_file(spec, dtype)
            if device is not None:
                quantize_loaded(pipe, quantize, components, device, dtype)
            return pipe
        if spec.kind == "hub":
            return _load_from_hub(spec, dtype, allow_download, config)
    except UserError:
        raise
    except Exception as error:  # diffusers raises many types; the user needs the variant and the cause
        # The loaders' own checks raise ValueError with a message written to be read as it is.
        cause = str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"
        raise ModelLoadError(f"model '{spec.name}' could not be loaded: {cause}") from error
    raise ModelLoadError(f"model '{spec.name}' of kind {spec.kind} is not a full model")


def _load_from_hub(spec: VariantSpec, dtype: torch.dtype, allow_download: bool, config) -> DiffusionPipeline:
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        return DiffusionPipeline.from_pretrained(spec.repo, revision=spec.revision, torch_dtype=dtype,
                                                 local_files_only=offline, quantization_config=config)
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
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"{type(pipe).__name__} takes no LoRAs")
    if spec.file is not None:
        pipe.load_lora_weights(str(spec.file.parent), weight_name=spec.file.name, adapter_name=spec.name)
    else:
        pipe.load_lora_weights(str(spec.folder), adapter_name=spec.name)
    # A file none of whose keys name a layer of this model (a LoRA for another family) loads
    # nothing, with no more than a warning; it would fail later, on every request, as an unknown adapter.
    if not any(spec.name in names for names in pipe.get_list_adapters().values()):
        raise ValueError("none of its weights fit this model's layers (is it a LoRA for another model family?)")


class _TextEncoderWithoutLora(logging.Filter):
    """Most LoRAs of the transformer families train the transformer alone; diffusers then warns, for
    each text encoder at every load, that the file has none of its keys, "safe to ignore"."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("No LoRA keys associated to") and "prefix='text_encoder" in message)


logging.getLogger("diffusers.loaders.lora_base").addFilter(_TextEncoderWithoutLora())


def quantizable(spec: VariantSpec) -> tuple[str, ...]:
    """What `quantize` shrinks in a variant: its family's denoiser and big text encoders."""
    return families.by_name(spec.defaults.family.name).quantizable


def model_bytes(pipe: DiffusionPipeline) -> int:
    """Memory held by a pipeline's weights (what the resident-model budget counts), quantized
    weights at what they store."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(tensor_bytes(t) for t in component.parameters())
            total += sum(tensor_bytes(t) for t in component.buffers())
    return total


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".ckpt", ".pt", ".pth")


def weight_file_bytes(spec: VariantSpec, components: Sequence[str] | None = None) -> int:
    """The size of a variant's weight files on disk: what loading it will roughly take in memory
    (0 for a hub model, whose files are elsewhere), with the quantized `components` (by default
    its family's quantizable ones) at their quantized size when the variant says quantize."""
    if spec.kind == "hub":
        return 0
    if spec.quantize != "none":
        estimate = quantized_file_bytes(spec, tuple(components) if components is not None else quantizable(spec))
        if estimate is not None:
            return estimate
    if spec.kind == "single_file" and spec.file is not None:
        files = [spec.file]
    else:
        files = pipeline_files(spec.folder) if spec.kind == "pipeline" else list(spec.folder.rglob("*"))
    if spec.components_dir is not None:  # a transformer file draws with another pipeline's other components
        files += [path for path in pipeline_files(spec.components_dir)
                  if path.relative_to(spec.components_dir).parts[0] != "transformer"]
    return sum(path.stat().st_size for path in files if path.suffix.lower() in WEIGHT_SUFFIXES and path.is_file())
