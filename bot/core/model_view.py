"""The models as users and admins see them: the list with each one's status and whether it is the
default, choosing the default (for everyone or for one chat), and rescanning the model store.

Reads the catalogue (bot/models' registry) and asks the executor what it has loaded; only admins
change anything, and each change is written to the audit log.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bot.core.admission import CHAT_MODEL_SETTING, DEFAULT_MODEL_SETTING, Admission, Catalog
from bot.core.errors import UserError, require_admin
from bot.core.executor import Executor
from bot.core.family_rules import family_view
from bot.core.jobs import Origin
from bot.core.option_values import parse_model_name
from bot.core.store import Store
from bot.models.variant import VariantDefaults


class ModelView:
    def __init__(self, catalog: Catalog, executor: Executor, store: Store, admission: Admission) -> None:
        self.catalog = catalog
        self.executor = executor
        self.store = store
        self.admission = admission

    async def list_variants(self, origin: Origin | None = None) -> list[dict[str, Any]]:
        self.catalog.scan_if_due()
        default = await self.admission.default_model(origin)
        loaded = getattr(self.executor, "loaded_models", lambda: {})()
        attached = {lora for loras in loaded.values() for lora in loras}
        # Where each variant is resident (devices, or Ray nodes and replicas): for admins only,
        # since it names the machines behind the bot.
        where = getattr(self.executor, "placement", dict)() if origin is not None and origin.is_admin else {}
        out = []
        for entry in self.catalog.entries():
            spec = entry.spec
            if spec is not None and spec.kind == "upscaler":
                continue  # not a model to draw with; the Upscale button uses it
            out.append({
                "name": entry.name,
                "kind": spec.kind if spec else None,
                "base": spec.base if spec else None,
                "description": spec.description if spec else "",
                "examples": list(spec.examples) if spec else [],
                "status": "disabled" if entry.disabled else "broken" if entry.error else "ready",
                "error": entry.error,
                "loaded": entry.name in loaded or entry.name in attached,
                "default": entry.name == default,
                # Drawing defaults; what the family can do is "family", worked out by the core.
                "defaults": _drawing_defaults(spec.defaults) if spec else None,
                "family": family_view(spec.defaults) if spec else None,
                **({"where": where.get(entry.name, [])} if where else {}),
            })
        return out

    async def set_default_variant(self, scope: str, name: str, by: Origin) -> None:
        """scope "global", or "chat" (the chat of `by`). Admins only; the model must be usable."""
        require_admin(by)
        name = parse_model_name(name)
        self.catalog.scan_if_due()
        ready = self.catalog.ready_defaults()
        if name not in ready:
            unavailable = self.catalog.unavailable()
            if name in unavailable:
                raise UserError("model_broken", name=name, error=unavailable[name])
            raise UserError("unknown_model", got=name, available=", ".join(sorted(ready)) or "none")
        if scope == "global":
            await self.store.set_setting(DEFAULT_MODEL_SETTING, name)
        else:
            await self.store.set_chat_setting(by.platform, by.chat_id, CHAT_MODEL_SETTING, name)
        await self.store.audit(by.user_key, "set_default_model", {"scope": scope, "chat": by.chat_id, "model": name})

    async def reload_models(self, by: Origin) -> dict[str, list[str]]:
        require_admin(by)
        changes = self.catalog.scan()
        summary = {"added": sorted(changes.added), "changed": sorted(changes.changed), "removed": sorted(changes.removed)}
        await self.store.audit(by.user_key, "reload_models", summary)
        return summary


def _drawing_defaults(defaults: VariantDefaults) -> dict[str, Any]:
    return {name: value for name, value in asdict(defaults).items() if name != "family"}
