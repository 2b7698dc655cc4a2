"""What one request, and all requests at once, may cost: images, pixels to decode, body bytes (the `--max-*` options).

A request over its own limits gets 413 before its work is done: too many images (`--max-batch-images`),
encoded images declaring too many pixels in all (`--max-decoded-pixels`), a body too long
(`--max-body-bytes`, in `shared.read_body`). Work in flight is counted in images and in body bytes, not
in requests: a request is admitted when its own work fits beside what is in flight, else it gets 503 with
Retry-After at once, so a refused client holds no memory while it waits. The last sixteenth of each cap
is kept for small requests (a sixteenth of that or less), so however many large requests arrive, a small
one still finds room.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from pipeline.serving.errors import PayloadTooLarge, ServiceUnavailable

# What a 503 tells the client to wait: work in flight is answered within milliseconds to a second.
RETRY_AFTER_SECONDS = 1
# A 503 is answered after this pause: a client ignoring Retry-After would otherwise resend at once, and a
# storm of refused 4 MiB uploads took the CPU from the requests admitted (bench/serve_load.py --abuse: the
# ordinary client's p99 94 ms without it, 22 ms with it). Its connection waits, its body unread (no memory).
BUSY_PAUSE_SECONDS = 0.25
# The last 1/16 of a cap is kept for small requests, those of at most 1/16 of that (1/256 of the cap): the
# others fill 15/16 at most. ("Small" as under 1/16 of the cap let 16 bodies just under 4 MiB fill 64 MiB.)
RESERVED_FRACTION = 16


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (checked while its body is parsed, before the work)."""

    max_images: int  # images in one request (--max-batch-images)
    max_decoded_pixels: int  # pixels its encoded images declare, all together (--max-decoded-pixels)


class RequestBudget:
    """What one request may still ask for: made per request, spent as its body is parsed, before any decoding."""

    def __init__(self, limits: RequestLimits):
        self.limits, self.pixels = limits, 0

    def count_images(self, num_images: int) -> None:
        """Refuse a request of more than `limits.max_images` images.

        Raises:
            PayloadTooLarge: too many images.
        """
        if num_images > self.limits.max_images:
            raise PayloadTooLarge(f"{num_images} images in one request; this server takes at most "
                                  f"{self.limits.max_images} (--max-batch-images): send them in several requests")

    def spend_pixels(self, num_pixels: int, where: str) -> None:
        """Count an encoded image's declared pixels (width x height), read from its header.

        Raises:
            PayloadTooLarge: the request's images, this one included, declare more than the limit.
        """
        self.pixels += num_pixels
        if self.pixels > self.limits.max_decoded_pixels:
            raise PayloadTooLarge(f"{where}: the request's images declare {self.pixels} pixels up to here, over "
                                  f"this server's {self.limits.max_decoded_pixels} per request "
                                  "(--max-decoded-pixels); send smaller images or fewer per request (the model "
                                  "resizes to its own size anyway)")


class Admission:
    """Work in flight (images, body bytes) under a cap: work that fits is admitted, the rest refused with 503.

    A small request (at most 1/RESERVED_FRACTION of the reserve) may fill the cap; a larger one only up to
    the reserve, its last 1/RESERVED_FRACTION. Used on the event loop only, so the count needs no lock.
    """

    def __init__(self, capacity: int, unit: str, option: str):
        """
        Args:
            capacity: the most work in flight at once; a request needing more alone is never admitted.
            unit: what is counted, for the message ("images", "body bytes").
            option: the command-line option that sets `capacity`, for the message.
        """
        self.capacity, self.unit, self.option = capacity, unit, option
        self.reserved = capacity // RESERVED_FRACTION  # the last of the cap, kept for small requests
        self.small = self.reserved // RESERVED_FRACTION  # the most a small request needs
        self.in_flight = 0

    def room_for(self, amount: int) -> int:
        """How much a request of `amount` may find in flight, its own included."""
        return self.capacity if amount <= self.small else self.capacity - self.reserved

    @contextlib.contextmanager
    def admitted(self, amount: int) -> Iterator[None]:
        """`amount` counted as in flight for the block.

        Raises:
            ServiceUnavailable: `amount` does not fit beside the work in flight now.
        """
        if self.in_flight + amount > self.room_for(amount):
            kept = (f", the last {self.reserved} kept for requests of {self.small} or fewer"
                    if self.in_flight + amount <= self.capacity else "")
            raise ServiceUnavailable(f"the server is busy: {self.in_flight} {self.unit} in flight, no room for this "
                                     f"request's {amount} ({self.option} {self.capacity}{kept}); retry after "
                                     f"{RETRY_AFTER_SECONDS} s", RETRY_AFTER_SECONDS)
        self.in_flight += amount
        try:
            yield
        finally:
            self.in_flight -= amount
