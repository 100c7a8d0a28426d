"""Hugging Face checkpoints and tokenizers from local disk, into (and out of) our Flax modules.

transformers 5 has no Flax models: it gives the configs, the tokenizers and the PyTorch
reference; the Flax side is ``jaxalign.models``. Weights are read and written with
``safetensors`` only, never with pickle (``pytorch_model.bin``, ``*.pt``, ``*.ckpt`` are refused:
convert them to safetensors first). Nothing here touches the network.

- ``load_clip(dir)`` -> ``(DualEncoder, variables)`` from a ``CLIPModel.save_pretrained``
  directory; ``save_clip(model, variables, dir)`` writes one back that
  ``transformers.CLIPModel.from_pretrained`` loads with the same features.
- ``load_bert(dir)`` -> ``(TextTransformer, variables)`` from a ``BertModel`` (or
  ``BertFor*``, keys prefixed ``bert.``) directory; ``load_bert_mlm(dir)`` ->
  ``(MaskedLanguageModel, variables)`` with ``BertForMaskedLM``'s head where there is one.
- ``load_tokenizer(dir)``: ``transformers.AutoTokenizer`` with ``local_files_only=True``.

Errors name the file: a missing directory or file is a ``MissingDataError``; a malformed
``config.json``, index, safetensors or tokenizer file a ``DataError`` whose message starts with
the file's path and says what is wrong (``jaxalign.errors``).

Layout mapping (PyTorch -> ours): ``nn.Linear`` weights ``[out, in]`` are transposed to
``[in, out]``; q / k / v projections become ``[width, heads, head_dim]`` (biases
``[heads, head_dim]``), the attention output ``[heads, head_dim, width]``; the patch conv
``[out, in, kh, kw]`` becomes ``[kh, kw, in, out]``. Every tensor's shape is checked against
the config before anything is built; a mismatch names the key, the file and both shapes.
The variables returned are ``{"params": ...}`` of host float32 numpy arrays (the modules'
parameter dtype; ``dtype`` is the compute dtype); place them with ``jax.device_put`` and the
shardings of ``nn.get_partition_spec(jax.eval_shape(model.init, ...))``.
"""

from __future__ import annotations

import math
import pathlib
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxalign.errors import DataError
from jaxalign.interop.hf_layout import bert_mlm_head_tensors, bert_tensors, clip_tensors
from jaxalign.interop.hf_tokenizer import load_tokenizer  # noqa: F401 (hf.load_tokenizer)
from jaxalign.interop.tensor_map import (
    SAFETENSORS,
    Tensor,
    Variables,
    assemble,
    check_tree,
    read_config,
    read_tensors,
    tensor_shapes,
    to_hf,
    weight_files,
)
from jaxalign.models.dual_encoder import DualEncoder
from jaxalign.models.layers import Dtype
from jaxalign.models.mlm import MaskedLanguageModel
from jaxalign.models.text import TextTransformer
from jaxalign.models.vit import ViT

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PathLike = str | pathlib.Path

CLIP_VISION_DIMS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_channels", "image_size", "patch_size")  # fmt: skip
TEXT_DIMS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings")  # fmt: skip
# Non-persistent buffers older transformers releases wrote into checkpoints: not parameters.
CLIP_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
BERT_HEADS = ("pooler.", "cls.")  # BERT's pooler and pretraining heads: not loaded
# A masked-LM head's first tensor, and its (tied) output layer's weight.
BERT_MLM_HEAD = ("cls.predictions.transform.dense.weight", "cls.predictions.decoder.weight")
# Hugging Face ``hidden_act`` -> our activation name (the tanh GELUs are one function).
HF_ACTS = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
OUR_ACTS = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
}
CLIP_LEGACY_EOS = 2  # transformers pools CLIP text at argmax(ids) when eos_token_id == 2


# --- files -------------------------------------------------------------------------------------


def hf_config(cls: type[PretrainedConfig], path: pathlib.Path, model_type: str) -> Any:
    """``cls`` (a transformers config class) from ``path/config.json``.

    Raises:
      MissingDataError: no ``config.json``.
      DataError: naming the file: unreadable, not JSON, another ``model_type``, or values
        transformers refuses.
    """
    from huggingface_hub.errors import StrictDataclassError

    read_config(path, (model_type,))  # a readable JSON object of this model_type
    file = path / "config.json"
    try:
        return cls.from_json_file(str(file))
    except (TypeError, ValueError, StrictDataclassError) as error:
        reason = " ".join(str(error).split())
        raise DataError(f"{file}: not a {cls.__name__} ({reason})") from None


