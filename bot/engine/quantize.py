"""Smaller weights for a model's big components: variant.toml `quantize = "int8" | "nf4" | "fp8"`.

The denoiser (a UNet or a transformer) and a family's big text encoders hold nearly all of a
model's weights; storing their linear layers in 8 or 4 bits lets a model fit a card it would not
fit in half precision. What each mode needs:

- int8: torchao int8 weight-only (one scale per output row); runs on CUDA GPUs and on the CPU.
- nf4: bitsandbytes 4-bit NormalFloat, computing in the engine's number format. diffusers and
  transformers load bitsandbytes weights only onto a GPU, so it needs CUDA.
- fp8: torchao float8 weight-only; the GPU must have FP8 (compute capability 8.9+: RTX 40xx, L4,
  H100).

Apple's `mps` backend has none of them. Which components are quantized is the caller's choice:
the model family's `quantizable` (its denoiser and big text encoders).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, PipelineQuantizationConfig

from bot.models.spec import QUANTIZE_MODES, VariantSpec, pipeline_files

log = logging.getLogger(__name__)

INSTALL = "pip install 'imagebot[quantize]'"
_LIBRARY = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}
FP8_CAPABILITY = (8, 9)
# What one weight of a quantized linear layer takes with its share of the scales: int8 and fp8
# keep one scale per row (a few bytes per thousands of weights, left out); nf4 packs two weights in
# a byte and keeps a float32 scale per block of 64 weights (4/64 of a byte more per weight).
BYTES_PER_WEIGHT = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
# Where each component's tensors sit in an original-layout (single-file) checkpoint. The SDXL
# refiner's one encoder sits at embedders.0; naming it text_encoder_2 there finds nothing to shrink,
# and the estimate errs on the large side.
_SINGLE_FILE_PREFIXES = {"unet": ("model.diffusion_model.",),
                         "text_encoder": ("cond_stage_model.", "conditioner.embedders.0."),
                         "text_encoder_2": ("conditioner.embedders.1.",)}
# Token and position tables are 2-D but not linear layers: they stay as they are.
_EMBEDDINGS = ("token_embedding.weight", "position_embedding.weight", "embed_tokens.weight", "shared.weight")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class QuantizeUnsupported(RuntimeError):
    """The variant's quantize mode cannot run on this machine; the message says what would."""


def check_supported(mode: str, device: torch.device) -> None:
    """Raise QuantizeUnsupported unless `mode` can run on `device` with the libraries installed."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeUnsupported(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if mode == "none":
        return
    where = _describe_device(device)
    if mode == "fp8":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < FP8_CAPABILITY:
            instead = '"int8" or "nf4"' if device.type == "cuda" else '"int8" or "none"'
            raise QuantizeUnsupported(
                'quantize = "fp8" needs an NVIDIA GPU with FP8 (RTX 40xx, L4, H100; compute capability 8.9+); '
                f"{where}: use {instead}")
    elif mode == "nf4" and device.type != "cuda":
        instead = '"int8" or "none"' if device.type == "cpu" else '"none"'
        raise QuantizeUnsupported(
            'quantize = "nf4" needs a CUDA GPU (diffusers loads bitsandbytes 4-bit weights only onto a GPU); '
            f"{where}: use {instead}")
    elif mode == "int8" and device.type not in ("cuda", "cpu"):
        raise QuantizeUnsupported(f'quantize = "int8" runs on CUDA GPUs and the CPU; {where}: use "none"')
    library = _LIBRARY[mode]
    if importlib.util.find_spec(library) is None:
        raise QuantizeUnsupported(f'quantize = "{mode}" needs {library}, which is not installed: {INSTALL}')


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"this GPU ({torch.cuda.get_device_name(device)}) has compute capability {major}.{minor}"
    if device.type == "cpu":
        return "this machine has CPU only" if not torch.cuda.is_available() else "the engine runs on the CPU"
    return f"the engine runs on {device.type}"


def quantization_config(mode: str, components: Sequence[str], device: torch.device,
                        dtype: torch.dtype) -> PipelineQuantizationConfig | None:
    """What `DiffusionPipeline.from_pretrained(quantization_config=...)` takes to load
    `components` quantized (None for "none"). Raises QuantizeUnsupported as check_supported does.

    The text encoders are transformers models and take transformers' config class; every other
    component is a diffusers model."""
    check_supported(mode, device)
    if mode == "none" or not components:
        return None
    import diffusers
    import transformers

    mapping = {name: _component_config(mode, transformers if _is_transformers(name) else diffusers, dtype)
               for name in components}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def _is_transformers(component: str) -> bool:
    return component.startswith(("text_encoder", "image_encoder"))


def _component_config(mode: str, library, dtype: torch.dtype):
    if mode == "nf4":
        return library.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return library.TorchAoConfig(_torchao_config(mode))


def _torchao_config(mode: str):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()


def quantize_loaded(pipe: DiffusionPipeline, mode: str, components: Sequence[str], device: torch.device,
                    dtype: torch.dtype) -> None:
    """Quantize the components of an already loaded pipeline (a single-file checkpoint, which
    diffusers cannot quantize while loading), one layer at a time on `device`, so the GPU never
    holds a whole component unquantized; the rest of the pipeline stays where it is."""
    check_supported(mode, device)
    if mode == "none":
        return
    for name in components:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            log.warning("quantize: the pipeline has no component %r; left as it is", name)
            continue
        if mode == "nf4":
            nf4_linears(module, dtype, device)
        else:
            from torchao.quantization import quantize_

            quantize_(module, _torchao_config(mode), device=device)


def nf4_linears(module: torch.nn.Module, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Replace every linear layer of `module` by a bitsandbytes 4-bit (NF4) one on `device` holding
    the same weights (bitsandbytes packs them into 4 bits as they move there). No double
    quantization of the scales, as diffusers' own NF4 loading."""
    import bitsandbytes as bnb

    for name, child in list(module.named_children()):
        if isinstance(child, bnb.nn.Linear4bit):
            continue
        if type(child) is torch.nn.Linear:
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=False)
            layer.bias = child.bias
            layer.train(child.training)
            setattr(module, name, layer.to(device))
        else:
            nf4_linears(child, compute_dtype, device)


