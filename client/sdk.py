"""gRPC clients for the ``cxr_detector`` ensemble (and ``cxr_explain``): :class:`DetectorClient`
(blocking) and :class:`AsyncDetectorClient` (asyncio).

Both take the same keyword-only options, validate them in the constructor, build
requests with the one shared :func:`~cxr.client.requests.build_request`, retry only
retryable failures (exponential backoff inside one overall deadline) and raise only
:class:`DetectorError` (what they share: :mod:`cxr.client.calls`).  ``predict`` returns a
:class:`~cxr.client.results.StudyResult`; ``explain`` the same detections with one D-RISE
saliency map each, an :class:`~cxr.client.results.ExplainedResult`.  Example::

    from cxr.client import DetectorClient
    with DetectorClient(url="pacs-gw:8001", ssl=True, root_certificates="ca.pem") as client:
        result = client.predict("study.dcm", score_threshold=0.3)
        print(result.to_dict())
        explained = client.explain("study.dcm", score_threshold=0.3, timeout_s=120)
        heat = explained.saliency_map(0)  # [height, width] on the film's own pixel grid
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from cxr.client.calls import STUDY_CONCURRENCY, _ClientBase, log
from cxr.client.errors import CONVERTIBLE, DetectorError, from_rpc_error, to_detector_error
from cxr.client.requests import ImageInput, ModelSpec, Request
from cxr.client.results import ExplainedResult, StudyResult
from cxr.client.shm import local_region
from cxr.client.wire import model_infer_rpc

__all__ = ["AsyncDetectorClient", "DetectorClient", "DetectorError"]

_EXPLAIN_DOC = """The detections of one study, each with its D-RISE saliency map (``cxr_explain``).

        masks / grid / seed: D-RISE's masked passes, cells per side and seed (None: the
        server's defaults); the other options as for ``predict``.  It costs ``masks + 1``
        detector passes, so give it a ``timeout_s`` to match; the server stops its work
        when the call is cancelled or its deadline passes."""


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
        started, deadline = time.monotonic(), self._deadline(timeout_s)
        request = self._request(image, self._overrides(score_threshold, iou_threshold, top_k))
        return self._send(request, started, deadline, explain=False)

    def explain(self, image: ImageInput, *, masks: int | None = None, grid: int | None = None, seed: int | None = None,
                score_threshold: float | None = None, iou_threshold: float | None = None, top_k: int | None = None,
                timeout_s: float | None = None) -> ExplainedResult:
        started, deadline = time.monotonic(), self._deadline(timeout_s)
        request = self._request(image, self._overrides(score_threshold, iou_threshold, top_k, masks, grid, seed))
        return self._send(request, started, deadline, explain=True)  # type: ignore[return-value]

    explain.__doc__ = _EXPLAIN_DOC

    def _send(self, request: Request, started: float, deadline: float, *, explain: bool) -> StudyResult:
        attempt = 0
        while True:
            attempt += 1
            try:
                spec, response = self._attempt(request, deadline, explain)
                return self._result(response, request, spec, started, explain)
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

    def model_spec(self, timeout_s: float | None = None, *, explain: bool = False) -> ModelSpec:
        """The served contract (of the explainer with ``explain``), read from the server on first use and cached."""
        name, version = self._model(explain)
        if name not in self._specs:
            try:
                config = self._client.get_model_config(name, version, as_json=True,
                                                       client_timeout=timeout_s or self.timeout_s)
            except CONVERTIBLE as exc:
                raise self._spec_failure(to_detector_error(exc), explain) from exc
            return self._spec(config, explain)
        return self._specs[name]

    def _attempt(self, request: Request, deadline: float, explain: bool = False) -> tuple[ModelSpec, Any]:
        spec = self.model_spec(self._remaining(deadline), explain=explain)
        with contextlib.ExitStack() as stack:
            region = None
            if self._wants_shm(request):
                region, size = stack.enter_context(local_region(request, spec))
                self._call(self._client.register_system_shared_memory, region, "/" + region, size,
                           client_timeout=self._remaining(deadline))
                stack.callback(self._unregister, region)
            if region is None:  # the study in the request itself: built by cxr.client.wire, copied once
                response = self._infer_wire(self._wire(request, spec, deadline, explain), deadline)
            else:
                args, options = self._infer_options(request, spec, region, deadline, explain)
                response = self._call(self._client.infer, *args, **options)
        return spec, response

    def _infer_wire(self, wire: bytes, deadline: float) -> grpcclient.InferResult:
        """``ModelInfer`` with a serialized request on tritonclient's channel (its TLS and options)."""
        if self._model_infer is None:
            self._model_infer = model_infer_rpc(self._client._channel)
        try:
            return grpcclient.InferResult(self._model_infer(wire, timeout=self._remaining(deadline)))
        except grpc.RpcError as exc:
            raise to_detector_error(from_rpc_error(exc)) from exc

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
        started, deadline = time.monotonic(), self._deadline(timeout_s)
        request = self._request(image, self._overrides(score_threshold, iou_threshold, top_k))
        return await self._send(request, started, deadline, explain=False)

    async def explain(self, image: ImageInput, *, masks: int | None = None, grid: int | None = None,
                      seed: int | None = None, score_threshold: float | None = None, iou_threshold: float | None = None,
                      top_k: int | None = None, timeout_s: float | None = None) -> ExplainedResult:
        started, deadline = time.monotonic(), self._deadline(timeout_s)
        request = self._request(image, self._overrides(score_threshold, iou_threshold, top_k, masks, grid, seed))
        return await self._send(request, started, deadline, explain=True)  # type: ignore[return-value]

    explain.__doc__ = _EXPLAIN_DOC

    async def _send(self, request: Request, started: float, deadline: float, *, explain: bool) -> StudyResult:
        attempt = 0
        while True:
            attempt += 1
            try:
                spec, response = await self._attempt(request, deadline, explain)
                return self._result(response, request, spec, started, explain)
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

    async def model_spec(self, timeout_s: float | None = None, *, explain: bool = False) -> ModelSpec:
        """The served contract (of the explainer with ``explain``), read from the server on first use and cached."""
        name, version = self._model(explain)
        if name not in self._specs:
            try:
                config = await self._connection().get_model_config(name, version, as_json=True,
                                                                   client_timeout=timeout_s or self.timeout_s)
            except CONVERTIBLE as exc:
                raise self._spec_failure(to_detector_error(exc), explain) from exc
            return self._spec(config, explain)
        return self._specs[name]

    async def _attempt(self, request: Request, deadline: float, explain: bool = False) -> tuple[ModelSpec, Any]:
        spec = await self.model_spec(self._remaining(deadline), explain=explain)
        client = self._connection()
        with contextlib.ExitStack() as stack:
            region = None
            if self._wants_shm(request):
                region, size = stack.enter_context(local_region(request, spec))
                await self._call(client.register_system_shared_memory, region, "/" + region, size,
                                 client_timeout=self._remaining(deadline))
            try:
                if region is None:  # the study in the request itself: built by cxr.client.wire, copied once
                    response = await self._infer_wire(client, self._wire(request, spec, deadline, explain), deadline)
                else:
                    args, options = self._infer_options(request, spec, region, deadline, explain)
                    response = await self._call(client.infer, *args, **options)
            finally:
                if region is not None:
                    await self._unregister(region)
        return spec, response

    async def _infer_wire(self, client: grpcaio.InferenceServerClient, wire: bytes,
                          deadline: float) -> grpcclient.InferResult:
        """``ModelInfer`` with a serialized request on the loop's tritonclient channel (its TLS and options)."""
        if self._model_infer is None or self._model_infer[0] is not client:
            self._model_infer = (client, model_infer_rpc(client._channel))
        try:
            return grpcclient.InferResult(await self._model_infer[1](wire, timeout=self._remaining(deadline)))
        except grpc.RpcError as exc:
            raise to_detector_error(from_rpc_error(exc)) from exc

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
