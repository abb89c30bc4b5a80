"""gRPC clients for the ``cxr_detector`` ensemble: :class:`DetectorClient` (blocking)
and :class:`AsyncDetectorClient` (asyncio).

Both take the same keyword-only options, validate them in the constructor, build
requests with the one shared :func:`~cxr.client.requests.build_request`, retry only
retryable failures (exponential backoff inside one overall deadline) and raise only
:class:`DetectorError`.  Example::

    from cxr.client import DetectorClient
    with DetectorClient(url="pacs-gw:8001", ssl=True, root_certificates="ca.pem") as client:
        result = client.predict("study.dcm", score_threshold=0.3)
        print(result.to_dict())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from cxr.client.errors import CONVERTIBLE, DetectorError, client_error, tls_hint, to_detector_error
from cxr.client.requests import PIXELS, ImageInput, ModelSpec, Request, build_request, parse_response, request_parameters
from cxr.client.results import StudyResult
from cxr.client.shm import local_region
from cxr.contract import ENSEMBLE, LOCAL_URL

__all__ = ["AsyncDetectorClient", "DetectorClient", "DetectorError"]

log = logging.getLogger("cxr.client")

# Studies of one predict_study call in flight at once: enough to fill the server's
# dynamic batcher (2 ms queue delay), few enough not to starve other PACS callers.
STUDY_CONCURRENCY = 4
# Below this much time left there is no point in another attempt.
_MIN_ATTEMPT_S = 0.05


class _ClientBase:
    """Options, validation, retry policy and result assembly shared by both clients."""

    def __init__(self, *, url: str = LOCAL_URL, model_name: str = ENSEMBLE, model_version: str = "",
                 timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 5.0,
                 ssl: bool = False,
                 root_certificates: str | os.PathLike | None = None, private_key: str | os.PathLike | None = None,
                 certificate_chain: str | os.PathLike | None = None, score_threshold: float | None = None,
                 iou_threshold: float | None = None, top_k: int | None = None,
                 use_shared_memory: bool = False) -> None:
        if not isinstance(url, str) or not url or "://" in url:
            raise client_error(f"url must be 'host:port' for gRPC (no scheme), got {url!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise client_error(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise client_error(f"retries must be an integer >= 0, got {retries!r}")
        if not (isinstance(backoff_s, (int, float)) and backoff_s >= 0):
            raise client_error(f"backoff_s must be >= 0 seconds, got {backoff_s!r}")
        if not (isinstance(max_backoff_s, (int, float)) and max_backoff_s > 0):
            raise client_error(f"max_backoff_s must be a positive number of seconds, got {max_backoff_s!r}")
        tls_files = {"root_certificates": root_certificates, "private_key": private_key,
                     "certificate_chain": certificate_chain}
        given = [k for k, v in tls_files.items() if v is not None]
        if given and not ssl:
            # tritonclient would silently ignore them and talk plaintext.
            raise client_error(f"{', '.join(given)} given but ssl=False; pass ssl=True to use TLS")
        if (private_key is None) != (certificate_chain is None):
            raise client_error("mutual TLS needs both private_key and certificate_chain (or neither)")
        for key in given:
            if not Path(tls_files[key]).is_file():
                raise client_error(f"{key} file not found: {tls_files[key]}")
        self.url, self.model_name, self.model_version = url, model_name, str(model_version)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), retries, float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.ssl = bool(ssl)
        self._tls = {k: (None if v is None else str(v)) for k, v in tls_files.items()}
        self._defaults = request_parameters(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k)
        self.use_shared_memory = bool(use_shared_memory)
        self._spec: ModelSpec | None = None  # read once from the server, on first use
        self._client = self._open()

    def _open(self) -> Any:
        """The tritonclient connection made at construction (None: made later)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model_name={self.model_name!r}, ssl={self.ssl})"

    def _connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for tritonclient's InferenceServerClient (sync and aio alike)."""
        # gRPC's own reconnect backoff grows to 120 s, and while it runs every call fails
        # at once: a client whose server was down would keep failing long after it is
        # back.  Cap it at the shortest possible last retry wait (half of the last step,
        # after jitter), so a server that is up before that wait starts is reached by the
        # last attempt.
        last_step = self.backoff_s * 2 ** max(self.retries - 1, 0) * 0.5
        longest_ms = int(max(0.1, min(last_step, self.max_backoff_s, self.timeout_s)) * 1000)
        keepalive = grpcclient.KeepAliveOptions()
        channel_args = [
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", min(1000, longest_ms)),
            ("grpc.min_reconnect_backoff_ms", min(1000, longest_ms)),
            ("grpc.max_reconnect_backoff_ms", longest_ms),
        ]
        return {"url": self.url, "ssl": self.ssl, **self._tls, "channel_args": channel_args}

    def _request(self, image: ImageInput, overrides: dict[str, float | int | None]) -> Request:
        """What both clients send: :func:`build_request` with ``overrides`` over the client's defaults."""
        request = build_request(image, **overrides)
        # Per-call values win over the client's defaults; bits_stored etc. come from the input.
        merged = {**self._defaults, **request.parameters}
        return Request(request.inputs, merged, request.image_size, request.sop_instance_uid, request.source)

    def _deadline(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            timeout_s = self.timeout_s
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise client_error(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        return time.monotonic() + float(timeout_s)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.001)

    def _retry_delay(self, err: DetectorError, attempt: int, started: float, deadline: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up now.

        Giving up on a retryable failure records why in ``err.gave_up``, so the caller
        sees "the server stayed down for the whole deadline", not only the last error,
        and, when the failure looks like a refused TLS handshake, what is probably
        misconfigured in ``err.hint``.
        """
        err.attempts = attempt
        if not err.retryable:
            return None
        # Half to all of the exponential step (at most max_backoff_s, so a client is back
        # within seconds of the server): clients failed by the same outage do not all
        # come back in the same millisecond.
        delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)
        now = time.monotonic()
        if attempt > self.retries or now + delay + _MIN_ATTEMPT_S >= deadline:
            budget = (f"retries={self.retries} used up" if attempt > self.retries
                      else f"the {deadline - started:.1f} s deadline leaves no time for another")
            plural = "s" if attempt > 1 else ""
            err.gave_up = f"gave up after {attempt} attempt{plural} in {now - started:.1f} s: {budget}"
            err.hint = tls_hint(err, ssl=self.ssl, client_certificate=self._tls["certificate_chain"] is not None,
                                url=self.url) or ""
            log.warning("detector call failed (%s), %s%s", err.status, err.gave_up,
                        f"; hint: {err.hint}" if err.hint else "")
            return None
        log.warning("detector call failed (%s: %s), attempt %d of %d; retrying in %.2f s",
                    err.status, err.message[:120], attempt, self.retries + 1, delay)
        return delay

    def _inputs(self, request: Request, spec: ModelSpec, region: str | None) -> list[grpcclient.InferInput]:
        """InferInputs for ``request``; PIXELS goes through ``region`` when one is given."""
        inputs = []
        for tensor in request.inputs:
            shape, datatype, data = spec.tensor(tensor)
            inp = grpcclient.InferInput(tensor.name, shape, datatype)
            if region is not None and tensor.name == PIXELS:
                inp.set_shared_memory(region, data.nbytes)
            else:
                inp.set_data_from_numpy(data)
            inputs.append(inp)
        return inputs

    def _outputs(self, spec: ModelSpec) -> list[grpcclient.InferRequestedOutput]:
        return [grpcclient.InferRequestedOutput(name) for name in spec.outputs]

    def _wants_shm(self, request: Request) -> bool:
        return self.use_shared_memory and any(t.name == PIXELS for t in request.inputs)

    def _result(self, response: Any, request: Request, spec: ModelSpec, started: float) -> StudyResult:
        latency_ms = (time.monotonic() - started) * 1000.0
        result = parse_response(response, request, spec, model_name=self.model_name,
                                model_version=self.model_version, latency_ms=latency_ms)
        # Never the UID itself, never any DICOM attribute: only a hash to correlate.
        log.debug("study %s (%s): %d detections in %.1f ms", request.log_id, request.source,
                  len(result.detections), latency_ms)
        return result


class DetectorClient(_ClientBase):
    """Blocking client.  Thread-safe: one instance may serve many threads.

    Options (keyword-only): ``url`` "host:port"; ``model_name`` / ``model_version``;
    ``timeout_s`` overall deadline per call, retries included; ``retries`` extra
    attempts for retryable failures (UNAVAILABLE: unreachable, restarting, connection
    reset) after waits of 0.5-1 x ``min(backoff_s * 2**n, max_backoff_s)``; ``ssl`` and the
    PEM file paths ``root_certificates``, ``private_key``, ``certificate_chain``
    (mTLS); default ``score_threshold`` / ``iou_threshold`` / ``top_k`` request parameters;
    ``use_shared_memory`` sends PIXELS through system shared memory (server on the
    same host only).
    """

    def _open(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(**self._connection_kwargs())

    def predict(self, image: ImageInput, *, score_threshold: float | None = None, iou_threshold: float | None = None,
                top_k: int | None = None, timeout_s: float | None = None) -> StudyResult:
        """The StudyResult of one study (path, bytes, Study, uint8/uint16 array, Pixels or pydicom.Dataset);
        ``score_threshold`` / ``iou_threshold`` / ``top_k`` override the client's defaults for this call."""
        started = time.monotonic()
        deadline = self._deadline(timeout_s)
        request = self._request(image, dict(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k))
        attempt = 0
        while True:
            attempt += 1
            try:
                spec, response = self._attempt(request, deadline)
                return self._result(response, request, spec, started)
            except DetectorError as err:
                delay = self._retry_delay(err, attempt, started, deadline)
                if delay is None:
                    raise
            time.sleep(delay)

    def predict_study(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                      iou_threshold: float | None = None, top_k: int | None = None,
                      timeout_s: float | None = None) -> list[StudyResult]:
        """Results for several images (one per image, same order), sent concurrently."""
        images = list(images)
        options = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k, timeout_s=timeout_s)
        if len(images) <= 1:
            return [self.predict(im, **options) for im in images]
        with ThreadPoolExecutor(min(STUDY_CONCURRENCY, len(images)), thread_name_prefix="cxr-client") as pool:
            futures = [pool.submit(self.predict, im, **options) for im in images]
            return [f.result() for f in futures]

    def model_spec(self, timeout_s: float | None = None) -> ModelSpec:
        """The served contract, read from the server on first use and cached."""
        if self._spec is None:
            try:
                config = self._client.get_model_config(self.model_name, self.model_version, as_json=True,
                                                       client_timeout=timeout_s or self.timeout_s)
            except CONVERTIBLE as exc:
                raise to_detector_error(exc) from exc
            self._spec = ModelSpec.from_config(config, self.model_name)  # benign race: same value
        return self._spec

    def _attempt(self, request: Request, deadline: float) -> tuple[ModelSpec, Any]:
        spec = self.model_spec(self._remaining(deadline))
        with contextlib.ExitStack() as stack:
            region = None
            if self._wants_shm(request):
                region, size = stack.enter_context(local_region(request, spec))
                self._call(self._client.register_system_shared_memory, region, "/" + region, size,
                           client_timeout=self._remaining(deadline))
                stack.callback(self._unregister, region)
            response = self._call(self._client.infer, self.model_name, self._inputs(request, spec, region),
                                  model_version=self.model_version, outputs=self._outputs(spec),
                                  parameters=request.parameters or None, client_timeout=self._remaining(deadline))
        return spec, response

    @staticmethod
    def _call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CONVERTIBLE as exc:
            raise to_detector_error(exc) from exc

    def _unregister(self, region: str) -> None:
        try:
            self._client.unregister_system_shared_memory(region, client_timeout=5.0)
        except CONVERTIBLE as exc:  # the server may be gone; its registry went with it
            log.debug("could not unregister shared memory region: %s", to_detector_error(exc))

    def close(self) -> None:
        """Close the gRPC channel.  Idempotent."""
        self._client.close()

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncDetectorClient(_ClientBase):
    """asyncio client with the same options and results as :class:`DetectorClient`.

    The gRPC channel is opened inside the running event loop (``async with`` or the
    first call), because grpc.aio channels belong to the loop that created them.
    """

    def _connection(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(**self._connection_kwargs())
        return self._client

    async def predict(self, image: ImageInput, *, score_threshold: float | None = None, iou_threshold: float | None = None,
                      top_k: int | None = None, timeout_s: float | None = None) -> StudyResult:
        """The StudyResult of one study; see :meth:`DetectorClient.predict`."""
        started = time.monotonic()
        deadline = self._deadline(timeout_s)
        request = self._request(image, dict(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k))
        attempt = 0
        while True:
            attempt += 1
            try:
                spec, response = await self._attempt(request, deadline)
                return self._result(response, request, spec, started)
            except DetectorError as err:
                delay = self._retry_delay(err, attempt, started, deadline)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    async def predict_study(self, images: Sequence[ImageInput], *, score_threshold: float | None = None,
                            iou_threshold: float | None = None, top_k: int | None = None,
                            timeout_s: float | None = None) -> list[StudyResult]:
        """Results for several images (one per image, same order), sent concurrently."""
        gate = asyncio.Semaphore(STUDY_CONCURRENCY)
        options = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k, timeout_s=timeout_s)

        async def one(image: ImageInput) -> StudyResult:
            async with gate:
                return await self.predict(image, **options)

        return list(await asyncio.gather(*(one(im) for im in images)))

    async def model_spec(self, timeout_s: float | None = None) -> ModelSpec:
        """The served contract, read from the server on first use and cached."""
        if self._spec is None:
            config = await self._call(self._connection().get_model_config, self.model_name, self.model_version,
                                      as_json=True, client_timeout=timeout_s or self.timeout_s)
            self._spec = ModelSpec.from_config(config, self.model_name)
        return self._spec

    async def _attempt(self, request: Request, deadline: float) -> tuple[ModelSpec, Any]:
        spec = await self.model_spec(self._remaining(deadline))
        client = self._connection()
        with contextlib.ExitStack() as stack:
            region = None
            if self._wants_shm(request):
                region, size = stack.enter_context(local_region(request, spec))
                await self._call(client.register_system_shared_memory, region, "/" + region, size,
                                 client_timeout=self._remaining(deadline))
            try:
                response = await self._call(client.infer, self.model_name, self._inputs(request, spec, region),
                                            model_version=self.model_version, outputs=self._outputs(spec),
                                            parameters=request.parameters or None,
                                            client_timeout=self._remaining(deadline))
            finally:
                if region is not None:
                    await self._unregister(region)
        return spec, response

    @staticmethod
    async def _call(fn, *args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except CONVERTIBLE as exc:
            raise to_detector_error(exc) from exc

    async def _unregister(self, region: str) -> None:
        try:
            await self._connection().unregister_system_shared_memory(region, client_timeout=5.0)
        except CONVERTIBLE as exc:  # the server may be gone; its registry went with it
            log.debug("could not unregister shared memory region: %s", to_detector_error(exc))

    async def close(self) -> None:
        """Close the gRPC channel.  Idempotent."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> AsyncDetectorClient:
        self._connection()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
