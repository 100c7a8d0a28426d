"""jaxalign: representation learning over the global batch, from one device to a pod.

Subpackages: ``parallel`` (meshes and per-shard collectives), ``objectives`` (contrastive and
domain losses whose value and gradients do not depend on the device count).
"""

__version__ = "0.1.0"
