"""The tensor names and shapes of FLUX.1 and SD 3 transformer files, in each layout, at any size,
without torch: what detection reads from a header. tests/engine/test_transformer_files.py checks
them against the real diffusers models and the files the writers of
tests/helpers/transformer_files.py produce.

`header_only_safetensors` writes such a table as a `.safetensors` header with no data after it,
enough for `read_safetensors_header`, so a full-size model's file is a few kilobytes; `gguf_file`
writes a (small) GGUF file of zeros with numpy and the gguf package.
"""

from __future__ import annotations

import json
from pathlib import Path

Shapes = dict[str, tuple[int, ...]]

# The released sizes: FLUX.1 dev / schnell, SD 3.5 large.
FLUX1 = dict(hidden=3072, heads=24, double=19, single=38, channels=64, context=4096, pooled=768)
SD35_LARGE = dict(hidden=2432, heads=38, depth=38, channels=16, patch=2, context=4096, pooled=2048, positions=192,
                  dual=(), qk_norm=True)


def _linear(name: str, rows: int, columns: int) -> Shapes:
    return {f"{name}.weight": (rows, columns), f"{name}.bias": (rows,)}


def flux_shapes(layout: str = "bfl", *, guidance: bool = True, prefix: str = "", hidden: int = 3072, heads: int = 24,
                double: int = 19, single: int = 38, channels: int = 64, out_channels: int | None = None,
                context: int = 4096, pooled: int = 768) -> Shapes:
    """A FLUX.1 transformer's tensors: "bfl" (Black Forest Labs) or "diffusers" layout."""
    out_channels = channels if out_channels is None else out_channels
    build = _flux_bfl if layout == "bfl" else _flux_diffusers
    shapes = build(guidance, hidden, hidden // heads, double, single, channels, out_channels, context, pooled)
    return {prefix + name: shape for name, shape in shapes.items()}


def _flux_bfl(guidance, h, head, double, single, channels, out_channels, context, pooled) -> Shapes:
    shapes = {**_linear("img_in", h, channels), **_linear("txt_in", h, context),
              **_linear("time_in.in_layer", h, 256), **_linear("time_in.out_layer", h, h),
              **_linear("vector_in.in_layer", h, pooled), **_linear("vector_in.out_layer", h, h),
              **_linear("final_layer.linear", out_channels, h), **_linear("final_layer.adaLN_modulation.1", 2 * h, h)}
    if guidance:
        shapes |= {**_linear("guidance_in.in_layer", h, 256), **_linear("guidance_in.out_layer", h, h)}
    for i in range(double):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            shapes |= {**_linear(f"{block}_mod.lin", 6 * h, h), **_linear(f"{block}_attn.qkv", 3 * h, h),
                       **_linear(f"{block}_attn.proj", h, h), **_linear(f"{block}_mlp.0", 4 * h, h),
                       **_linear(f"{block}_mlp.2", h, 4 * h),
                       f"{block}_attn.norm.query_norm.scale": (head,), f"{block}_attn.norm.key_norm.scale": (head,)}
    for i in range(single):
        block = f"single_blocks.{i}"
        shapes |= {**_linear(f"{block}.modulation.lin", 3 * h, h), **_linear(f"{block}.linear1", 7 * h, h),
                   **_linear(f"{block}.linear2", h, 5 * h),
                   f"{block}.norm.query_norm.scale": (head,), f"{block}.norm.key_norm.scale": (head,)}
    return shapes


def _flux_diffusers(guidance, h, head, double, single, channels, out_channels, context, pooled) -> Shapes:
    embed = "time_text_embed"
    shapes = {**_linear(f"{embed}.timestep_embedder.linear_1", h, 256), **_linear(f"{embed}.timestep_embedder.linear_2", h, h),
              **_linear(f"{embed}.text_embedder.linear_1", h, pooled), **_linear(f"{embed}.text_embedder.linear_2", h, h),
              **_linear("context_embedder", h, context), **_linear("x_embedder", h, channels),
              **_linear("norm_out.linear", 2 * h, h), **_linear("proj_out", out_channels, h)}
    if guidance:
        shapes |= {**_linear(f"{embed}.guidance_embedder.linear_1", h, 256),
                   **_linear(f"{embed}.guidance_embedder.linear_2", h, h)}
    for i in range(double):
        block = f"transformer_blocks.{i}"
        for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            shapes |= _linear(f"{block}.attn.{name}", h, h)
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            shapes[f"{block}.attn.{name}.weight"] = (head,)
        for ff in ("ff", "ff_context"):
            shapes |= {**_linear(f"{block}.{ff}.net.0.proj", 4 * h, h), **_linear(f"{block}.{ff}.net.2", h, 4 * h)}
        shapes |= {**_linear(f"{block}.norm1.linear", 6 * h, h), **_linear(f"{block}.norm1_context.linear", 6 * h, h)}
    for i in range(single):
        block = f"single_transformer_blocks.{i}"
        shapes |= {**_linear(f"{block}.norm.linear", 3 * h, h), **_linear(f"{block}.proj_mlp", 4 * h, h),
                   **_linear(f"{block}.proj_out", h, 5 * h), f"{block}.attn.norm_q.weight": (head,),
                   f"{block}.attn.norm_k.weight": (head,)}
        for name in ("to_q", "to_k", "to_v"):
            shapes |= _linear(f"{block}.attn.{name}", h, h)
    return shapes


def sd3_shapes(layout: str = "mmdit", *, prefix: str = "", hidden: int = 2432, heads: int = 38, depth: int = 38,
               channels: int = 16, patch: int = 2, context: int = 4096, pooled: int = 2048, positions: int = 192,
               dual: tuple[int, ...] = (), qk_norm: bool = True) -> Shapes:
    """An SD 3 / 3.5 transformer's tensors: "mmdit" (Stability) or "diffusers" layout. `dual` lists
    the blocks with a second image attention (SD 3.5 medium); `qk_norm`: SD 3.5 (not 3.0)."""
    build = _sd3_mmdit if layout == "mmdit" else _sd3_diffusers
    shapes = build(hidden, hidden // heads, depth, channels, patch, context, pooled, positions, dual, qk_norm)
    return {prefix + name: shape for name, shape in shapes.items()}


def _sd3_mmdit(h, head, depth, channels, patch, context, pooled, positions, dual, qk_norm) -> Shapes:
    shapes = {"pos_embed": (1, positions * positions, h), "x_embedder.proj.weight": (h, channels, patch, patch),
              "x_embedder.proj.bias": (h,), **_linear("t_embedder.mlp.0", h, 256), **_linear("t_embedder.mlp.2", h, h),
              **_linear("y_embedder.mlp.0", h, pooled), **_linear("y_embedder.mlp.2", h, h),
              **_linear("context_embedder", h, context), **_linear("final_layer.linear", patch * patch * channels, h),
              **_linear("final_layer.adaLN_modulation.1", 2 * h, h)}
    for i in range(depth):
        last = i == depth - 1
        x, c = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        shapes |= {**_linear(f"{x}.attn.qkv", 3 * h, h), **_linear(f"{x}.attn.proj", h, h),
                   **_linear(f"{x}.adaLN_modulation.1", (9 if i in dual else 6) * h, h),
                   **_linear(f"{x}.mlp.fc1", 4 * h, h), **_linear(f"{x}.mlp.fc2", h, 4 * h),
                   **_linear(f"{c}.attn.qkv", 3 * h, h), **_linear(f"{c}.adaLN_modulation.1", (2 if last else 6) * h, h)}
        if not last:
            shapes |= {**_linear(f"{c}.attn.proj", h, h), **_linear(f"{c}.mlp.fc1", 4 * h, h),
                       **_linear(f"{c}.mlp.fc2", h, 4 * h)}
        attentions = [f"{x}.attn", f"{c}.attn"] + ([f"{x}.attn2"] if i in dual else [])
        if i in dual:
            shapes |= {**_linear(f"{x}.attn2.qkv", 3 * h, h), **_linear(f"{x}.attn2.proj", h, h)}
        if qk_norm:
            shapes |= {f"{attention}.{norm}.weight": (head,) for attention in attentions for norm in ("ln_q", "ln_k")}
    return shapes


def _sd3_diffusers(h, head, depth, channels, patch, context, pooled, positions, dual, qk_norm) -> Shapes:
    embed = "time_text_embed"
    shapes = {"pos_embed.pos_embed": (1, positions * positions, h), "pos_embed.proj.weight": (h, channels, patch, patch),
              "pos_embed.proj.bias": (h,), **_linear(f"{embed}.timestep_embedder.linear_1", h, 256),
              **_linear(f"{embed}.timestep_embedder.linear_2", h, h), **_linear(f"{embed}.text_embedder.linear_1", h, pooled),
              **_linear(f"{embed}.text_embedder.linear_2", h, h), **_linear("context_embedder", h, context),
              **_linear("norm_out.linear", 2 * h, h), **_linear("proj_out", patch * patch * channels, h)}
    for i in range(depth):
        last = i == depth - 1
        block = f"transformer_blocks.{i}"
        shapes |= {**_linear(f"{block}.norm1.linear", (9 if i in dual else 6) * h, h),
                   **_linear(f"{block}.norm1_context.linear", (2 if last else 6) * h, h),
                   **_linear(f"{block}.ff.net.0.proj", 4 * h, h), **_linear(f"{block}.ff.net.2", h, 4 * h)}
        names = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]
        shapes |= {key: shape for name in names + ([] if last else ["to_add_out"])
                   for key, shape in _linear(f"{block}.attn.{name}", h, h).items()}
        if not last:
            shapes |= {**_linear(f"{block}.ff_context.net.0.proj", 4 * h, h), **_linear(f"{block}.ff_context.net.2", h, 4 * h)}
        norms = ["attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"]
        if i in dual:
            shapes |= {key: shape for name in ("to_q", "to_k", "to_v", "to_out.0")
                       for key, shape in _linear(f"{block}.attn2.{name}", h, h).items()}
            norms += ["attn2.norm_q", "attn2.norm_k"]
        if qk_norm:
            shapes |= {f"{block}.{norm}.weight": (head,) for norm in norms}
    return shapes


def header_only_safetensors(path: Path, shapes: Shapes, metadata: dict[str, str] | None = None) -> Path:
    """A `.safetensors` header listing `shapes` (as BF16, the released files' type) with no data after it."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    return path


def gguf_file(path: Path, shapes: Shapes, architecture: str = "flux", qtype: str = "Q8_0") -> Path:
    """A GGUF file of zeros with these tensors (numpy and gguf only): matrices whose rows split into
    whole blocks in `qtype`, the rest in F32."""
    import numpy as np

    arrays = ((name, np.zeros(shape, dtype=np.float32)) for name, shape in shapes.items())
    return write_gguf(path, architecture, arrays, qtype)


def write_gguf(path: Path, architecture: str, arrays, qtype: str, keep_f32=lambda name: False,
               file_type: str | None = None) -> Path:
    """Write (name, float32 numpy array) pairs as a GGUF file: matrices in `qtype` unless
    `keep_f32(name)` or their rows do not split into whole blocks, everything else in F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=architecture)
    if file_type is not None:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(gguf.LlamaFileType[file_type])
    target = gguf.GGMLQuantizationType[qtype]
    for name, data in arrays:
        kind = target if data.ndim == 2 and not keep_f32(name) else gguf.GGMLQuantizationType.F32
        try:
            stored = gguf.quants.quantize(data, kind)
        except gguf.QuantError:  # a row width that is not a whole number of blocks
            kind, stored = gguf.GGMLQuantizationType.F32, data
        writer.add_tensor(name, stored, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
