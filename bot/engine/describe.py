"""/describe: candidate prompts for a picture, from the captioning model the admin points to
(`[describe] model`, the BLIP folder `imagebot data caption` uses).

The model loads on first use and stays loaded. Its answers are several beams of one search
(bot.engine.captioner), so the candidates differ in wording, not at random: the same picture gets
the same candidates.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from bot.core.errors import UserError
from bot.engine.captioner import CaptionError, Captioner

MAX_NEW_TOKENS = 30


class Describer:
    def __init__(self, folder: str | Path, device: str = "auto", candidates: int = 4) -> None:
        self.folder = Path(folder)
        self.device = device
        self.candidates = candidates
        self._captioner: Captioner | None = None
        self._lock = threading.Lock()  # one caption at a time; called from worker threads

    def describe(self, image: Image.Image) -> list[str]:
        """Up to `candidates` different prompts for `image` (CPU/GPU work: call it off the event loop)."""
        with self._lock:
            return self._load().candidates(image, self.candidates)

    def _load(self) -> Captioner:
        if self._captioner is None:
            try:
                self._captioner = Captioner.load(self.folder, self.device, MAX_NEW_TOKENS)
            except CaptionError as error:
                raise UserError("describe_broken", error=str(error)) from error
        return self._captioner
