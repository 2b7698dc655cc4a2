"""Profiling: mark each profiled training batch as a step, so TensorBoard's Profile tab can time steps."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


class StepMarkedTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback, with each profiled batch marked as a training step for the profiler.

    The Profile tab (xprof) finds steps by "step markers": host trace events named `train...` with
    a `step_num` and `_r=1` (a root, which the ops run inside it are grouped under). Keras 2 wrapped
    every batch in `tf.profiler.experimental.Trace("train", step_num=..., _r=1)`. Keras 3.15's
    callback wraps a profiled batch in a `Trace` without `_r`, so the Overview says "No step marker
    observed" and every step time is 0 ms; this adds the Keras 2 marker inside it.

    A subclass rather than a callback beside TensorBoard, because the marker has to open after the
    profiler and Keras's own event start and close before they end. A separate callback listed
    before TensorBoard marks no step at all (its events overlap Keras's instead of nesting in them);
    listed after it, it loses the last profiled batch, whose end comes after the profiler stopped.

    Keras calls the batch callbacks once per execution, so a marker spans one execution and its
    `step_num` is the number of optimizer steps taken before it. Under `steps_per_execution > 1`
    an execution is a `tf.while_loop`, and xprof 2.24 then groups by the loop's iterations and
    ignores host markers: the Overview has no step time again, though the Trace viewer shows each
    execution as a `train` event. So profile with `steps_per_execution=1`, where one marked step is
    one training step. Outside the profiled batches this costs one comparison a batch.
    """

    def __init__(self, log_dir: str, profile_batch: int | tuple[int, int] = 0, **kwargs):
        """The callback of `keras.callbacks.TensorBoard(log_dir, profile_batch=profile_batch, **kwargs)`.

        Args:
            log_dir: the TensorBoard folder; the profile goes to `train/plugins/profile/` in it.
            profile_batch: the one batch, or the (first, last) batches, to profile and mark, counted
                from 1 across epochs; 0 = no profile.
            **kwargs: the other arguments of `keras.callbacks.TensorBoard`.
        """
        super().__init__(log_dir=log_dir, profile_batch=profile_batch, **kwargs)
        first, last = (profile_batch, profile_batch) if isinstance(profile_batch, int) else profile_batch
        # Batch 0 does not exist, so profile_batch=0 (no profile) marks nothing.
        self._marked_batches = range(max(first, 1), last + 1)
        self._batches_begun = 0  # counted as Keras's callback counts them: from 1, across epochs
        self._step_marker: tf.profiler.experimental.Trace | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self._batches_begun = 0
        if self._marked_batches and self.model.steps_per_execution > 1:
            log.warning("profiling with steps_per_execution=%d: TensorBoard's Profile tab will show no step "
                        "time (xprof ignores step markers around a tf.while_loop); compile with "
                        "steps_per_execution=1 to profile steps", self.model.steps_per_execution)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_begin(batch, logs)  # starts the profiler on the first profiled batch
        self._batches_begun += 1
        if self._batches_begun in self._marked_batches:
            step = int(self.model.optimizer.iterations.numpy())
            self._step_marker = tf.profiler.experimental.Trace("train", step_num=step, _r=1)
            self._step_marker.__enter__()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._step_marker is not None:
            self._step_marker.__exit__(None, None, None)
            self._step_marker = None
        super().on_train_batch_end(batch, logs)  # stops the profiler after the last profiled batch
