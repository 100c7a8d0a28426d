"""jaxalign: representation learning over the global batch, from one device to a pod.

Subpackages: ``parallel`` (meshes and per-shard collectives), ``objectives`` (contrastive and
domain losses whose value and gradients do not depend on the device count), ``models``,
``data``, ``tasks`` (one per training objective, all in one loop), ``train_lib``, ``evals``,
``interop`` (Hugging Face checkpoints and tokenizers).
"""

import os

# transformers prints advice at import ("PyTorch was not found ...") that does not concern us:
# jaxalign uses it for tokenizers and configs only. A user's own setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
