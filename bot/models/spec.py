"""One variant folder of the model store, read and checked: `models/<name>/variant.toml`.

Nothing here imports torch or touches weights: it reads variant.toml, a pipeline's
`model_index.json` and `unet/config.json`, and a checkpoint's header to guess its native size.

variant.toml:

    kind = "pipeline"            # pipeline | single_file | lora | hub | upscaler (inferred when left out)
    description = "..."
    examples = ["a red circle on a blue background", "..."]   # prompts it draws well (the web page offers them)
    file = "model.safetensors"   # single_file: the checkpoint; lora: the weights (optional)
    arch = "auto"                # single_file: auto | sd15 | sd21 | sd21-v | sdxl | sdxl-refiner | sd15-inpaint | ...
    config = "arch"              # single_file: own architecture configs (folder in this variant)
    base = "demo"                # lora: the variant it applies to
    scale = 0.8                  # lora: strength of the adapter
    repo = "stabilityai/stable-diffusion-2-1"   # hub
    revision = "main"            # hub
    allow_pickle = false         # single_file, upscaler: permit pickled .ckpt/.pth files (they can run code)
    fast_lora = "lcm-sd15"       # --fast applies this LoRA variant (an LCM-LoRA, a FLUX.1 turbo LoRA)
    refiner = "sdxl-refiner"     # a refiner variant that finishes this model's images (SDXL)
    refiner_switch = 0.8         # the fraction of the steps this model runs before the refiner takes over
    inpaint = "sd15-inpainting"  # the variant that repaints masked regions for this one (else this one does)
    family = "flux1-dev"         # pipeline, hub: the model family, where the folder or repo name cannot tell
    transformer = "flux1-dev-Q4_K_S.gguf"  # FLUX.1, SD 3.5: the transformer alone (.safetensors or .gguf) ...
    components = "flux1-dev"     # ... and the pipeline variant that gives the rest (text encoders, VAE)
    quantize = "none"            # pipeline, single_file, hub: none | int8 | nf4 | fp8, smaller weights for the
                                 # denoiser (and a family's big text encoders); see docs/models.md

    [defaults]                   # all optional
    steps = 25
    guidance = 7.0
    width = 512
    height = 512
    scheduler = "dpm++"
    negative_prompt = "blurry"
    fast_steps = 6               # --fast: 1-8 steps (default 6 with fast_lora; 0 = no fast mode)
    fast_guidance = 1.5          # --fast: 0-2 (classifier-free guidance; FLUX.1 [dev] keeps its own)
    fast_scheduler = "lcm"

An upscaler (`kind = "upscaler"`, `file = "4x-model.safetensors"`) is an ESRGAN-family network that
the Upscale button runs before its img2img pass; it draws nothing by itself, so it is not offered as
a model to generate with.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import bot.engine.families as families
from bot.engine.families.common import read_config, read_index
from bot.models.families import FAMILIES, TRANSFORMER_FAMILIES, detect_file_family
from bot.models.variant import DEFAULT_TYPES, MODEL_NAME, FamilyTraits, VariantDefaults, check_defaults

VARIANT_FILE = "variant.toml"
KINDS = ("pipeline", "single_file", "lora", "hub", "upscaler")
FULL_MODEL_KINDS = ("pipeline", "single_file", "hub")  # what loads whole models, and so can quantize them
# int8: torchao int8 weights (CPU and CUDA); nf4: bitsandbytes 4-bit (CUDA); fp8: torchao float8 (CUDA 8.9+).
QUANTIZE_MODES = ("none", "int8", "nf4", "fp8")
GENERATING_KINDS = ("pipeline", "single_file", "lora", "hub")  # an upscaler only enlarges images
# What a single_file variant may name: the whole-pipeline checkpoints bot/engine/single_file.py loads
# (a FLUX.1 or SD 3 file holds a transformer only, which needs the rest of a pipeline besides).
SINGLE_FILE_ARCHS = ("auto", *FAMILIES)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ARCH_NATIVE_SIZE = {name: size for name, (_, size) in FAMILIES.items()}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOP_KEYS = {"kind", "description", "examples", "file", "arch", "config", "base", "scale", "repo", "revision",
             "allow_pickle", "defaults", "refiner", "refiner_switch", "inpaint", "fast_lora", "quantize", "family",
             "transformer", "components"}
# The types variant.toml may use for each default (a whole number is a fine guidance).
_DEFAULT_KEYS = {name: (int, float) if kind is float else kind for name, kind in DEFAULT_TYPES.items()}


class VariantError(ValueError):
    """A variant folder that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class VariantSpec:
    name: str
    kind: str
    folder: Path
    defaults: VariantDefaults
    fingerprint: str  # changes whenever a file of the variant changes
    own_defaults: tuple[tuple[str, Any], ...] = ()  # what variant.toml itself set in [defaults]
    description: str = ""
    examples: tuple[str, ...] = ()  # prompts this variant draws well
    file: Path | None = None
    arch: str = "auto"
    config_dir: Path | None = None
    base: str | None = None
    scale: float = 1.0
    repo: str | None = None
    revision: str | None = None
    allow_pickle: bool = False
    fast_lora: str | None = None  # the LoRA variant --fast applies (an LCM-LoRA or another few-step LoRA)
    inpaint: str | None = None  # the variant that repaints masked regions for this one
    quantize: str = "none"  # one of QUANTIZE_MODES: how the big components' weights are stored in memory
    # A transformer-only file (FLUX.1, SD 3.5): the pipeline variant whose other components it draws
    # with, and that variant's folder (the registry fills it in once it knows the variant is usable).
    components: str | None = None
    components_dir: Path | None = None


