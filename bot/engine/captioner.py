"""An image-captioning model (BLIP and friends) on one device: a caption per image for
`imagebot data caption`, several beams of one search for /describe.

Any model that transformers loads as `AutoModelForImageTextToText` with an `AutoProcessor` works
(BLIP: Salesforce/blip-image-captioning-base or -large; GIT and ViT-GPT2 style models load the same
way). The model is read from a local folder only, never downloaded.

torch and transformers are imported when a model loads, not when this module does: the
`imagebot data` commands import it (through training.caption) and most of them never caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

EXAMPLE_MODEL = "Salesforce/blip-image-captioning-base"


class CaptionError(ValueError):
    """Bad input (a missing model, manifest or option); the message says what is allowed."""


def missing_model_message(path: str | Path) -> str:
    return (f"no captioning model in {path} (a folder with config.json, as save_pretrained writes). "
            f"Models are never downloaded here: on a machine with internet access run "
            f"`huggingface-cli download {EXAMPLE_MODEL} --local-dir models/blip-base`, copy that "
            f"folder here, then pass --model models/blip-base")


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CaptionError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptionError(f"device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CaptionError(f"device {name} asked for, but MPS is not available; use --device cpu")
    return device


class Captioner:
    """A captioning model and its processor, on one device."""

    def __init__(self, model: Any, processor: Any, device: Any, max_new_tokens: int = 30):
        self.model = model
        self.processor = processor
        self.device = device
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", max_new_tokens: int = 30) -> "Captioner":
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise CaptionError(missing_model_message(path))
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        target = pick_device(device)
        # Half precision halves the memory and time on a GPU; CPUs are slow at it.
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionError(f"cannot load {folder} as an image-captioning model ({exc}); BLIP models "
                               f"such as {EXAMPLE_MODEL} are known to work") from None
        model.to(target).eval()
        return cls(model, processor, target, max_new_tokens)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image (greedy search: the model's most likely words)."""
        return self._generate(list(images))

    def candidates(self, image: Image.Image, count: int) -> list[str]:
        """Up to `count` different captions of `image`: the beams of one search, so they differ in
        wording, not at random, and the same picture gets the same candidates."""
        beams = max(count, 2)  # one beam would be the greedy caption alone
        texts = self._generate([image.convert("RGB")], num_beams=beams, num_return_sequences=beams, do_sample=False)
        unique: list[str] = []
        for text in texts:
            if text and text not in unique:
                unique.append(text)
        return unique[:count]

    def _generate(self, images: list[Image.Image], **search: Any) -> list[str]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **search)
        return [" ".join(text.split()) for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]
