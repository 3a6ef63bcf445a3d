"""dynsys.train: train dynsys models from scratch, Pythia-style, with checkpoints through time.

`train(TrainConfig(model=...), train_tokens, heldout_tokens, out_dir)` creates or resumes a
training directory (see dynsys.train.loop); the pieces (schedule, optimizer, data order,
state, step) are pure functions of the config.
"""

from dynsys.train.config import NonFiniteLossError, TrainConfig, TrainError
from dynsys.train.data import batch_at, windows
from dynsys.train.log import read_log
from dynsys.train.loop import TrainSummary, train
from dynsys.train.optimizer import decay_mask, optimizer
from dynsys.train.schedule import checkpoint_steps, learning_rate
from dynsys.train.state import TrainState, init_state, latest_state, load_state, save_state
from dynsys.train.step import gradients, heldout_loss, loss, train_step

__all__ = [
    "NonFiniteLossError", "TrainConfig", "TrainError", "TrainState", "TrainSummary", "batch_at",
    "checkpoint_steps", "decay_mask", "gradients", "heldout_loss", "init_state",
    "latest_state", "learning_rate", "load_state", "loss", "optimizer", "read_log",
    "save_state", "train", "train_step", "windows",
]
