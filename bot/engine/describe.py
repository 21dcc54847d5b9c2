"""/describe: candidate prompts for a picture, from the captioning model the admin points to
(`[describe] model`, the BLIP folder `imagebot data caption` uses).

The model loads on first use and stays loaded. Its answers are several beams of one search, so
the candidates differ in wording, not at random: the same picture gets the same candidates.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from PIL import Image

from bot.core.errors import UserError
from training.caption import CaptionError, Captioner

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
            captioner = self._load()
            inputs = captioner.processor(images=[image.convert("RGB")], return_tensors="pt").to(captioner.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(captioner.model.dtype)
            beams = max(self.candidates, 2)
            with torch.inference_mode():
                tokens = captioner.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=beams,
                                                  num_return_sequences=beams, do_sample=False)
            texts = captioner.processor.batch_decode(tokens, skip_special_tokens=True)
        unique: list[str] = []
        for text in (" ".join(t.split()) for t in texts):
            if text and text not in unique:
                unique.append(text)
        return unique[: self.candidates]

    def _load(self) -> Captioner:
        if self._captioner is None:
            try:
                self._captioner = Captioner.load(self.folder, self.device, MAX_NEW_TOKENS)
            except CaptionError as error:
                raise UserError("describe_broken", error=str(error)) from error
        return self._captioner
