"""Masked language modelling (BERT; ``config.task="mlm"``): a bidirectional text tower learns to
recover the tokens BERT's rule hid. Keys and presets: ``configs/mlm.py``.

Batches are ``{"ids": [B, L] int32, "mask": [B, L] int32}`` (1 on real tokens), batch over
(``data``, ``fsdp``): captions of a built-in dataset's split (``data.text_key``; one drawn at
random when a record has several) or the lines of local text files (``data.source=
"text_files"``, ``data.train_split`` a glob), tokenised by the built-in caption tokenizer or a
local Hugging Face tokenizer (``data.tokenizer``).

Loss: ``objectives.masking.bert_mask`` chooses ``round(objective.mask_ratio * m)`` of each
sequence's ``m`` maskable tokens (neither special nor padding: the tokenizer's special ids are
never chosen) with the step's key, so each example's choice is fixed by ``(seed, step, example
index)``; 80% of them become the tokenizer's mask token, 10% a random token, 10% stay. The loss
is the cross-entropy summed over the chosen tokens of the global batch over their global count.

Evals on ``evals.split`` (its first ``evals.max_examples``): masked-token accuracy and
perplexity (``exp`` of the mean cross-entropy) over the chosen tokens, each example's choice
drawn from ``fold_in(key(seed), EVAL_KEY)`` and its index in the split (the same at every eval);
and, on the same tokens, the accuracy of always predicting the training text's most frequent
maskable token (``majority_accuracy``, counted over the first ``MAJORITY_EXAMPLES`` training
examples): the baseline the model must beat.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxalign import evals, models
from jaxalign.data import TextTokenizer, make_pipeline
from jaxalign.data.text import TextLinesSource, TextTransform
from jaxalign.objectives.masking import bert_mask
from jaxalign.objectives.reconstruction import masked_token_cross_entropy
from jaxalign.schema import ConfigError, Count, Group, ModuleFields, PositiveInt, Unit
from jaxalign.tasks import images
from jaxalign.tasks.base import Task, register_task

EVAL_KEY = 2**31 - 2
# The tower's fields a BERT checkpoint fixes (model.text must agree; the rest come from the data).
BERT_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "pre_norm", "type_vocab_size", "act",
               "ln_eps")  # fmt: skip
MAJORITY_EXAMPLES = 2000


class MLMModel(Group):
    dtype: images.Dtype
    remat: images.Remat
    init_from_bert: str
    text: Annotated[
        dict[str, Any],
        ModuleFields(
            (("jaxalign.models.text", "TextTransformer"),),
            {
                "dtype": "model.dtype",
                "remat": "model.remat",
                "max_len": "data.max_len",
                "vocab_size": "data.tokenizer",
                "pool": "the task (pool='none')",
            },
        ),
    ]


class MLMData(Group):
    source: Literal["builtin", "text_files"]
    name: str
    data_dir: str
    train_split: str
    text_key: str
    tokenizer: str
    max_len: PositiveInt
    worker_count: Count
    prefetch: Count
    max_skipped_in_a_row: PositiveInt

    def rules(self) -> list[str]:
        problems = images.dataset_problems(self) if self.source == "builtin" else []
        if self.source == "text_files" and not self.tokenizer:
            problems.append("tokenizer='': data.source='text_files' needs a tokenizer directory")
        return problems


class MLMObjective(Group):
    mask_ratio: Unit


class MLMEvals(Group):
    split: str
    batch_size: PositiveInt
    max_examples: Count


class MLMConfig(images.ImageTaskConfig):
    """The MLM task's config (keys documented in ``configs/mlm.py``)."""

    task: Literal["mlm"]
    model: MLMModel
    data: MLMData
    objective: MLMObjective
    evals: MLMEvals

    def rules(self) -> list[str]:
        problems = []
        if self.optim.micro_batches != 1:
            problems.append(f"optim.micro_batches={self.optim.micro_batches}: set it to 1")
        if self.model.text.get("causal", True):
            problems.append("model.text.causal: must be False (a bidirectional tower)")
        return problems

    def check_data(self) -> None:
        if self.data.source == "builtin":
            images.check_dataset_on_disk(self.data)


