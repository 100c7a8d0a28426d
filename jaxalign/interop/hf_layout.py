"""The tensor layout of Hugging Face CLIP and BERT checkpoints: which checkpoint key holds which
of our parameters, with what shape and what change of layout (``tensor_map.Tensor`` rows).

``clip_tensors(vision, text, projection_dim)`` and ``bert_tensors(config, prefix)`` list every
tensor of a checkpoint of that config; ``jaxalign.interop.hf`` reads and writes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxalign.interop.tensor_map import Tensor


def block_tensors(
    prefix: str, i: int, width: int, mlp: int, heads: int, names: dict[str, str]
) -> list[Tensor]:
    """One encoder layer's tensors; ``names`` maps our sub-module ("q", "k", "v", "out",
    "ln1", "ln2", "fc1", "fc2") to the checkpoint's (without ".weight" / ".bias")."""
    base = ("encoder", f"block_{i}")
    attn, mlp_path = (*base, "attn"), (*base, "mlp")
    out = []
    for ours in ("q", "k", "v", "out"):
        key = f"{prefix}{i}.{names[ours]}"
        kind = "out" if ours == "out" else "qkv"
        bias = "copy" if ours == "out" else "qkv_bias"
        out.append(Tensor(f"{key}.weight", (*attn, ours, "kernel"), (width, width), kind, heads))
        out.append(Tensor(f"{key}.bias", (*attn, ours, "bias"), (width,), bias, heads))
    for ours, fan_in, fan_out in (("fc1", width, mlp), ("fc2", mlp, width)):
        key = f"{prefix}{i}.{names[ours]}"
        kernel = (*mlp_path, ours, "kernel")
        out.append(Tensor(f"{key}.weight", kernel, (fan_out, fan_in), "linear"))
        out.append(Tensor(f"{key}.bias", (*mlp_path, ours, "bias"), (fan_out,)))
    for ours in ("ln1", "ln2"):
        out += layer_norm_tensors(f"{prefix}{i}.{names[ours]}", (*base, ours), width)
    return out


def layer_norm_tensors(key: str, path: tuple[str, ...], width: int) -> list[Tensor]:
    return [
        Tensor(f"{key}.weight", (*path, "scale"), (width,)),
        Tensor(f"{key}.bias", (*path, "bias"), (width,)),
    ]


CLIP_BLOCK = dict(
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    out="self_attn.out_proj",
    ln1="layer_norm1",
    ln2="layer_norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)
BERT_BLOCK = dict(
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    out="attention.output.dense",
    ln1="attention.output.LayerNorm",
    ln2="output.LayerNorm",
    fc1="intermediate.dense",
    fc2="output.dense",
)


def clip_tensors(vision: Any, text: Any, projection_dim: int) -> list[Tensor]:
    """Every tensor of a ``CLIPModel`` with these (transformers) sub-configs."""
    w, p, c = vision.hidden_size, vision.patch_size, vision.num_channels
    tokens = (vision.image_size // p) ** 2 + 1
    v, img = "vision_model.", ("image_tower",)
    out = [
        Tensor(f"{v}embeddings.class_embedding", (*img, "cls"), (w,)),
        Tensor(f"{v}embeddings.patch_embedding.weight", (*img, "embedding", "kernel"),
               (w, c, p, p), "conv"),
        Tensor(f"{v}embeddings.position_embedding.weight", (*img, "pos_embedding"), (tokens, w)),
        *layer_norm_tensors(f"{v}pre_layrnorm", (*img, "ln_pre"), w),
        *layer_norm_tensors(f"{v}post_layernorm", (*img, "ln_post"), w),
        Tensor("visual_projection.weight", ("image_projection", "kernel"),
               (projection_dim, w), "linear"),
    ]  # fmt: skip
    for i in range(vision.num_hidden_layers):
        blocks = block_tensors(
            f"{v}encoder.layers.", i, w, vision.intermediate_size,
            vision.num_attention_heads, CLIP_BLOCK,
        )  # fmt: skip
        out += [dataclasses.replace(t, path=img + t.path) for t in blocks]
    w, t, txt = text.hidden_size, "text_model.", ("text_tower",)
    out += [
        Tensor(f"{t}embeddings.token_embedding.weight", (*txt, "token_embedding", "embedding"),
               (text.vocab_size, w)),
        Tensor(f"{t}embeddings.position_embedding.weight", (*txt, "pos_embedding"),
               (text.max_position_embeddings, w)),
        *layer_norm_tensors(f"{t}final_layer_norm", (*txt, "ln_final"), w),
        Tensor("text_projection.weight", ("text_projection", "kernel"),
               (projection_dim, w), "linear"),
        Tensor("logit_scale", ("logit_scale",), ()),
    ]  # fmt: skip
    for i in range(text.num_hidden_layers):
        blocks = block_tensors(
            f"{t}encoder.layers.", i, w, text.intermediate_size,
            text.num_attention_heads, CLIP_BLOCK,
        )  # fmt: skip
        out += [dataclasses.replace(b, path=txt + b.path) for b in blocks]
    return out


def bert_tensors(config: Any, prefix: str) -> list[Tensor]:
    """Every tensor of a ``BertModel`` encoder (no pooler), keys starting with ``prefix``."""
    w, e = config.hidden_size, f"{prefix}embeddings."
    out = [
        Tensor(f"{e}word_embeddings.weight", ("token_embedding", "embedding"),
               (config.vocab_size, w)),
        Tensor(f"{e}position_embeddings.weight", ("pos_embedding",),
               (config.max_position_embeddings, w)),
        *layer_norm_tensors(f"{e}LayerNorm", ("ln_embed",), w),
    ]  # fmt: skip
    if config.type_vocab_size:
        out.append(
            Tensor(f"{e}token_type_embeddings.weight", ("type_embedding", "embedding"),
                   (config.type_vocab_size, w))
        )  # fmt: skip
    for i in range(config.num_hidden_layers):
        out += block_tensors(
            f"{prefix}encoder.layer.", i, w, config.intermediate_size,
            config.num_attention_heads, BERT_BLOCK,
        )  # fmt: skip
    return out


def bert_mlm_head_tensors(config: Any) -> list[Tensor]:
    """The masked-LM head of a ``BertForMaskedLM`` / ``BertForPreTraining`` (``cls.predictions``)
    as ``models.MaskedLanguageModel``'s ``mlm_head``; its output layer is the word embeddings
    (tied), so only the per-token bias is a tensor of its own."""
    w, head, key = config.hidden_size, ("mlm_head",), "cls.predictions."
    return [
        Tensor(f"{key}transform.dense.weight", (*head, "transform", "kernel"), (w, w), "linear"),
        Tensor(f"{key}transform.dense.bias", (*head, "transform", "bias"), (w,)),
        *layer_norm_tensors(f"{key}transform.LayerNorm", (*head, "ln"), w),
        Tensor(f"{key}bias", (*head, "output_bias"), (config.vocab_size,)),
    ]
