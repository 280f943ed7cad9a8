"""Training a model: the loop and what it holds, one job a file.

    loop.py        Trainer: updates until a bound, with validation, logging and checkpoints at their intervals
    loss.py        the label-smoothed cross-entropy, chunked, its gradients made on the spot
    optim.py       AdamW fused, the schedule, the step with clipping, the moving average, the bf16 twin
    state.py       the progress and resumable state of a run, saved in the background, restored exactly
    stream.py      each rank's batches from the run's position on, collated ahead
    metrics.py     metrics.jsonl and the training figures of the progress bar
    validation.py  validation loss and BLEU, the best weights, early stopping's count
    compiling.py   torch.compile: when, with dynamic shapes, compiled on a fixed batch
    bounds.py      when to stop: steps, epochs, minutes, early stopping
    interrupt.py   Ctrl-C: stop after the update and save there

Training imports neither decoding nor scoring: validation BLEU is a callable the caller passes.
"""

from nmt.train.compiling import compile_model, compiles
from nmt.train.interrupt import INTERRUPTED
from nmt.train.loop import Trainer, Update
from nmt.train.loss import label_smoothed_loss
from nmt.train.optim import inverse_sqrt
from nmt.train.state import Progress, RunState
from nmt.train.stream import collate_group
from nmt.train.validation import ValidSet

__all__ = ["INTERRUPTED", "Progress", "RunState", "Trainer", "Update", "ValidSet", "collate_group", "compile_model",
           "compiles", "inverse_sqrt", "label_smoothed_loss"]
