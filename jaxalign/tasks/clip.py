"""The CLIP / SigLIP task: a dual encoder trained with InfoNCE or the sigmoid loss over the
global batch.

Batches are ``{"image": [batch, S, S, 3] float32, "ids": [batch, L] int32, "mask": [batch, L]
int32}``, batch over (``data``, ``fsdp``). The loss's ``impl`` (naive, tiled, ring) and
cached-gradient accumulation (``optim.micro_batches > 1``) come from the config.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign import models, objectives

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ClipTask:
    """Model, loss and batch layout of CLIP-style training (see the module docstring)."""

    name = "clip"

    def __init__(self, config: Any):
        self.config = config
        model = config.model
        dtype = DTYPES[model.dtype]
        tower = dict(dtype=dtype, remat=model.remat)
        dual: dict[str, Any] = {"logit_scale_init": float(model.logit_scale_init)}
        if model.logit_bias_init is not None:
            dual["logit_bias_init"] = float(model.logit_bias_init)
        self.model = models.build(
            model.preset,
            image={**tower, **dict(model.image)},
            text={**tower, "max_len": int(config.data.max_len), **dict(model.text)},
            **dual,
        )

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of zeros with the task's shapes and dtypes (for init and shardings)."""
        size, length = int(self.config.data.image_size), int(self.config.data.max_len)
        return {
            "image": np.zeros((batch_size, size, size, 3), np.float32),
            "ids": np.zeros((batch_size, length), np.int32),
            "mask": np.ones((batch_size, length), np.int32),
        }

    def init(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
        """Boxed variables (logical axis names kept, for ``sharded_init``)."""
        return self.model.init(rng, batch["image"], batch["ids"], batch["mask"])

    def embed(self, params: Any, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        """``([batch, embed], [batch, embed])`` unit image and text embeddings."""
        outputs, _ = self.model.apply(
            {"params": params}, batch["image"], batch["ids"], batch["mask"]
        )
        return outputs["image"], outputs["text"]

    def loss_on_embeddings(self, params: Any, embeddings: Any, mesh: Mesh | None) -> jax.Array:
        """The configured loss over the global batch of ``embeddings``."""
        image, text = embeddings
        objective = self.config.objective
        if objective.loss == "siglip":
            return objectives.siglip_loss(
                image,
                text,
                params["logit_scale"],
                params["logit_bias"],
                mesh=mesh,
                impl=objective.impl,
                tile=int(objective.tile),
            )
        return objectives.clip_loss(
            image,
            text,
            params["logit_scale"],
            mesh=mesh,
            impl=objective.impl,
            tile=int(objective.tile),
            label_smoothing=float(objective.label_smoothing),
        )

    def make_grad_fn(self, mesh: Mesh | None):
        """``grad_fn(params, batch) -> (loss, grads, metrics)`` for ``make_train_step``."""
        micro_batches = int(self.config.optim.micro_batches)

        def metrics_of(params):
            return {"logit_scale": jnp.exp(params["logit_scale"])}

        if micro_batches > 1:

            def grad_fn(params, batch):
                loss, grads = objectives.cached_gradient(
                    self.embed,
                    lambda p, e: self.loss_on_embeddings(p, e, mesh),
                    params,
                    batch,
                    num_microbatches=micro_batches,
                    mesh=mesh,
                )
                return loss, grads, metrics_of(params)

            return grad_fn

        def loss_fn(params, batch):
            return self.loss_on_embeddings(params, self.embed(params, batch), mesh)

        def grad_fn(params, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            return loss, grads, metrics_of(params)

        return grad_fn
