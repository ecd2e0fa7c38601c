"""Watching connection events with resume: `ResumableWatch`.

`ConnectionService.WatchConnectionEvents` streams the events of the caller's connections, each
message with the `change_token` to resume after it (heartbeats carry one too, and no event). A
stream can end at any time: the server stops (`UNAVAILABLE`), the client read too slowly
(`ABORTED` / `ERROR_REASON_WATCH_CONSUMER_TOO_SLOW`), or the connection drops. `ResumableWatch`
hides that: it opens the stream, remembers the token of every message it receives, and after an
interruption opens a new stream with `after_change_token` set to that token, with exponential
backoff. Since the server sends every event after a token exactly once, in the change log's
order, the events it yields are each connection's events in order, none twice and none missed.

    with grpc.insecure_channel(target) as channel:
        stub = connection_service_pb2_grpc.ConnectionServiceStub(channel)
        with ResumableWatch(stub, metadata=auth(key), after_change_token=checkpoint) as watch:
            for message in watch:
                handle(message.event)
                checkpoint = message.change_token   # persist it to resume after a restart

`watch.last_change_token` is the token of the last message received, heartbeats included: save
it (rather than the last event's) to resume without re-reading a long quiet stretch. Other
errors (`UNAUTHENTICATED`, `INVALID_ARGUMENT` for a bad token, `RESOURCE_EXHAUSTED` for too many
streams, ...) describe the request, not the moment, and are raised to the caller.
"""

import random
import threading
import time

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from connections.v1 import connection_service_pb2 as cs
from connections.v1 import resources_pb2 as res

#: Codes after which the stream is opened again from the last token.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
#: Codes that mean the connection dropped when the server sent no status of its own (no
#: google.rpc.ErrorInfo): every status the server sends carries one.
DROPPED_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def _has_error_info(err):
    try:
        status = rpc_status.from_call(err)
    except (AttributeError, ValueError):
        return False
    return bool(status) and any(
        d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in status.details)


def is_resumable(err):
    """Whether a watch that failed with `err` should be resumed from its last token."""
    code = err.code() if hasattr(err, "code") else None
    return code in RESUMABLE_CODES or (code in DROPPED_CODES and not _has_error_info(err))


class ResumableWatch:
    """Iterates over the caller's connection events, resuming after every interruption.

    stub: a `ConnectionServiceStub`. metadata: the caller's credentials, e.g.
    `(("authorization", f"Bearer {key}"),)`.

    Where the first stream starts, as in `WatchConnectionEventsRequest`: after
    `after_change_token` (from a write's response, or a token saved from an earlier watch); else
    from the first event if `from_beginning`; else from now. `role` keeps only the connections
    where the caller is the source or the destination. Once a message has arrived, every later
    stream starts after the last token received. (A watch "from now" has no token until its
    first message: if that first stream breaks, the next one starts from its own "now".)

    Iterating yields `WatchConnectionEventsResponse` messages (`.event`, `.change_token`): only
    those with an event, unless `heartbeats` is true. Iterate once; a stopped watch yields
    nothing more.

    idle_timeout: seconds to wait for the next message before treating the stream as dead and
    opening another (the server sends a heartbeat at least every 15 s by default); None waits
    forever. Backoff between attempts: `initial_backoff` seconds, doubling up to `max_backoff`,
    with jitter, and back to `initial_backoff` once a message arrives. `max_attempts`: failed
    attempts in a row before the last error is raised; None retries forever. `on_resume(err,
    delay)`, if given, is called before each new attempt with the error that ended the
    previous one (None when it ended without one).

    `close()` (from any thread, or by leaving a `with` block) cancels the stream in progress
    and ends the iteration.
    """

    def __init__(self, stub, metadata=(), *, after_change_token="", from_beginning=False,
                 role=res.CONNECTION_ROLE_UNSPECIFIED, heartbeats=False, idle_timeout=60.0,
                 initial_backoff=0.2, max_backoff=10.0, max_attempts=None, on_resume=None):
        self._stub = stub
        self._metadata = tuple(metadata)
        self._from_beginning = from_beginning
        self._role = role
        self._heartbeats = heartbeats
        self._idle_timeout = idle_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self._on_resume = on_resume
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        #: The change token of the last message received (event or heartbeat): where the next
        #: stream starts. Empty until then, unless `after_change_token` was given.
        self.last_change_token = after_change_token
        #: How many times a stream was opened again after an interruption.
        self.resumes = 0

    def request(self):
        """The request the next stream is opened with."""
        if self.last_change_token:
            return cs.WatchConnectionEventsRequest(after_change_token=self.last_change_token,
                                                   role=self._role)
        return cs.WatchConnectionEventsRequest(from_beginning=self._from_beginning,
                                               role=self._role)

    def close(self):
        """Stops the watch: cancels the stream in progress; the iteration ends. Idempotent."""
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    @property
    def closed(self):
        return self._closed.is_set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        failures = 0
        while not self._closed.is_set():
            call = self._stub.WatchConnectionEvents(self.request(), metadata=self._metadata)
            with self._lock:
                self._call = call
            if self._closed.is_set():  # closed while the call was being opened
                call.cancel()
            watchdog = _Watchdog(call, self._idle_timeout)
            error = None
            try:
                messages = iter(call)
                while True:
                    watchdog.waiting()
                    try:
                        message = next(messages)
                    except StopIteration:
                        break  # ended without a status error: the stream dropped; resume
                    finally:
                        watchdog.not_waiting()
                    failures = 0
                    self.last_change_token = message.change_token
                    if self._heartbeats or message.HasField("event"):
                        yield message
            except grpc.RpcError as err:
                if self._closed.is_set():
                    return
                if not (watchdog.fired or is_resumable(err)):
                    raise
                error = err
            finally:
                watchdog.stop()
                call.cancel()  # ends the stream if the consumer stopped iterating early
                with self._lock:
                    self._call = None
            if self._closed.is_set():
                return
            failures += 1
            if self._max_attempts is not None and failures >= self._max_attempts:
                if error is not None:
                    raise error
                raise RuntimeError(f"WatchConnectionEvents ended {failures} times in a row")
            delay = self._backoff(failures)
            if self._on_resume is not None:
                self._on_resume(error, delay)
            self.resumes += 1
            if self._closed.wait(delay):
                return

    def _backoff(self, failures):
        ceiling = min(self._max_backoff, self._initial_backoff * 2 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class _Watchdog:
    """Cancels `call` when a message is awaited for longer than `timeout` seconds."""

    def __init__(self, call, timeout):
        self.fired = False
        self._call = call
        self._timeout = timeout
        self._since = None
        self._stopped = threading.Event()
        self._thread = None
        if timeout is not None:
            self._thread = threading.Thread(target=self._run, name="watch-idle-timeout",
                                            daemon=True)
            self._thread.start()

    def waiting(self):
        self._since = time.monotonic()

    def not_waiting(self):
        self._since = None

    def stop(self):
        self._stopped.set()

    def _run(self):
        tick = min(1.0, self._timeout / 4)
        while not self._stopped.wait(tick):
            since = self._since
            if since is not None and time.monotonic() - since > self._timeout:
                self.fired = True
                self._call.cancel()
                return