@register_task
class MLMTask(Task):
    """See the module docstring."""

    name = "mlm"
    Config = MLMConfig

    def __init__(self, config: MLMConfig, mesh: Mesh):
        self.config, self.mesh = config, mesh
        self.dataset = images.ImageDataset(config.data)

    # --- data ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Builds the built-in dataset and tokenizer if needed; opens both splits and the
        tokenizer (ConfigError naming the key when one is missing or has no mask token)."""
        if self.config.data.source == "builtin" and not self.config.data.tokenizer:
            from jaxalign.data import builtin

            self.dataset.prepare(lambda: builtin.build_caption_tokenizer(self.dataset.data_dir))
        else:
            self.dataset.prepare()
        self.source(self.config.data.train_split, key="data.train_split")
        self.source(self.config.evals.split, key="evals.split")
        if self.hf_tokenizer.mask_token_id is None:
            raise ConfigError(
                f"config.data.tokenizer={self.config.data.tokenizer!r}: no mask token"
            )

    def source(self, split: str, *, key: str, limit: int = 0) -> Any:
        if self.config.data.source == "text_files":
            source = TextLinesSource(split)
            if limit:
                from jaxalign.data import Subset

                source = Subset(source, range(min(limit, len(source))))
            return source
        return self.dataset.source(split, key=key, limit=limit)

    @functools.cached_property
    def hf_tokenizer(self) -> Any:
        from jaxalign.interop import hf

        path = self.config.data.tokenizer
        if not path:
            from jaxalign.data.builtin import TOKENIZER_DIRNAME

            path = os.path.join(self.dataset.data_dir, TOKENIZER_DIRNAME)
        return hf.load_tokenizer(os.path.expanduser(path))

    @functools.cached_property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.hf_tokenizer, self.config.data.max_len)

    def transform(self) -> TextTransform:
        return TextTransform(self.tokenizer, self.config.data.text_key)

    def train_stream(self) -> Any:
        data = self.config.data
        return make_pipeline(
            self.source(data.train_split, key="data.train_split"),
            seed=self.config.seed,
            global_batch_size=self.config.train.global_batch_size,
            transform=self.transform(),
            worker_count=data.worker_count,
            prefetch=data.prefetch,
            max_skipped_in_a_row=data.max_skipped_in_a_row,
        )

    # --- model ----------------------------------------------------------------------------------

    @functools.cached_property
    def model(self) -> models.MaskedLanguageModel:
        m = self.config.model
        text = models.TextTransformer(
            **dict(m.text),
            vocab_size=len(self.hf_tokenizer),
            max_len=self.config.data.max_len,
            pool="none",
            remat=m.remat,
            dtype=images.DTYPES[m.dtype],
        )
        return models.MaskedLanguageModel(text, dtype=images.DTYPES[m.dtype])

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (self.config.train.global_batch_size, self.config.data.max_len)
        return {
            "ids": jax.ShapeDtypeStruct(shape, jnp.int32),
            "mask": jax.ShapeDtypeStruct(shape, jnp.int32),
        }

    def init(self, rng: jax.Array) -> Any:
        ids = jnp.zeros((1, self.config.data.max_len), jnp.int32)
        return self.model.init(rng, ids, jnp.ones_like(ids))

    def load_pretrained(self, params: Any) -> tuple[Any, str]:
        """With ``model.init_from_bert`` (a local Hugging Face BERT directory): its tower, and
        its masked-LM head where it has one, in place of the initial values (position
        embeddings cut to ``data.max_len``). ConfigError naming the key when the checkpoint's
        architecture, vocabulary or length differs from the config's."""
        path = self.config.model.init_from_bert
        if not path:
            return params, ""
        from jaxalign.interop import hf

        loaded, variables = hf.load_bert_mlm(os.path.expanduser(path))
        ours, theirs = self.model.text, loaded.text
        where = f"config.model.init_from_bert={path!r}"
        for field in BERT_FIELDS:
            if getattr(ours, field) != getattr(theirs, field):
                raise ConfigError(
                    f"{where} has {field}={getattr(theirs, field)!r}; set "
                    f"model.text.{field}={getattr(theirs, field)!r} (now {getattr(ours, field)!r})"
                )
        if theirs.vocab_size != ours.vocab_size:
            raise ConfigError(
                f"{where} has a vocabulary of {theirs.vocab_size}, data.tokenizer="
                f"{self.config.data.tokenizer!r} one of {ours.vocab_size}: use its tokenizer"
            )
        if ours.max_len > theirs.max_len:
            raise ConfigError(
                f"{where} has {theirs.max_len} positions; data.max_len={ours.max_len} is longer"
            )
        text = dict(variables["params"]["text"])
        text["pos_embedding"] = text["pos_embedding"][: ours.max_len]
        new = {**params, **variables["params"], "text": text}  # the head where it has one
        shapes = [jax.tree.map(np.shape, tree) for tree in (params, new)]
        if shapes[0] != shapes[1]:
            raise ValueError(f"{where}: loaded parameters do not match the model's tree")
        head = "and its masked-LM head" if "mlm_head" in variables["params"] else "(no MLM head)"
        count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
        return new, f"model.init_from_bert {path}: the tower {head}, {count:,} parameters"

    def corrupt(self, rng: jax.Array, batch: dict[str, jax.Array], indices=None):
        """``(inputs [b, L], chosen [b, L] bool)``: BERT's rule on ``batch["ids"]``."""
        ids = batch["ids"]
        special = jnp.asarray(sorted(set(self.hf_tokenizer.all_special_ids)), jnp.int32)
        maskable = (batch["mask"] > 0) & ~jnp.isin(ids, special)
        return bert_mask(
            rng,
            ids,
            maskable,
            mask_token_id=self.hf_tokenizer.mask_token_id,
            vocab_size=len(self.hf_tokenizer),
            ratio=self.config.objective.mask_ratio,
            indices=indices,
        )

    def loss(self, params, model_state, batch, rng, step):
        """Cross-entropy over the chosen tokens of the global batch; metrics: their accuracy."""
        del step
        inputs, chosen = self.corrupt(rng, batch)
        logits = self.model.apply(
            {"params": params},
            inputs,
            batch["mask"],
            False,
            rngs={"dropout": jax.random.fold_in(rng, 1)},
        )
        loss, accuracy = masked_token_cross_entropy(
            logits, batch["ids"], chosen.astype(jnp.float32), mesh=self.mesh
        )
        return loss, model_state, {"masked_accuracy": accuracy}

    # --- evals ----------------------------------------------------------------------------------

    @functools.cached_property
    def majority_token(self) -> int:
        """The most frequent maskable token of the first ``MAJORITY_EXAMPLES`` training texts."""
        source = self.source(
            self.config.data.train_split, key="data.train_split", limit=MAJORITY_EXAMPLES
        )
        special = set(self.hf_tokenizer.all_special_ids)
        counts: dict[int, int] = {}
        for i in range(len(source)):
            out = self.transform()(source[i], evals_key(self.config.seed, i))
            if isinstance(out, dict):
                for token in out["ids"][out["mask"] > 0]:
                    if int(token) not in special:
                        counts[int(token)] = counts.get(int(token), 0) + 1
        return max(counts, key=lambda t: (counts[t], -t))

    @functools.cached_property
    def _eval_fn(self):
        key = jax.random.fold_in(jax.random.key(self.config.seed), EVAL_KEY)
        majority = self.majority_token

        def score(variables, batch):
            inputs, chosen = self.corrupt(key, batch, indices=batch["index"])
            logits = self.model.apply(variables, inputs, batch["mask"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["ids"])
            weights = chosen.astype(jnp.float32)
            return {
                "ce": jnp.sum(ce * weights, axis=1),
                "correct": jnp.sum((jnp.argmax(logits, -1) == batch["ids"]) * weights, axis=1),
                "majority": jnp.sum((batch["ids"] == majority) * weights, axis=1),
                "chosen": jnp.sum(weights, axis=1),
            }

        return jax.jit(score)

    def evaluate(self, variables: Any, *, progress: bool = False) -> dict[str, float]:
        """``mlm/accuracy``, ``mlm/perplexity``, ``mlm/majority_accuracy`` (module docstring)."""
        ev = self.config.evals
        source = self.source(ev.split, key="evals.split", limit=ev.max_examples)
        pipeline = images.eval_pipeline(source, self.config, IndexedTextTransform(self.transform()))
        out = evals.embed_dataset(
            self._eval_fn,
            pipeline,
            self.mesh,
            global_batch_size=ev.batch_size,
            inputs=("ids", "mask", "index"),
            params=variables,
            progress=progress,
            desc="mlm eval",
        )
        chosen = float(np.sum(out["chosen"]))
        return {
            "mlm/accuracy": float(np.sum(out["correct"])) / chosen,
            "mlm/perplexity": float(np.exp(np.sum(out["ce"]) / chosen)),
            "mlm/majority_accuracy": float(np.sum(out["majority"])) / chosen,
            "mlm/chosen_tokens": chosen,
        }


def evals_key(seed: int, index: int) -> Any:
    from jaxalign.data import ExampleKey

    return ExampleKey(seed, 0, index)


class IndexedTextTransform:
    """A text transform that also returns the example's index in its source (``"index"``)."""

    def __init__(self, inner: TextTransform):
        self.inner = inner

    def __call__(self, record: Any, key: Any) -> Any:
        out = self.inner(record, key)
        return {**out, "index": np.int32(key.index)} if isinstance(out, dict) else out