def check_dims(where: str, config: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """DataError unless each ``config.<name>`` is an int >= ``minimum``; ``where`` prefixes the
    key in the message (``"/ckpt/config.json: vision_config."``)."""
    for name in names:
        value = getattr(config, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise DataError(f"{where}{name} must be an int >= {minimum}, got {value!r}")


def our_act(hidden_act: Any, where: str) -> str:
    """Our activation name for Hugging Face's; DataError naming ``where`` (the file and the
    config section) when we have none."""
    if hidden_act not in HF_ACTS:
        raise DataError(
            f"{where}.hidden_act {hidden_act!r} is not supported; choose from {sorted(HF_ACTS)}"
        )
    return HF_ACTS[hidden_act]


# --- CLIP --------------------------------------------------------------------------------------


def clip_text_pool(eos_token_id: Any, where: str = "text_config") -> dict[str, Any]:
    """TextTransformer pooling fields matching transformers 5's ``CLIPTextTransformer``;
    DataError naming ``where`` (the file and the config section) for an unusable id."""
    if eos_token_id == CLIP_LEGACY_EOS:  # the pre-#24773 configs: pool at the highest id
        return dict(pool="argmax", eot_token_id=None)
    if not isinstance(eos_token_id, int) or isinstance(eos_token_id, bool):
        raise DataError(f"{where}.eos_token_id must be one int, got {eos_token_id!r}")
    return dict(pool="eot", eot_token_id=eos_token_id)


def load_clip(path: PathLike, *, dtype: Dtype = jnp.float32) -> tuple[DualEncoder, Variables]:
    """A ``CLIPModel.save_pretrained`` directory -> ``(DualEncoder, {"params": ...})``.

    ``model.encode_image(images)`` takes ``[batch, H, W, C]`` images (the NCHW pixel values
    transposed) and its ``"img/projected"`` intermediate is ``get_image_features``;
    ``model.encode_text(ids, mask)`` (``[batch, length]``, mask 1 for real tokens) gives
    ``"txt/projected"`` = ``get_text_features``. Text pooling follows transformers 5: the first
    ``eos_token_id`` (our ``pool="eot"``), or the highest id when ``eos_token_id == 2``
    (``pool="argmax"``). Like transformers, this assumes every sequence holds an EOS: for one
    without, transformers pools position 0 and we pool the last real token.
    Position-id buffers are ignored; any other unknown tensor is an error. ``dtype`` is the
    compute dtype; the parameters are float32 host arrays whatever the checkpoint's dtype
    (float32, float16 or bfloat16).

    Raises:
      MissingDataError: no directory, ``config.json``, weights or listed shard.
      DataError: naming the file: a malformed ``config.json`` (not JSON, not ``model_type``
        "clip", values transformers refuses or this loader cannot use), a malformed index, a
        truncated or corrupt safetensors file, or missing, unknown or misshapen tensors.
    """
    from transformers import CLIPConfig

    path = pathlib.Path(path)
    files = weight_files(path)
    config = hf_config(CLIPConfig, path, "clip")
    vision, text, file = config.vision_config, config.text_config, path / "config.json"
    check_dims(f"{file}: vision_config.", vision, CLIP_VISION_DIMS)
    check_dims(f"{file}: text_config.", text, TEXT_DIMS)
    check_dims(f"{file}: ", config, ("projection_dim",))
    tensors = clip_tensors(vision, text, config.projection_dim)
    arrays = read_tensors(path, files, tensors, ignore=lambda k: k in CLIP_BUFFERS)
    image_tower = ViT(
        patch_size=vision.patch_size,
        width=vision.hidden_size,
        depth=vision.num_hidden_layers,
        mlp_dim=vision.intermediate_size,
        num_heads=vision.num_attention_heads,
        pool="cls",
        posemb="learn",
        ln_pre=True,
        patch_bias=False,
        act=our_act(vision.hidden_act, f"{file}: vision_config"),
        ln_eps=vision.layer_norm_eps,
        dtype=dtype,
    )
    text_tower = TextTransformer(
        vocab_size=text.vocab_size,
        width=text.hidden_size,
        depth=text.num_hidden_layers,
        mlp_dim=text.intermediate_size,
        num_heads=text.num_attention_heads,
        max_len=text.max_position_embeddings,
        causal=True,
        pre_norm=True,
        act=our_act(text.hidden_act, f"{file}: text_config"),
        ln_eps=text.layer_norm_eps,
        dtype=dtype,
        **clip_text_pool(text.eos_token_id, f"{file}: text_config"),
    )
    model = DualEncoder(
        image_tower,
        text_tower,
        embed_dim=config.projection_dim,
        logit_scale_init=float(arrays["logit_scale"]),
    )
    variables = assemble(tensors, arrays)
    side = vision.image_size
    images = jnp.zeros((1, side, side, vision.num_channels), jnp.float32)
    check_tree(model, variables, images, jnp.zeros((1, text.max_position_embeddings), jnp.int32))
    return model, variables


def save_clip(model: DualEncoder, variables: Variables, path: PathLike) -> None:
    """Writes ``config.json`` + ``model.safetensors`` (float32) that
    ``transformers.CLIPModel.from_pretrained(path)`` loads with the same features.

    ``model`` must have CLIP's layout: a ``ViT`` with ``pool="cls"``, ``posemb="learn"``,
    ``ln_pre=True``, ``patch_bias=False``; a causal pre-norm ``TextTransformer`` without token
    types, pooling "eot" (with an ``eot_token_id`` other than 2) or "argmax" (saved as
    ``eos_token_id=2``); no logit bias. The image size is read from the position table.
    ``variables``: ``{"params": ...}``, boxed or not, fully addressable (gather a multi-host
    sharded tree first). Dropout rates are not saved (transformers' CLIP has attention dropout
    only); ``bos_token_id`` / ``pad_token_id`` are left unset (the tokenizer owns them).
    """
    from transformers import CLIPConfig

    image, text = model.image_tower, model.text_tower
    if not isinstance(image, ViT) or not isinstance(text, TextTransformer):
        raise ValueError("save_clip needs a DualEncoder of a ViT and a TextTransformer")
    need = {
        "image_tower.pool": (image.pool, "cls"),
        "image_tower.posemb": (image.posemb, "learn"),
        "image_tower.ln_pre": (image.ln_pre, True),
        "image_tower.patch_bias": (image.patch_bias, False),
        "text_tower.causal": (text.causal, True),
        "text_tower.pre_norm": (text.pre_norm, True),
        "text_tower.type_vocab_size": (text.type_vocab_size, 0),
        "logit_bias_init": (model.logit_bias_init, None),
    }
    for field, (value, want) in need.items():
        if value != want:
            raise ValueError(f"save_clip: {field} is {value!r}; a CLIPModel needs {want!r}")
    if text.pool == "argmax":
        eos = CLIP_LEGACY_EOS
    elif text.pool == "eot" and text.eot_token_id not in (None, CLIP_LEGACY_EOS):
        eos = text.eot_token_id
    else:
        raise ValueError(
            f"save_clip: text_tower pool={text.pool!r}, eot_token_id={text.eot_token_id!r} has "
            f"no CLIPModel equivalent; use pool='argmax', or 'eot' with an id other than 2"
        )
    for tower in ("image_tower", "text_tower"):
        act = getattr(model, tower).act
        if act not in OUR_ACTS:
            raise ValueError(f"save_clip: {tower}.act {act!r} has no Hugging Face name")
    params = nn.unbox(variables)["params"]
    tokens = params["image_tower"]["pos_embedding"].shape[0]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"save_clip: {tokens - 1} patches do not form a square grid")
    config = CLIPConfig(
        text_config=dict(
            vocab_size=text.vocab_size,
            hidden_size=text.width,
            intermediate_size=text.mlp_dim,
            num_hidden_layers=text.depth,
            num_attention_heads=text.num_heads,
            max_position_embeddings=text.max_len,
            hidden_act=OUR_ACTS[text.act],
            layer_norm_eps=text.ln_eps,
            eos_token_id=eos,
            bos_token_id=None,
            pad_token_id=None,
        ),
        vision_config=dict(
            hidden_size=image.width,
            intermediate_size=image.mlp_dim,
            num_hidden_layers=image.depth,
            num_attention_heads=image.num_heads,
            num_channels=params["image_tower"]["embedding"]["kernel"].shape[2],
            image_size=grid * image.patch_size,
            patch_size=image.patch_size,
            hidden_act=OUR_ACTS[image.act],
            layer_norm_eps=image.ln_eps,
        ),
        projection_dim=model.embed_dim,
        logit_scale_init_value=float(params["logit_scale"]),
    )
    config.architectures = ["CLIPModel"]
    tensors = clip_tensors(config.vision_config, config.text_config, config.projection_dim)
    out = {}
    for t in tensors:
        node = params
        for name in t.path:
            node = node[name]
        out[t.key] = to_hf(t, node)
        if out[t.key].shape != t.shape:
            raise ValueError(f"save_clip: {t.key} has shape {out[t.key].shape}, expected {t.shape}")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    safetensors.numpy.save_file(out, str(path / SAFETENSORS), metadata={"format": "pt"})


# --- BERT --------------------------------------------------------------------------------------


def load_bert(path: PathLike, *, dtype: Dtype = jnp.float32) -> tuple[TextTransformer, Variables]:
    """A ``BertModel`` / ``BertFor*`` directory -> ``(TextTransformer, {"params": ...})``.

    ``model.apply(variables, ids, mask, token_types)``: ``[batch, length]`` ids, mask 1 for
    real tokens, optional token types; ``out["encoded"]`` ``[batch, length, hidden]`` is
    ``last_hidden_state`` at the real positions, ``pooled`` the [CLS] token (``pool="first"``,
    without BERT's pooler). Keys may carry the ``bert.`` prefix; the pooler (``pooler.*``) and
    the pretraining heads (``cls.*``) are ignored, as are the position / token-type buffers;
    any other unknown tensor is an error.

    Raises:
      MissingDataError: no directory, ``config.json``, weights or listed shard.
      DataError: naming the file: a malformed ``config.json`` (not JSON, not ``model_type``
        "bert", values transformers refuses or this loader cannot use), a malformed index, a
        truncated or corrupt safetensors file, or missing, unknown or misshapen tensors.
    """
    model, variables = read_bert(pathlib.Path(path), dtype, mlm_head=False)
    return model, variables


def load_bert_mlm(
    path: PathLike, *, dtype: Dtype = jnp.float32
) -> tuple[MaskedLanguageModel, Variables]:
    """A ``BertForMaskedLM`` / ``BertForPreTraining`` (or ``BertModel``) directory ->
    ``(MaskedLanguageModel, {"params": {"text": ..., "mlm_head": ...}})``.

    ``model.apply(variables, ids, mask)``: ``[batch, length]`` -> ``[batch, length, vocab]``
    logits, those of ``BertForMaskedLM`` (token types 0). ``mlm_head`` is absent when the
    checkpoint has no ``cls.predictions`` head (a ``BertModel``): initialise it yourself. The
    output layer is tied to the word embeddings, as in BERT; a stored
    ``cls.predictions.decoder.weight`` that differs from them is refused.

    Raises: as ``load_bert``; DataError for an untied decoder.
    """
    return read_bert(pathlib.Path(path), dtype, mlm_head=True)


def read_bert(path: pathlib.Path, dtype: Dtype, *, mlm_head: bool) -> tuple[Any, Variables]:
    """``load_bert`` (``mlm_head=False``) or ``load_bert_mlm`` (``mlm_head=True``)."""
    from transformers import BertConfig

    files = weight_files(path)
    config, file = hf_config(BertConfig, path, "bert"), path / "config.json"
    check_dims(f"{file}: ", config, TEXT_DIMS)
    check_dims(f"{file}: ", config, ("type_vocab_size",), minimum=0)
    if config.is_decoder or config.add_cross_attention:
        raise DataError(f"{file}: a decoder BERT (is_decoder, add_cross_attention) is not loaded")
    posemb = getattr(config, "position_embedding_type", "absolute")
    if posemb != "absolute":
        raise DataError(f"{file}: position_embedding_type {posemb!r} is not supported")
    keys = tensor_shapes(files)
    prefix = "bert." if any(k.startswith("bert.") for k in keys) else ""

    def ignore(key: str) -> bool:
        if prefix and not key.startswith(prefix):
            return key.startswith(BERT_HEADS)
        key = key[len(prefix) :]
        return key in BERT_BUFFERS or key.startswith(BERT_HEADS)

    tensors = bert_tensors(config, prefix)
    head = bert_mlm_head_tensors(config) if mlm_head and BERT_MLM_HEAD[0] in keys else []
    decoder = [Tensor(BERT_MLM_HEAD[1], ("tied",), (config.vocab_size, config.hidden_size))]
    decoder = decoder if head and BERT_MLM_HEAD[1] in keys else []
    arrays = read_tensors(path, files, tensors + head + decoder, ignore=ignore)
    tower = TextTransformer(
        vocab_size=config.vocab_size,
        width=config.hidden_size,
        depth=config.num_hidden_layers,
        mlp_dim=config.intermediate_size,
        num_heads=config.num_attention_heads,
        max_len=config.max_position_embeddings,
        causal=False,
        pre_norm=False,
        pool="first",
        type_vocab_size=config.type_vocab_size,
        act=our_act(config.hidden_act, f"{file}: config"),
        ln_eps=config.layer_norm_eps,
        dtype=dtype,
    )
    variables = assemble(tensors, arrays)
    ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    check_tree(tower, variables, ids)
    if not mlm_head:
        return tower, variables
    if decoder and not np.array_equal(
        arrays[BERT_MLM_HEAD[1]], arrays[f"{prefix}embeddings.word_embeddings.weight"]
    ):
        raise DataError(f"{path}: {BERT_MLM_HEAD[1]} is not tied to the word embeddings")
    model = MaskedLanguageModel(tower.clone(pool="none"), dtype=dtype)
    params = {"text": variables["params"], **assemble(head, arrays)["params"]}
    if head:
        check_tree(model, {"params": params}, ids, jnp.ones_like(ids))
    return model, {"params": params}
