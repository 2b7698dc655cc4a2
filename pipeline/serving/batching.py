"""Running a model for a request: on a worker thread, alone or merged with concurrent requests (dynamic batching).

Off by default (`--batch-window-ms 0`): each request is one model call on a worker thread, and ONNX
Runtime runs concurrent calls on both cores. With a window, the first request for a model version opens
a batch, the requests arriving within the window join it, and one call answers them all, as TF Serving's
`batch_timeout_micros` and Triton's `max_queue_delay_microseconds` do. Whether that pays is measured by
`bench/serve_load.py` (the README's "Serving"). Either way a model call takes at most `max_images`
images: a larger request or batch is run in chunks of it, one after another, so memory stays bounded
whatever clients send (`--max-call-images`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from components.loaded_model import LoadedModel, check_pixels

# The most images of one model call (ServeSettings.max_call_images); a batch is closed once it holds as many.
MAX_CALL_IMAGES = 256


@dataclass
class _Batch:
    """Requests waiting for one model call: their pixels in order, and the call's result for all of them."""

    model: LoadedModel
    parts: list[np.ndarray] = field(default_factory=list)
    num_images: int = 0
    result: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    closed: bool = False


class Batcher:
    """Probabilities for a request's pixels, one model call per request or per window of requests."""

    def __init__(self, window_seconds: float = 0.0, max_images: int = MAX_CALL_IMAGES):
        """
        Args:
            window_seconds: how long a batch waits for more requests after its first; 0 turns batching off.
            max_images: the most images of one model call; a batch closes as soon as it holds this many, and
                a request of more runs alone, in chunks of this many.
        """
        self.window_seconds, self.max_images = window_seconds, max_images
        self._open: dict[int, _Batch] = {}  # id(model) -> the batch requests for that version join
        self._running: set[asyncio.Task] = set()  # held so that the event loop does not drop a running call

    async def probabilities(self, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] for `pixels` [N, height, width, channels].

        Raises:
            UserError: pixels the model refuses (checked before joining a batch, so a bad request fails alone).
        """
        # alone on a worker thread: batching off, a large request, or not 4-d (the model refuses it there)
        if self.window_seconds <= 0 or pixels.ndim != 4 or len(pixels) >= self.max_images:
            return await run_in_threadpool(chunked_probabilities, model, pixels, self.max_images)
        check_pixels(pixels, model.input)
        batch = self._batch_for(model)
        start = batch.num_images
        batch.parts.append(pixels)
        batch.num_images += len(pixels)
        if batch.num_images >= self.max_images:
            self._close(batch)
        # shield: a client that disconnects cancels its own wait, not the call the others wait for
        return (await asyncio.shield(batch.result))[start:start + len(pixels)]

    def _batch_for(self, model: LoadedModel) -> _Batch:
        """The open batch for `model`, or a new one that closes when the window ends."""
        batch = self._open.get(id(model))
        if batch is None:
            batch = self._open[id(model)] = _Batch(model)
            asyncio.get_running_loop().call_later(self.window_seconds, self._close, batch)
        return batch

    def _close(self, batch: _Batch) -> None:
        """Stop `batch` taking requests and start its model call (a second close does nothing)."""
        if batch.closed:
            return
        batch.closed = True
        if self._open.get(id(batch.model)) is batch:
            del self._open[id(batch.model)]
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: _Batch) -> None:
        """One model call for every request of `batch`; its result or error goes to all of them."""
        try:
            pixels = np.concatenate(batch.parts)
            batch.result.set_result(await run_in_threadpool(chunked_probabilities, batch.model, pixels,
                                                            self.max_images))
        except Exception as error:  # noqa: BLE001 - handed to every waiting request, which raises it
            batch.result.set_exception(error)


def chunked_probabilities(model: LoadedModel, pixels: np.ndarray, max_images: int) -> np.ndarray:
    """`model.probabilities(pixels)`, computed at most `max_images` images at a time, so a call's memory does not
    grow with the request (the model scores each image on its own: the rows are those of one call)."""
    if pixels.ndim != 4 or len(pixels) <= max_images:  # not [N, height, width, channels]: the model refuses it
        return model.probabilities(pixels)
    return np.concatenate([model.probabilities(pixels[start:start + max_images])
                           for start in range(0, len(pixels), max_images)])