def missing_components(pipe: DiffusionPipeline, components: Iterable[str]) -> list[str]:
    return [name for name in components if not isinstance(getattr(pipe, name, None), torch.nn.Module)]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The memory a weight really takes. A quantized weight reports the element size of the
    number format it computes in, not of what it stores: torchao's tensors hold their int8 or
    float8 data and scales as inner tensors, bitsandbytes' 4-bit ones their packed bytes plus a
    quantization state."""
    quant_state = getattr(tensor, "quant_state", None)
    if quant_state is not None:  # bitsandbytes Params4bit: packed uint8 data
        return tensor.data.numel() * tensor.data.element_size() + _quant_state_bytes(quant_state)
    if hasattr(tensor, "__tensor_flatten__"):  # a tensor subclass (torchao): the sum of its parts
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(part) for part in (getattr(tensor, name) for name in names)
                   if isinstance(part, torch.Tensor))
    return tensor.numel() * tensor.element_size()


def _quant_state_bytes(state, depth: int = 0) -> int:
    if state is None or depth > 3:
        return 0
    total = 0
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif hasattr(value, "absmax"):  # the nested state of double quantization
            total += _quant_state_bytes(value, depth + 1)
    return total


def quantized_file_bytes(spec: VariantSpec, components: Sequence[str]) -> int | None:
    """The memory the variant's weight files will take with `components` quantized, or None
    when nothing is quantized (the files' size stands then).

    An approximation: every 2-D floating tensor of a quantized component counts as a linear
    weight at the mode's size (BYTES_PER_WEIGHT; int8 is about half of float16/bfloat16 and a
    quarter of float32, nf4 a little over a quarter of float16); everything else (convolutions,
    norms, biases, embeddings) at its size in the file. A pickled file, whose tensors cannot be
    listed without loading it, counts as float16 weights throughout in a quantized component's
    folder, and at its size as a single-file checkpoint. A transformer-only file counts with the
    other components of its components variant's folder."""
    if spec.quantize == "none" or spec.kind == "hub":
        return None
    per_weight = BYTES_PER_WEIGHT[spec.quantize]
    if spec.kind == "single_file" and spec.components_dir is not None:
        assert spec.file is not None
        return (_file_bytes(spec.file, per_weight, lambda key: "transformer" in components)
                + _folder_bytes(spec.components_dir, components, per_weight, skip="transformer"))
    if spec.kind == "single_file":
        assert spec.file is not None
        prefixes = tuple(p for name in components for p in _SINGLE_FILE_PREFIXES.get(name, ()))
        return _file_bytes(spec.file, per_weight, lambda key: key.startswith(prefixes))
    return _folder_bytes(spec.folder, components, per_weight)


def _folder_bytes(folder: Path, components: Sequence[str], per_weight: float, skip: str = "") -> int:
    """The weights of a pipeline folder, `components` quantized, the component `skip` left out."""
    total = 0
    for path in pipeline_files(folder):
        if path.suffix.lower() not in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
            continue
        component = path.relative_to(folder).parts[0]
        if component == skip:
            continue
        total += _file_bytes(path, per_weight, lambda key: True) if component in components else path.stat().st_size
    return total


def _file_bytes(path: Path, per_weight: float, quantized) -> int:
    size = path.stat().st_size
    if path.suffix.lower() != ".safetensors":
        return round(size * per_weight / 2) if quantized("") else size
    try:
        tensors = _safetensors_tensors(path)
    except (OSError, ValueError):
        return size
    total = 0
    for key, dtype, shape, nbytes in tensors:
        stored = _SAFETENSORS_BYTES.get(dtype, 2)
        if (quantized(key) and len(shape) == 2 and dtype in ("F64", "F32", "F16", "BF16") and stored > per_weight
                and not key.endswith(_EMBEDDINGS)):
            total += round(nbytes * per_weight / stored)
        else:
            total += nbytes
    return total


def _safetensors_tensors(path: Path) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) of each tensor of a .safetensors file, from its JSON header."""
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if not 0 < length <= 100 * 2**20:
            raise ValueError(f"{path.name} is not a .safetensors file")
        header = json.loads(stream.read(length))
    if not isinstance(header, Mapping):
        raise ValueError(f"{path.name} is not a .safetensors file")
    tensors = []
    for key, value in header.items():
        if key == "__metadata__" or not isinstance(value, Mapping):
            continue
        start, end = value.get("data_offsets", (0, 0))
        tensors.append((key, str(value.get("dtype", "")), tuple(value.get("shape", ())), int(end) - int(start)))
    return tensors
