"""What a fine-tuning run starts from, checked before the first weight is read: the base model
(a variant of the store or a diffusers folder) and the instance data (a folder of images or a
manifest, or training.concept's images rendered on the spot). Bad input raises FinetuneError.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from bot.models.variant import MODEL_NAME, VariantDefaults
from training.common.data import Dataset, load_image
from training.common.run import log
from training.manifest import IMAGE_SUFFIXES, training_pairs

if TYPE_CHECKING:
    from training.finetune import FinetuneConfig


class FinetuneError(ValueError):
    """Bad input: the message says what was wrong and what is allowed (printed as one line, exit 2)."""


# =============================================================================================
# The base model
# =============================================================================================


@dataclass(frozen=True)
class BaseModel:
    """Where the base comes from, without loading it."""

    label: str  # as given: a variant name or a folder
    variant: Any  # bot.models.spec.VariantSpec, or None for a plain folder
    folder: Path
    fingerprint: str  # changes whenever a file of the base changes (keys the class-image cache)
    defaults: VariantDefaults | None  # a variant's drawing defaults; None: read them from the pipeline


TRAINABLE_FAMILIES = ("sd1", "sd2")  # what load_base() takes: a StableDiffusionPipeline


def resolve_base(c: FinetuneConfig) -> BaseModel:
    """Find `c.base` in the model store (or as a diffusers folder); FinetuneError if it is not usable."""
    from bot.models.registry import Registry

    registry = Registry(Path(c.models_dir))
    registry.scan()
    entry = registry.entry(c.base) if MODEL_NAME.fullmatch(c.base) else None
    if entry is not None:
        if entry.error or entry.spec is None:
            raise FinetuneError(f"base '{c.base}' in {c.models_dir} cannot be used: {entry.error}")
        spec = entry.spec
        if spec.kind == "lora":
            raise FinetuneError(f"base '{c.base}' is itself a LoRA; fine-tune a full model (its base is '{spec.base}')")
        family = spec.defaults.family
        if family.name not in TRAINABLE_FAMILIES:  # say so before loading gigabytes
            raise FinetuneError(f"base '{c.base}' is a {family.label} model; only Stable Diffusion 1.x and 2.x "
                                "models can be fine-tuned here")
        return BaseModel(c.base, spec, spec.folder, spec.fingerprint, spec.defaults)
    folder = Path(c.base)
    if (folder / "model_index.json").is_file():
        if c.method == "lora" and c.name:
            raise FinetuneError("a LoRA is published over a variant of the model store: give --base the "
                                "variant's name, or use --method dreambooth, or leave --name out")
        return BaseModel(c.base, None, folder, _folder_fingerprint(folder), None)
    ready = ", ".join(e.name for e in registry.entries() if e.ready and e.spec and e.spec.kind != "lora")
    raise FinetuneError(f"unknown base '{c.base}': not a variant in {c.models_dir} (available: {ready or 'none'}) "
                        "nor a diffusers model folder (with model_index.json)")


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha1(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_base(base: BaseModel):
    """The base as a float32 StableDiffusionPipeline (from local files only)."""
    from diffusers import StableDiffusionPipeline

    try:
        if base.variant is not None:
            from bot.engine.loader import load_base_pipeline

            pipe = load_base_pipeline(base.variant, torch.float32, allow_download=False)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(str(base.folder), torch_dtype=torch.float32,
                                                           local_files_only=True)
    except Exception as error:  # diffusers, the loader and the hub raise many types; say which base and why
        raise FinetuneError(f"cannot load base '{base.label}': {error}") from error
    if not isinstance(pipe, StableDiffusionPipeline):
        raise FinetuneError(f"base '{base.label}' is a {type(pipe).__name__}; only Stable Diffusion 1.x/2.x "
                            "models (StableDiffusionPipeline) can be fine-tuned here")
    pipe.set_progress_bar_config(disable=True)
    # Fresh, writable, aligned tensors rather than views into memory-mapped checkpoint files: the
    # optimizer updates the trained ones in place (the engine does the same for its own reasons).
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()
    return pipe


def drawing_defaults(base: BaseModel, pipe) -> VariantDefaults:
    """How the base draws (size, steps, guidance, scheduler): the variant's defaults, or for a plain
    folder its native size and the bot's general defaults."""
    if base.defaults is not None:
        return base.defaults
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return VariantDefaults(width=native, height=native)


# =============================================================================================
# Instance data, and the class prompts prior preservation draws
# =============================================================================================


def render_concept(c: FinetuneConfig) -> None:
    """With --concept, training.concept's images are rendered into instance_data_dir if it is missing."""
    if c.concept and not Path(c.instance_data_dir).exists():
        from training.concept import write_concept

        write_concept(c.instance_data_dir, c.concept, c.concept_token, c.concept_images, seed=c.seed,
                      size=c.resolution or 32)
        log(f"concept: rendered {c.concept_images} images of a '{c.concept_token} {c.concept}' into {c.instance_data_dir}")


def read_instance_data(c: FinetuneConfig) -> list[tuple[Path, str]]:
    """(image, caption) pairs of the instance data: a folder (captions from .txt files of the same
    name, else instance_prompt) or a manifest."""
    source = Path(c.instance_data_dir)
    suffixes = "/".join(IMAGE_SUFFIXES)
    if source.is_file():
        try:
            return training_pairs(source)
        except (OSError, ValueError, KeyError) as error:
            raise FinetuneError(f"instance data: {error}") from None
    if not source.is_dir():
        raise FinetuneError(f"instance data {source} does not exist: give a folder of images of the subject "
                            f"({suffixes}, optional .txt captions) or a manifest file")
    pairs = []
    for image in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        pairs.append((image, text or c.instance_prompt))
    if not pairs:
        raise FinetuneError(f"instance data {source} holds no images ({suffixes})")
    return pairs


def load_images(pairs: Sequence[tuple[Path, str]], size: int) -> Dataset:
    try:
        pictures = [load_image(path, size) for path, _ in pairs]
    except OSError as error:
        raise FinetuneError(f"cannot read an instance image: {error}") from None
    return Dataset.from_pictures(pictures, [caption for _, caption in pairs])


def class_prompt_list(c: FinetuneConfig) -> list[str]:
    """The prompts class images are drawn for, in turn."""
    if c.class_prompts_file:
        return read_class_prompts(Path(c.class_prompts_file))
    return list(c.class_prompts) if c.class_prompts else [c.class_prompt]


def read_class_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FinetuneError(f"cannot read class_prompts_file {path}: {error}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise FinetuneError(f"class_prompts_file {path} holds no prompts (one a line; '#' starts a comment)")
    return prompts
