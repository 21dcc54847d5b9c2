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

from bot.models.families import UNET_FAMILIES, detect_family, read_safetensors_header

ARCHS_DIR = Path(__file__).resolve().parent / "archs"
CLIP_TOKENIZER_DIR = ARCHS_DIR / "clip_tokenizer"
# sd15, sd21, sd21-v, sdxl, sdxl-refiner and the three inpainting families: the whole-pipeline checkpoints.
# A FLUX.1 or SD 3 file holds a transformer only (bot/engine/transformer_files.py loads it).
ARCH_NAMES = tuple(UNET_FAMILIES)
ARCH_FILE = "imagebot_arch.json"

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_checkpoint_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, read from its header only (no weights)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def detect_arch(checkpoint: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """Which shipped architecture (one of ``ARCH_NAMES``) an LDM-layout state dict belongs to.

    ``checkpoint`` maps key -> tensor (any device, meta included) or key -> shape, as returned by
    :func:`read_checkpoint_header`; ``metadata`` is the file's safetensors metadata (it tells SD 2.x
    base from SD 2.x-v). How it decides: ``bot.models.families``. Raises ``ValueError`` for anything
    else (Flux, SD3, a LoRA, ...), naming what was found.
    """
    return detect_family(checkpoint, metadata)


def detect_file_arch(path: str | Path) -> str:
    """The architecture of a checkpoint file: from its header (no weights read) for
    ``.safetensors``; a pickle, which the caller has already allowed, is read with
    ``weights_only`` (tensors, no code)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return detect_family(*read_safetensors_header(path))
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    checkpoint = checkpoint.get("state_dict", checkpoint)
    return detect_arch(checkpoint)


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


def load_spec_file(spec, dtype: torch.dtype):
    """The pipeline of a single-file variant (an SD 1.x/2.x/SDXL checkpoint): the family decides the
    pipeline class and tokenizers even where the variant brings its own component configs
    (config = "..."): those only give the sizes."""
    assert spec.file is not None
    if spec.file.suffix.lower() != ".safetensors" and not spec.allow_pickle:
        raise ValueError(f"{spec.file.name} is a pickle checkpoint; set allow_pickle = true if you trust it")
    arch = spec.arch if spec.arch != "auto" else detect_file_arch(spec.file)
    return load_single_file(spec.file, arch, config_dir=spec.config_dir, torch_dtype=dtype,
                            allow_pickle=spec.allow_pickle)
