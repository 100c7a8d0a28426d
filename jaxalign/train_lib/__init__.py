"""Training machinery shared by every task: optimizer, train state, the sharded train step, the
loop, checkpoints, transfer from a saved run, metric writers, throughput, preemption."""

from jaxalign.train_lib.optim import decay_mask, make_optimizer
from jaxalign.train_lib.state import TrainState
from jaxalign.train_lib.step import make_train_step

__all__ = ["TrainState", "decay_mask", "make_optimizer", "make_train_step"]
