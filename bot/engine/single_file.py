"""Offline loading of single-file Stable Diffusion checkpoints.

Users drop one ``.safetensors`` file in the original (LDM / CompVis) key layout into a model folder,
the kind Civitai and the Stable Diffusion repositories hand out. diffusers can turn such a file
into a pipeline with ``from_single_file``, but it fetches the architecture configs (``config.json``
of every component) from the Hugging Face hub. The bot runs offline, so the configs are shipped in
``bot/engine/archs/<arch>/`` (diffusers pipeline layout, configs only, no weights), together with
one CLIP BPE tokenizer in ``bot/engine/archs/clip_tokenizer`` shared by every architecture: the
tokenizers of SD 1.x, SD 2.x and SDXL only differ in their pad token, which
``imagebot_arch.json`` records per architecture.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ARCHS_DIR = Path(__file__).resolve().parent / "archs"
CLIP_TOKENIZER_DIR = ARCHS_DIR / "clip_tokenizer"
ARCH_NAMES = ("sd15", "sd21", "sd21-v", "sdxl")
ARCH_FILE = "imagebot_arch.json"

# diffusers' name for a checkpoint family -> our architecture folder. "v2" is mapped to the 768-v
# variant because that is what the default SD 2.x checkpoints (v2-1_768-ema-pruned) are; the
# weights of SD 2.1-base and SD 2.1-v have the same keys and shapes, so they cannot be told apart
# from the file: a caller who knows better passes arch="sd21" to load_single_file itself.
_DIFFUSERS_TYPE_TO_ARCH = {"v1": "sd15", "v2": "sd21-v", "xl_base": "sdxl"}

# infer_diffusers_model_type() answers "v1" for anything it does not recognise, so a "v1" answer
# is only believed when the SD 1.x UNet signature key is really there.
_V1_SIGNATURE_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class _ShapeOnly:
    """Stands in for a tensor where only ``.shape`` is looked at (diffusers' detection code)."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = torch.Size(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_ShapeOnly({tuple(self.shape)})"


def read_checkpoint_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, read from its header only (no weights)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _as_shape_mapping(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Accept tensors (real or meta) as they are, wrap bare shapes (tuples/lists/Size) in _ShapeOnly."""
    out: dict[str, Any] = {}
    for key, value in checkpoint.items():
        if hasattr(value, "shape"):
            out[key] = value
        else:
            out[key] = _ShapeOnly(value)
    return out


def detect_arch(checkpoint: Mapping[str, Any]) -> str:
    """Which shipped architecture an LDM-layout state dict belongs to: "sd15", "sd21-v" or "sdxl".

    ``checkpoint`` maps key -> tensor (any device, meta included) or key -> shape, as returned by
    :func:`read_checkpoint_header`. Raises ``ValueError`` for anything else (inpainting models,
    the SDXL refiner, Flux, ...), naming what was found.
    """
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = _as_shape_mapping(checkpoint)
    try:
        model_type = infer_diffusers_model_type(shapes)
    except Exception as exc:  # its detectors index keys that may be missing in odd files
        raise ValueError(
            f"could not identify this checkpoint ({type(exc).__name__}: {exc}); "
            f"supported architectures: {', '.join(ARCH_NAMES)}"
        ) from exc
    if model_type == "v1" and _V1_SIGNATURE_KEY not in shapes:
        model_type = "unknown (no Stable Diffusion UNet keys)"
    arch = _DIFFUSERS_TYPE_TO_ARCH.get(model_type)
    if arch is None:
        raise ValueError(
            f"unsupported checkpoint type {model_type!r} ({len(shapes)} tensors); "
            f"supported architectures: {', '.join(ARCH_NAMES)}"
        )
    return arch


def arch_info(arch: str, config_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``imagebot_arch.json`` of an architecture: from ``config_dir`` when it has one, else the shipped one."""
    if config_dir is not None and (Path(config_dir) / ARCH_FILE).is_file():
        path = Path(config_dir) / ARCH_FILE
    else:
        path = _arch_dir(arch) / ARCH_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def _arch_dir(arch: str) -> Path:
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCH_NAMES)}")
    return ARCHS_DIR / arch


def load_tokenizers(info: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's tokenizer(s), all built from the shared CLIP vocabulary with their pad token."""
    from transformers import CLIPTokenizer

    return {
        name: CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), **options)
        for name, options in info.get("tokenizers", {}).items()
    }


def load_single_file(
    path: str | Path,
    arch: str,
    *,
    config_dir: str | Path | None = None,
    torch_dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
):
    """Build a diffusers pipeline from one LDM-layout checkpoint file, without touching the network.

    ``arch`` picks the shipped config folder (one of ``ARCH_NAMES``); ``config_dir`` replaces it
    with another folder of the same shape (diffusers ``model_index.json`` + component configs, no
    weights or tokenizer files needed; its own ``imagebot_arch.json`` if it has one, else the
    shipped one of ``arch``). ``torch_dtype`` is the dtype every model ends up in.
    Pickle checkpoints (``.ckpt`` and friends) can run arbitrary code when loaded, so they are
    refused unless ``allow_pickle=True``.
    """
    import diffusers

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(
            f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; "
            "convert it to .safetensors or pass allow_pickle=True if you trust its source"
        )
    if not path.is_file():
        raise FileNotFoundError(path)
    folder = Path(config_dir) if config_dir is not None else _arch_dir(arch)
    if not (folder / "model_index.json").is_file():
        # diffusers would take a missing folder for a hub repo id and try to download it.
        raise FileNotFoundError(f"no model_index.json in config folder {folder}")
    info = arch_info(arch, config_dir)
    pipeline_class = getattr(diffusers, info["pipeline"])

    kwargs: dict[str, Any] = dict(load_tokenizers(info))
    # Only SD 1.x/2.x pipelines have a safety checker slot; passing None keeps diffusers from
    # trying to build one (it would need weights we do not ship).
    if "safety_checker" in inspect.signature(pipeline_class.__init__).parameters:
        kwargs["safety_checker"] = None
        kwargs["feature_extractor"] = None
        kwargs["requires_safety_checker"] = False
    return pipeline_class.from_single_file(
        str(path),
        config=str(folder),
        torch_dtype=torch_dtype,
        local_files_only=True,
        **kwargs,
    )