def read_variant(folder: Path) -> VariantSpec:
    """Parse and check one variant folder."""
    path = folder / VARIANT_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise VariantError(f"cannot read {VARIANT_FILE}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise VariantError(f"{VARIANT_FILE} is not valid TOML: {error}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise VariantError(f"unknown key(s) in {VARIANT_FILE}: {', '.join(sorted(unknown))} "
                           f"(allowed: {', '.join(sorted(_TOP_KEYS))})")
    kind = _get(data, "kind", str, _infer_kind(data))
    if kind not in KINDS:
        raise VariantError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")

    spec_fields: dict[str, Any] = {"description": _get(data, "description", str, ""), "examples": _examples(data)}
    native = 0  # the family's, unless the model's configs say
    role = "text2image"
    family = _named_family(data)
    if kind == "pipeline":
        if not (folder / "model_index.json").is_file():
            raise VariantError("a pipeline variant needs model_index.json in its folder "
                               "(a diffusers save_pretrained() folder)")
        family = family or _pipeline_family(folder)
        native = _pipeline_native_size(folder)
        role = _pipeline_role(folder)
    elif kind == "single_file":
        native, role, found = _single_file_fields(folder, data, spec_fields)
        family = family or found
    elif kind == "lora":
        base = _get(data, "base", str, None)
        if not base or not MODEL_NAME.fullmatch(base):
            raise VariantError("a lora variant needs base = \"<name of another variant>\"")
        file_value = _get(data, "file", str, None)
        file = _inside(folder, file_value, "file", required=True) if file_value else None
        if file is not None and file.suffix.lower() != ".safetensors":
            raise VariantError(f"LoRA weights must be .safetensors, got {file.name}")
        if file is None and not any(folder.glob("*.safetensors")):
            raise VariantError("no LoRA weights (.safetensors) in the folder")
        scale = float(_get(data, "scale", (int, float), 1.0))
        if not -4 <= scale <= 4:
            raise VariantError(f"scale must be between -4 and 4, got {scale}")
        spec_fields.update(base=base, file=file, scale=scale)
    elif kind == "upscaler":
        file = _inside(folder, _get(data, "file", str, None), "file", required=True)
        allow_pickle = _get(data, "allow_pickle", bool, False)
        if file.suffix.lower() not in (".safetensors", ".pth"):
            raise VariantError(f"an upscaler's file must be .safetensors or .pth weights, got {file.name}")
        if file.suffix.lower() == ".pth" and not allow_pickle:
            raise VariantError(f"{file.name} is pickled weights, which can run arbitrary code when loaded; "
                               "convert it to .safetensors, or set allow_pickle = true if you trust it")
        spec_fields.update(file=file, allow_pickle=allow_pickle)
    else:  # hub
        repo = _get(data, "repo", str, None)
        if not repo or not _REPO_ID.fullmatch(repo) or ".." in repo:
            raise VariantError("a hub variant needs repo = \"owner/name\", e.g. stabilityai/stable-diffusion-2-1")
        spec_fields.update(repo=repo, revision=_get(data, "revision", str, None))
        native = 768 if repo.rstrip("/").endswith("stable-diffusion-2-1") else 0
        found = families.for_repo(repo)
        family = family or (found.traits if found else None)
        role = "refiner" if "refiner" in repo.lower() else "inpainting" if "inpaint" in repo.lower() else role

    fast_lora = _get(data, "fast_lora", str, None)
    if fast_lora is not None:
        if kind == "upscaler" or not MODEL_NAME.fullmatch(fast_lora) or fast_lora == folder.name:
            raise VariantError("fast_lora names the LoRA variant (an LCM-LoRA) that --fast applies, "
                               "e.g. fast_lora = \"lcm-sd15\"; an upscaler has no fast mode")
        spec_fields["fast_lora"] = fast_lora
    inpaint = _get(data, "inpaint", str, None)
    if inpaint is not None and not MODEL_NAME.fullmatch(inpaint):
        raise VariantError(f"inpaint must name another variant, got {inpaint!r}")
    spec_fields["inpaint"] = inpaint
    spec_fields["quantize"] = _read_quantize(data, kind)
    own_defaults = _read_defaults(data.get("defaults", {}))
    if fast_lora is not None and "fast_steps" not in own_defaults:
        own_defaults["fast_steps"] = 6
    if kind == "lora" and ("refiner" in data or "refiner_switch" in data):
        raise VariantError("a LoRA uses its base's refiner; set refiner in the base's variant.toml")
    defaults = _variant_defaults(own_defaults, family or families.DEFAULT.traits, native, role,
                                 _read_refiner(data, role))
    return VariantSpec(name=folder.name, kind=kind, folder=folder, defaults=defaults,
                       own_defaults=tuple(sorted(own_defaults.items())),
                       fingerprint=_fingerprint(folder), **spec_fields)


def _single_file_fields(folder: Path, data: Mapping[str, Any],
                        spec_fields: dict[str, Any]) -> tuple[int, str, FamilyTraits | None]:
    """A single checkpoint file's keys, checked into `spec_fields`; its native size, role and family.

    `file` is a whole checkpoint (SD 1.x/2.x/XL) or a transformer; `transformer` says the latter.
    A transformer (FLUX.1, SD 3.5) draws with the other components of the variant `components` names."""
    if "file" in data and "transformer" in data:
        raise VariantError("give the checkpoint as file = \"...\" or a transformer as transformer = \"...\", not both")
    key = "transformer" if "transformer" in data else "file"
    file = _inside(folder, _get(data, key, str, None), key, required=True)
    allow_pickle = _get(data, "allow_pickle", bool, False)
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise VariantError(f"{file.name} is a pickled checkpoint, which can run arbitrary code when loaded; "
                           "convert it to .safetensors, or set allow_pickle = true if you trust it")
    if suffix not in (".safetensors", ".gguf", *PICKLE_SUFFIXES):
        raise VariantError(f"{key} must be a .safetensors checkpoint (or a .gguf transformer), got {file.name}")
    arch = _get(data, "arch", str, "auto")
    if arch not in SINGLE_FILE_ARCHS:
        raise VariantError(f"arch must be one of {', '.join(SINGLE_FILE_ARCHS)}, got {arch!r}")
    config_value = _get(data, "config", str, None)
    config_dir = _inside(folder, config_value, "config", required=False) if config_value else None
    if arch != "auto":
        detected = arch
    elif key == "transformer" or suffix == ".gguf":
        try:  # nothing to fall back on: say what the file is
            detected = detect_file_family(file)
        except (OSError, ValueError) as error:
            raise VariantError(f"{file.name}: {error}") from None
    else:
        detected = _guess_arch(file)
    components = _get(data, "components", str, None)
    if detected in TRANSFORMER_FAMILIES or suffix == ".gguf" or key == "transformer":
        _check_transformer_file(file, detected, components, data)
        spec_fields["components"] = components
    elif components is not None:
        raise VariantError(f"components is for a transformer-only file (FLUX.1, SD 3.5); {file.name} is a whole "
                           f"{detected} checkpoint: remove components")
    role = FAMILIES.get(detected, ("text2image", 512))[0]
    if config_dir is not None:
        native = _pipeline_native_size(config_dir)
    else:
        native = ARCH_NATIVE_SIZE.get(detected, 512)
    found = families.for_arch(detected)
    spec_fields.update(file=file, arch=arch, config_dir=config_dir, allow_pickle=allow_pickle)
    return native, role, found.traits if found else None


def _check_transformer_file(file: Path, detected: str, components: str | None, data: Mapping[str, Any]) -> None:
    if detected not in TRANSFORMER_FAMILIES:
        raise VariantError(f"{file.name} is a {detected} checkpoint, not a transformer this bot loads alone "
                           f"({', '.join(TRANSFORMER_FAMILIES)}); give it as file = \"{file.name}\"")
    if not components or not MODEL_NAME.fullmatch(components):
        family = families.for_arch(detected)
        example = "sd3.5-large" if detected == "sd3" else detected
        raise VariantError(f"{file.name} holds only the {family.traits.label if family else detected} transformer: "
                           "name the pipeline variant that gives its text encoders and VAE, e.g. "
                           f"components = \"{example}\" (a diffusers folder of the same model)")
    if file.suffix.lower() == ".gguf" and _get(data, "quantize", str, "none") != "none":
        raise VariantError(f"{file.name} is quantized already (GGUF): remove quantize")


def _infer_kind(data: Mapping[str, Any]) -> str:
    if "repo" in data:
        return "hub"
    if "base" in data:
        return "lora"
    if "file" in data or "transformer" in data:
        return "single_file"
    return "pipeline"


def _get(data: Mapping[str, Any], key: str, types: Any, default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, bool) and types is not bool or not isinstance(value, types):
        raise VariantError(f"{key} has the wrong type: {value!r}")
    return value


def _examples(data: Mapping[str, Any]) -> tuple[str, ...]:
    examples = _get(data, "examples", list, [])
    if not all(isinstance(e, str) and e.strip() for e in examples):
        raise VariantError("examples must be a list of prompts, e.g. examples = [\"a red circle\"]")
    return tuple(e.strip() for e in examples)


def _inside(folder: Path, value: str | None, key: str, required: bool) -> Path:
    """Resolve a path from variant.toml; it must stay inside the variant's folder."""
    if not value:
        raise VariantError(f"{key} is required for this kind of variant")
    if Path(value).is_absolute():
        raise VariantError(f"{key} must be a path inside the variant folder, not {value!r}")
    try:
        root = folder.resolve()
        path = (root / value).resolve()
        exists = path.exists()
    except (OSError, ValueError) as error:
        raise VariantError(f"{key} = {value!r} is not a usable path: {error}") from None
    if not path.is_relative_to(root):
        raise VariantError(f"{key} = {value!r} points outside the variant folder")
    if required and not exists:
        raise VariantError(f"{key} = {value!r} does not exist")
    return path


def _read_defaults(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise VariantError("[defaults] must be a table")
    unknown = set(data) - _DEFAULT_KEYS.keys()
    if unknown:
        raise VariantError(f"unknown key(s) in [defaults]: {', '.join(sorted(unknown))} "
                           f"(allowed: {', '.join(_DEFAULT_KEYS)})")
    values = {k: _get(data, k, t, None) for k, t in _DEFAULT_KEYS.items() if k in data}
    try:
        check_defaults(values, "defaults")
    except ValueError as error:
        raise VariantError(str(error)) from None
    for key in ("guidance", "fast_guidance", "true_cfg"):
        if key in values:
            values[key] = float(values[key])
    return values


def _read_quantize(data: Mapping[str, Any], kind: str) -> str:
    """`quantize = "int8"`, checked; only a full model has weights of its own to store smaller."""
    if "quantize" not in data:
        return "none"
    if kind == "lora":
        raise VariantError("a LoRA runs on its base's weights, stored as the base says; "
                           "set quantize in the base's variant.toml")
    if kind not in FULL_MODEL_KINDS:
        raise VariantError(f"quantize is for full models ({', '.join(FULL_MODEL_KINDS)}); "
                           f"an {kind}'s weights are small: remove quantize")
    mode = _get(data, "quantize", str, "none")
    if mode not in QUANTIZE_MODES:
        raise VariantError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    return mode


def _read_refiner(data: Mapping[str, Any], role: str) -> dict[str, Any]:
    """`refiner = "NAME"` and `refiner_switch = 0.8`, checked."""
    traits: dict[str, Any] = {}
    refiner = _get(data, "refiner", str, None)
    if refiner is not None:
        if not MODEL_NAME.fullmatch(refiner):
            raise VariantError(f"refiner must be the name of another variant, got {refiner!r}")
        if role != "text2image":
            raise VariantError(f"this model is a {role} model; only a text-to-image model can have a refiner")
        traits["refiner"] = refiner
    if "refiner_switch" in data:
        switch = float(_get(data, "refiner_switch", (int, float), None))
        if not 0 < switch < 1:
            raise VariantError(f"refiner_switch is the fraction of the steps the base model runs, between 0 and 1 "
                               f"(e.g. 0.8), got {switch}")
        traits["refiner_switch"] = switch
    return traits


def pipeline_files(folder: Path) -> list[Path]:
    """The files a diffusers pipeline folder loads from: those in the component folders its
    model_index.json names (every subfolder when it names none). A repository downloaded whole holds
    more beside them that loading the folder never reads: FLUX.1's and SD 3.5's original single
    files, ComfyUI's text_encoders/."""
    named = {key for key in read_index(folder) if not key.startswith("_")}
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and len(parts := path.relative_to(folder).parts) > 1
                  and (not named or parts[0] in named))


def _pipeline_role(folder: Path) -> str:
    """A refiner is an SDXL image-to-image pipeline without the first text encoder; an inpainting
    model's UNet takes 9 input channels."""
    index, unet = read_index(folder), read_config(folder, "unet")
    if not index or not unet:
        return "text2image"
    if unet.get("in_channels") == 9:
        return "inpainting"
    first_encoder = index.get("text_encoder")
    if index.get("requires_aesthetics_score") or (
            "text_encoder_2" in index and isinstance(first_encoder, list) and first_encoder[0] is None):
        return "refiner"
    return "text2image"


def _pipeline_native_size(folder: Path) -> int:
    """The resolution the model was trained at: UNet sample size times the VAE's factor of 8 (0 when
    the configs do not say: the family's native size then)."""
    try:
        return int(read_config(folder, "unet")["sample_size"]) * 8
    except (ValueError, KeyError, TypeError):
        return 0


def _named_family(data: Mapping[str, Any]) -> FamilyTraits | None:
    """`family = "..."` in variant.toml, checked."""
    name = _get(data, "family", str, None)
    if name is None:
        return None
    try:
        return families.by_name(name).traits
    except KeyError as error:
        raise VariantError(str(error.args[0])) from None


def _pipeline_family(folder: Path) -> FamilyTraits:
    """The family of a pipeline folder, from its model_index.json; one the bot cannot run is refused."""
    found = families.for_pipeline_folder(folder)
    if found is None:
        class_name = read_index(folder).get("_class_name")
        raise VariantError(f"model_index.json names the pipeline {class_name!r}, which is no model family this bot "
                           f"runs (families: {', '.join(families.names())}); if it is one of them, say which with "
                           "family = \"...\" in variant.toml")
    return found.traits


def _variant_defaults(own: Mapping[str, Any], family: FamilyTraits, native: int, role: str,
                      refiner: Mapping[str, Any]) -> VariantDefaults:
    """What the variant draws with: its own [defaults] over its family's, at its native size."""
    _check_family_defaults(own, family)
    native = native or family.native_size
    return VariantDefaults(**{"width": native, "height": native, "steps": family.steps, "guidance": family.guidance,
                              "scheduler": family.scheduler, "fast_scheduler": family.fast_scheduler,
                              "fast_steps": family.fast_steps,
                              **own, "role": role, "family": family, **refiner})


def _check_family_defaults(values: Mapping[str, Any], family: FamilyTraits) -> None:
    """Defaults the family cannot draw with: a scheduler it has not, sides off its size grid."""
    for key in ("scheduler", "fast_scheduler"):
        if key in values and values[key] not in family.schedulers:
            raise VariantError(f"defaults.{key} = {values[key]!r} is not a scheduler {family.label} can use "
                               f"(it can use: {', '.join(family.schedulers)})")
    if values.get("true_cfg") and not family.true_cfg:
        raise VariantError(f"true_cfg is for guidance-distilled models that can run true CFG (FLUX.1); "
                           f"{family.label} models cannot: remove it")
    if values.get("negative_prompt") and not family.negative_prompt and not values.get("true_cfg", 0) > 1:
        raise VariantError(f"defaults.negative_prompt has no effect on {family.label} models: they have no negative "
                           "prompt unless true_cfg (e.g. 4) is set too")
    for side in ("width", "height"):
        if side in values and values[side] % family.size_step:
            raise VariantError(f"defaults.{side} must be a multiple of {family.size_step} for {family.label}, "
                               f"got {values[side]}")


def _guess_arch(file: Path) -> str:
    """The family of a .safetensors or .gguf file from its header (no weights); "sd15" when unsure."""
    try:
        return detect_file_family(file)
    except (OSError, ValueError):
        return "sd15"


def _fingerprint(folder: Path) -> str:
    """Size and modification time of every file: cheap to compute, changes on any rewrite."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
