"""Prompt weights and long prompts: AUTOMATIC1111 syntax encoded with compel.

`bot.core.prompt_syntax` reads `(word:1.3)`, `(word)` and `[word]` into weighted fragments; compel
turns those into text embeddings, weighting each fragment's tokens, and encodes a prompt longer than
the text encoder's window (77 tokens for CLIP) as several windows joined, instead of cutting it off.
A plain short prompt skips all this and goes to the pipeline as text, exactly as before.

Stable Diffusion 1.x/2.x read the last hidden state of one CLIP encoder; SDXL concatenates the
penultimate hidden states of two encoders and adds the second one's pooled output (its refiner has
only the second encoder). Both are built from whichever encoders the pipeline has.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

from bot.core.prompt_syntax import has_weights, weighted_fragments


def clip_call_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict[str, Any]:
    """The text and guidance keyword arguments of a CLIP-family pipeline call (SD 1.x, 2.x, SDXL)."""
    if needs_embeddings(pipe, [*prompts, *negatives]):
        # Weights or a prompt over the text encoder's window: compel encodes them.
        text: dict[str, Any] = prompt_embeddings(pipe, prompts, negatives)
    elif not any(negatives) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        text = dict(prompt=list(prompts), negative_prompt=None)  # SDXL's own convention for "no negative prompt"
    else:
        text = dict(prompt=list(prompts), negative_prompt=list(negatives))
    return {**text, "guidance_scale": request.guidance}


def needs_embeddings(pipe: Any, texts: Sequence[str]) -> bool:
    """Whether any text uses weights or is longer than the text encoder reads at once; False for
    pipelines compel cannot encode for (no CLIP tokenizer)."""
    encoders = _encoders(pipe)
    if not encoders:
        return False
    tokenizer = encoders[0][0]
    window = tokenizer.model_max_length
    return any(has_weights(text) or len(tokenizer.tokenize(text)) + 2 > window for text in texts)


def prompt_embeddings(pipe: Any, prompts: Sequence[str], negatives: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pipeline keyword arguments (`prompt_embeds`, `negative_prompt_embeds`, and for SDXL the pooled
    ones) for one prompt and one negative prompt per image; every text padded to one length."""
    sdxl = hasattr(pipe, "text_encoder_2")
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    device = pipe._execution_device
    compels = [Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=False,
                      returned_embeddings_type=kind, device=device)
               for tokenizer, encoder in _encoders(pipe)]
    texts = [*prompts, *negatives]
    with torch.no_grad():
        per_encoder = [[_encode(compel, text) for text in texts] for compel in compels]
        length = max(tensor.shape[1] for tensors in per_encoder for tensor in tensors)
        per_encoder = [[_pad(compel, tensor, length) for tensor in tensors]
                       for compel, tensors in zip(compels, per_encoder)]
        embeds = torch.cat([torch.cat(tensors, dim=-1) for tensors in zip(*per_encoder)])
        dtype = next(compels[-1].conditioning_provider.text_encoder.parameters()).dtype
        embeds = embeds.to(dtype)
        zero_empty = getattr(pipe.config, "force_zeros_for_empty_prompt", False)
        count = len(prompts)
        if zero_empty:  # SDXL's convention: an empty negative prompt is all zeros
            for index, negative in enumerate(negatives):
                if not negative:
                    embeds[count + index] = 0
        result = {"prompt_embeds": embeds[:count], "negative_prompt_embeds": embeds[count:]}
        if sdxl:
            provider = compels[-1].conditioning_provider
            pooled = torch.cat([provider.get_pooled_embeddings([_plain(text)], device=device) for text in texts])
            pooled = pooled.to(dtype)
            if zero_empty:
                for index, negative in enumerate(negatives):
                    if not negative:
                        pooled[count + index] = 0
            result.update(pooled_prompt_embeds=pooled[:count], negative_pooled_prompt_embeds=pooled[count:])
    return result


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs
            if tokenizer is not None and encoder is not None and hasattr(tokenizer, "model_max_length")]


def _encode(compel: Compel, text: str) -> torch.Tensor:
    prompt = FlattenedPrompt([Fragment(piece, weight) for piece, weight in weighted_fragments(text)])
    conditioning, _ = compel.build_conditioning_tensor_for_conjunction(Conjunction([prompt]))
    return conditioning if conditioning.dim() == 3 else conditioning.unsqueeze(0)


def _pad(compel: Compel, tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Longer prompts take more windows; shorter ones are padded with the empty prompt's window,
    as compel pads a prompt and its negative."""
    if tensor.shape[1] == length:
        return tensor
    empty = _encode(compel, "")
    while tensor.shape[1] < length:
        tensor = torch.cat([tensor, empty], dim=1)
    return tensor


def _plain(text: str) -> str:
    return "".join(piece for piece, _ in weighted_fragments(text))
