"""The tables beside the jobs: usage per hour (quotas), bans, settings (global and per chat) and
the admins' audit log.

A mixin of `Store` (bot/core/store.py) on the shared connection (bot/core/store_connection.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from bot.core.store_connection import StoreConnection, serialized


class RecordRows(StoreConnection):
    @serialized
    async def add_usage(self, user_key: str, images: int, now: float | None = None) -> None:
        hour = int((now or time.time()) // 3600)
        await self.db.execute(
            "INSERT INTO usage (user_key, hour, jobs, images) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (user_key, hour) DO UPDATE SET jobs = jobs + 1, images = images + excluded.images",
            (user_key, hour, images))

    @serialized
    async def usage_last_hour(self, user_key: str, now: float | None = None) -> int:
        """Jobs submitted in the current and the previous clock hour (a sliding-enough window)."""
        hour = int((now or time.time()) // 3600)
        async with self.db.execute(
            "SELECT COALESCE(SUM(jobs), 0) FROM usage WHERE user_key = ? AND hour >= ?", (user_key, hour - 1)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @serialized
    async def ban(self, user_key: str, reason: str, by: str) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO bans (user_key, reason, banned_by, created_at) VALUES (?, ?, ?, ?)",
            (user_key, reason, by, time.time()))

    @serialized
    async def unban(self, user_key: str) -> None:
        await self.db.execute("DELETE FROM bans WHERE user_key = ?", (user_key,))

    @serialized
    async def bans(self) -> dict[str, str]:
        """Every banned key and its reason."""
        async with self.db.execute("SELECT user_key, reason FROM bans") as cursor:
            return {key: reason for key, reason in await cursor.fetchall()}

    @serialized
    async def bans_by(self, banned_by: str) -> list[str]:
        async with self.db.execute("SELECT user_key FROM bans WHERE banned_by = ?", (banned_by,)) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    @serialized
    async def get_setting(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    @serialized
    async def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            await self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            await self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    @serialized
    async def chat_settings(self, platform: str, chat_id: str) -> dict[str, str]:
        async with self.db.execute(
            "SELECT key, value FROM chat_settings WHERE platform = ? AND chat_id = ?", (platform, chat_id)
        ) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    @serialized
    async def set_chat_setting(self, platform: str, chat_id: str, key: str, value: str | None) -> None:
        if value is None:
            await self.db.execute("DELETE FROM chat_settings WHERE platform = ? AND chat_id = ? AND key = ?",
                                  (platform, chat_id, key))
        else:
            await self.db.execute("INSERT OR REPLACE INTO chat_settings VALUES (?, ?, ?, ?)",
                                  (platform, chat_id, key, value))

    @serialized
    async def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        await self.db.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                              (time.time(), actor, action, json.dumps(detail, ensure_ascii=False)))

    @serialized
    async def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ) as cursor:
            return [{"at": r[0], "actor": r[1], "action": r[2], "detail": json.loads(r[3])}
                    for r in await cursor.fetchall()]
