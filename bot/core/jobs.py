"""Jobs as the store keeps them, and where they came from."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.core.request import GenerationRequest

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

# Delivery of a finished job to the frontend it came from.
DELIVERY_PENDING, DELIVERED, DELIVERY_FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Origin:
    """Who asked, and where the answer goes: enough for any frontend to reply after a restart."""

    platform: str  # "web", "discord", "telegram", "cli"
    user_id: str
    chat_id: str = ""
    user_name: str = ""
    # Where in the chat the answer goes, by the platform's own names: the message, status message,
    # topic or interaction it answers (Telegram: reply_to, status, thread; Discord: interaction_id).
    reply: dict[str, int | None] = field(default_factory=dict)
    locale: str | None = None
    is_admin: bool = False  # an admin of the bot (config), for every chat
    manages_chat: bool = False  # the platform says this user runs this chat (a private chat, a group admin)
    guild_id: int | None = None  # Discord: the server the channel belongs to (None: a direct message)
    upload_limit: int | None = None  # bytes one message may carry in this chat; None: the platform's default
    address: str = ""  # a web or API client's network address (limits apply to it too); "" on chat platforms
    adult_content: bool = False  # asked where adult content is allowed (Discord's age-restricted channels)

    @property
    def address_key(self) -> str | None:
        """The key the per-address limits count under, for clients that have an address."""
        return f"address:{self.address}" if self.address else None

    @property
    def user_key(self) -> str:
        """One user across the queue: fairness and quotas count per platform user."""
        return f"{self.platform}:{self.user_id}"

    @property
    def log_name(self) -> str:
        """`user_key` as logs show it. A web client's key is its only credential (whoever knows it
        acts as that client), so a log shows a short digest of it: enough to follow one client
        through the log, useless for calling as them."""
        if self.platform == "web" and not self.user_id.startswith(("anon-", "user:")):
            return "web:key#" + hashlib.sha256(self.user_id.encode()).hexdigest()[:12]
        return self.user_key

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Origin":
        fields = json.loads(text)
        # Rows of earlier versions (existing databases) kept the reply targets, the guild id and
        # the upload limit ("filesize_limit") together in "message_ids".
        if "message_ids" in fields:
            reply = dict(fields.pop("message_ids") or {})
            fields.setdefault("guild_id", reply.pop("guild_id", None))
            fields.setdefault("upload_limit", reply.pop("filesize_limit", None))
            fields.setdefault("reply", reply)
        return cls(**fields)


def new_public_id() -> str:
    """96 random bits, as 24 hex digits (the same form the schema's migration gives old jobs)."""
    return secrets.token_hex(12)


def is_public_id(text: str) -> bool:
    return len(text) == 24 and all(c in "0123456789abcdef" for c in text)


SHORT_ID_CHARS = 6  # enough to tell a user's own jobs apart; chats show it as "#a3f09c"


def short_id(public_id: str) -> str:
    """What chat texts call a job: the start of its public id (never the guessable internal one)."""
    return public_id[:SHORT_ID_CHARS]


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler knows of a waiting job: its row's columns, no request decoded."""

    id: int
    user_key: str
    model: str
    batch_key: str  # jobs with equal keys can share one pipeline call
    images: int
    steps: int
    created_at: float
    is_admin: bool = False
    public_id: str = ""


@dataclass(frozen=True)
class ImageResult:
    file: str  # a file name inside the outputs folder
    seed: int


@dataclass(frozen=True)
class Job:
    id: int  # internal: the queue's order; never shown outside the process
    status: str
    request: GenerationRequest
    origin: Origin
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    images: tuple[ImageResult, ...] = ()
    grid: str | None = None
    error: str | None = None
    error_key: str | None = None  # catalogue key, so a frontend can show the error in the user's language
    error_params: dict[str, Any] = field(default_factory=dict)
    delivery: str = DELIVERY_PENDING
    cancel_requested: bool = False
    public_id: str = ""  # what users, URLs and buttons name the job by (random, unguessable)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
