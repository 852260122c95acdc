"""A streamed answer that owns what it holds: the upstream response, the breaker permit, the
model's in-flight count.

`Upstreams.call` returns one once the first chunk has arrived (before that, a failure retries
and falls back like a whole answer). From then on the stream itself records the model's verdict
and ends its load::

    async with result:                      # CallResult: closes result.stream on the way out
        stream = result.stream
        send(stream.first_chunk)
        async for chunk in stream:          # raises UpstreamError when the stream breaks or stalls
            send(chunk)

- A stream that breaks (``stream_broken``, ``timeout``, …) raises `UpstreamError` from the
  iteration; the failure is reported and counted against the model's breaker right there.
- `aclose()` (idempotent) closes the upstream response (the connection goes back to the pool
  after ``[DONE]``, is closed otherwise), gives the breaker its verdict (success, through
  `on_success`, which reports a half-open trial that closed the circuit, unless the stream
  raised an `UpstreamError`; none if it raised an unexpected exception, which says
  nothing about the model), frees a half-open trial and ends the in-flight count with the
  stream's duration. A consumer that stops early (client disconnect) still closes it: the model
  was answering, so that is a success.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from sigroute.gateway.upstream.breaker import Permit
from sigroute.gateway.upstream.errors import UpstreamError
from sigroute.gateway.upstream.load import CountedCall

__all__ = ["UpstreamStream"]


class UpstreamStream:
    """The chunks of a committed stream after the first; close it to release what it holds."""

    def __init__(self, model: str, first_chunk: dict[str, Any], chunks: AsyncIterator[dict[str, Any]],
                 permit: Permit, counted: CountedCall, on_error: Callable[[UpstreamError, Permit], None],
                 on_success: Callable[[str, Permit], None] | None = None):
        self.model = model
        self.first_chunk = first_chunk
        self.finished = False  # the upstream completed the answer ([DONE] / a finish reason)
        self.error: UpstreamError | None = None  # what broke the stream, if something did
        self._chunks = chunks
        self._permit = permit
        self._counted = counted
        self._on_error = on_error  # reports the failure and counts it against the model
        self._on_success = on_success  # gives the permit its success (and reports a closed circuit)
        self._crashed = False  # an unexpected exception came out of the transport
        self._closed = False

    def __aiter__(self) -> "UpstreamStream":
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise
        except UpstreamError as error:
            error.model = self.model
            if self.error is None:
                self.error = error
                self._on_error(error, self._permit)
            raise
        except Exception:
            self._crashed = True
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Close the upstream response, give the verdict, free the trial, end the in-flight count."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._chunks.aclose()  # the transport's generator closes its response
        finally:
            if self.error is None and not self._crashed:
                if self._on_success is not None:
                    self._on_success(self.model, self._permit)
                else:
                    self._permit.succeeded()
            self._permit.release()
            self._counted.succeeded()  # a stream's duration counts, however it ended
            self._counted.end()

    async def __aenter__(self) -> "UpstreamStream":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "finished" if self.finished else "broken" if self.error else "open"
        return f"<UpstreamStream {self.model} {state}>"
