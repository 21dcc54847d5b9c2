"""The model store: every `models/<name>/` variant folder, scanned and rescanned while running.

A variant exists only once its `variant.toml` does. Whoever produces a variant (a training
script, an admin copying files) writes the weights first and `variant.toml` last, so a half-written
checkpoint is never picked up. A broken variant is listed with its error and never affects the
others. Nothing here imports torch: listing models stays instant. The format of one folder is
`bot.models.spec`'s.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from bot.models.errors import ModelUnavailable
from bot.models.spec import GENERATING_KINDS, VARIANT_FILE, VariantError, VariantSpec, read_variant
from bot.models.variant import MODEL_NAME, VariantDefaults, VariantOverride, overridden


@dataclass(frozen=True)
class VariantEntry:
    """One folder of the store: a usable spec, or the error that keeps it out of service."""

    name: str
    spec: VariantSpec | None = None
    error: str | None = None
    disabled: bool = False

    @property
    def ready(self) -> bool:
        return self.spec is not None and not self.error and not self.disabled


@dataclass(frozen=True)
class ScanChanges:
    added: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass
class Registry:
    """Knows every variant in `models_dir`; `scan()` notices additions, changes and removals."""

    models_dir: Path
    overrides: Mapping[str, VariantOverride] = field(default_factory=dict)
    rescan_seconds: float = 2.0
    _entries: dict[str, VariantEntry] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _last_scan: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)

    def scan(self) -> ScanChanges:
        found: dict[str, VariantEntry] = {}
        if self.models_dir.is_dir():
            for folder in sorted(self.models_dir.iterdir()):
                if folder.name.startswith(".") or not (folder / VARIANT_FILE).is_file():
                    continue  # not a variant (yet): variant.toml is written last
                found[folder.name] = self._read_entry(folder)
        found = {name: self._with_override(entry) for name, entry in found.items()}
        _check_lora_bases(found, self.overrides)
        _check_components(found)
        _check_fast_loras(found)
        _check_refiners(found)
        with self._lock:
            old = self._entries
            self._entries = found
            self._last_scan = time.monotonic()
        return ScanChanges(
            added=frozenset(found.keys() - old.keys()),
            removed=frozenset(old.keys() - found.keys()),
            changed=frozenset(n for n in found.keys() & old.keys() if found[n] != old[n]),
        )

    def scan_if_due(self) -> ScanChanges:
        if time.monotonic() - self._last_scan >= self.rescan_seconds:
            return self.scan()
        return ScanChanges()

    def entries(self) -> list[VariantEntry]:
        with self._lock:
            return list(self._entries.values())

    def entry(self, name: str) -> VariantEntry | None:
        with self._lock:
            return self._entries.get(name)

    def get(self, name: str) -> VariantSpec:
        """The spec of a usable variant, or ModelUnavailable saying why there is none."""
        entry = self.entry(name)
        if entry is None or entry.disabled:
            raise ModelUnavailable(name, available=list(self.ready_defaults()))
        if entry.error or entry.spec is None:
            raise ModelUnavailable(name, problem=entry.error or "")
        return entry.spec

    def ready_defaults(self) -> dict[str, VariantDefaults]:
        """The usable models to generate with (upscalers only enlarge images) and their defaults."""
        return {e.name: e.spec.defaults for e in self.entries()
                if e.ready and e.spec and e.spec.kind in GENERATING_KINDS}

    def lora_bases(self) -> dict[str, str]:
        """Usable LoRA variants and the model each was made for (what a request may add to it)."""
        return {e.name: e.spec.base for e in self.entries()
                if e.ready and e.spec and e.spec.kind == "lora" and e.spec.base}

    def unavailable(self) -> dict[str, str]:
        """Variants that exist but cannot be generated with, with the reason."""
        out = {e.name: e.error for e in self.entries() if e.error and not e.disabled}
        for e in self.entries():
            if e.ready and e.spec and e.spec.kind == "upscaler":
                out[e.name] = ("it is an upscaler, which enlarges finished images (the Upscale button, "
                               "[upscale] model in config.toml); it does not draw from a prompt")
        return out

    def _read_entry(self, folder: Path) -> VariantEntry:
        name = folder.name
        if not MODEL_NAME.fullmatch(name):
            return VariantEntry(name, error="folder name is not a valid model name "
                                "(letters, digits, '.', '_', '-'; up to 64 characters)")
        try:
            return VariantEntry(name, spec=read_variant(folder))
        except VariantError as error:
            return VariantEntry(name, error=str(error))
        except Exception as error:  # an odd file must never take the whole store down
            return VariantEntry(name, error=f"cannot read this variant: {type(error).__name__}: {error}")

    def _with_override(self, entry: VariantEntry) -> VariantEntry:
        """config.toml's [variants.<name>] wins over what the variant says about itself."""
        override = self.overrides.get(entry.name)
        if override is None:
            return entry
        spec = replace(entry.spec, defaults=overridden(entry.spec.defaults, override)) if entry.spec else None
        return replace(entry, spec=spec, disabled=not override.enabled)


def _unusable(entry: VariantEntry | None, role: str, name: str | None) -> str | None:
    """Why the variant another one names as its `role` (base, refiner) cannot serve, or None."""
    if entry is None:
        return f"its {role} '{name}' is not in the model store"
    if entry.disabled:
        return f"its {role} '{name}' is disabled in the configuration"
    if entry.spec is None or entry.error:
        return f"its {role} '{name}' is broken"
    return None


def _check_lora_bases(entries: dict[str, VariantEntry], overrides: Mapping[str, VariantOverride]) -> None:
    """A LoRA needs a usable, non-LoRA base; mark it broken otherwise (its own entry only)."""
    for name, entry in entries.items():
        spec = entry.spec
        if spec is None or spec.kind != "lora":
            continue
        base = entries.get(spec.base or "")
        problem = _unusable(base, "base", spec.base)
        if problem is None and base.spec.kind == "lora":
            problem = f"its base '{spec.base}' is itself a LoRA; use a full model as base"
        elif problem is None and base.spec.kind == "upscaler":
            problem = f"its base '{spec.base}' is an upscaler; use a full model as base"
        if problem:
            entries[name] = replace(entry, error=problem)
        elif base.spec is not None:
            # A LoRA draws like its base (size, steps, scheduler...) except where it says otherwise,
            # and the configuration's word on the LoRA itself is final.
            defaults = replace(base.spec.defaults, **dict(spec.own_defaults))
            if name in overrides:
                defaults = overridden(defaults, overrides[name])
            entries[name] = replace(entry, spec=replace(spec, defaults=defaults))


# A variant's kind as a sentence names it.
_KIND_NAMES = {"pipeline": "a pipeline folder", "single_file": "a single-file model", "lora": "a LoRA",
               "hub": "a hub model", "upscaler": "an upscaler"}


def _check_components(entries: dict[str, VariantEntry]) -> None:
    """A transformer-only variant needs a usable pipeline variant of its family for the rest of the
    model; mark it broken otherwise. Its fingerprint takes in the other's, so a change to either
    reloads it."""
    for name, entry in entries.items():
        spec = entry.spec
        if spec is None or entry.error or not spec.components:
            continue
        other = entries.get(spec.components)
        problem = _unusable(other, "components variant", spec.components)
        family = spec.defaults.family
        if problem is None and other.spec.kind != "pipeline":
            problem = (f"its components variant '{spec.components}' is {_KIND_NAMES[other.spec.kind]}; name a "
                       f"diffusers pipeline folder of {family.label}")
        elif problem is None and other.spec.defaults.family.name != family.name:
            problem = (f"its components variant '{spec.components}' is {other.spec.defaults.family.label}, "
                       f"this transformer is {family.label}; name a diffusers pipeline folder of {family.label}")
        if problem:
            entries[name] = replace(entry, error=problem)
        else:
            entries[name] = replace(entry, spec=replace(spec, components_dir=other.spec.folder,
                                                        fingerprint=f"{spec.fingerprint}+{other.spec.fingerprint}"))


def _check_fast_loras(entries: dict[str, VariantEntry]) -> None:
    """`fast_lora` must name a usable LoRA variant; a variant naming anything else is broken (its
    own entry only), so that --fast never silently draws without the LoRA it needs."""
    for name, entry in entries.items():
        spec = entry.spec
        if spec is None or entry.error or not spec.fast_lora:
            continue
        lora = entries.get(spec.fast_lora)
        if lora is None or lora.spec is None or lora.error:
            problem = f"its fast_lora '{spec.fast_lora}' is not a usable variant in the model store"
        elif lora.spec.kind != "lora":
            problem = f"its fast_lora '{spec.fast_lora}' is a {lora.spec.kind}, not a LoRA (an LCM-LoRA)"
        else:
            continue
        entries[name] = replace(entry, error=problem)


def _check_refiners(entries: dict[str, VariantEntry]) -> None:
    """A model that names a refiner needs a usable refiner model; mark it broken otherwise.

    Runs after the LoRA check, so a LoRA over a base with a refiner inherits the same verdict."""
    for name, entry in entries.items():
        spec = entry.spec
        if spec is None or entry.error or not spec.defaults.refiner:
            continue
        refiner = entries.get(spec.defaults.refiner)
        problem = _unusable(refiner, "refiner", spec.defaults.refiner)
        if problem is None and refiner.spec.defaults.role != "refiner":
            problem = (f"'{spec.defaults.refiner}' is not a refiner model (it is a {refiner.spec.defaults.role} "
                       "model); name an SDXL refiner")
        if problem:
            entries[name] = replace(entry, error=problem)
