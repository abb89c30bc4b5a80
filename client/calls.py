"""What :class:`~cxr.client.sdk.DetectorClient` and :class:`~cxr.client.sdk.AsyncDetectorClient`
share: options and their validation, the retry policy, the tensors sent and the results
built.  The two clients differ only in how they wait (:mod:`cxr.client.sdk`).

A call goes to ``cxr_detector`` (``predict``) or to ``cxr_explain`` (``explain``: the same
detections with one saliency map each); each model's contract is read from the server once
and cached (``model_spec``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from cxr.client.errors import DetectorError, client_error, tls_hint
from cxr.client.requests import (PIXELS, ImageInput, ModelSpec, Request, build_request, parse_explained, parse_response,
                                 request_parameters)
from cxr.client.results import StudyResult
from cxr.client.wire import model_infer_request
from cxr.contract import ENSEMBLE, EXPLAIN, LOCAL_URL

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
                 use_shared_memory: bool = False, explain_model_name: str = EXPLAIN) -> None:
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
        self.explain_model_name = str(explain_model_name)
        self._specs: dict[str, ModelSpec] = {}  # per model name: read once from the server, on first use
        self._model_infer: Any = None  # ModelInfer on the connection's channel, taking serialized requests (_infer_wire)
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

    def _triton_timeout_us(self, deadline: float, explain: bool) -> int | None:
        """Triton's request timeout of an explanation (the explainer stops its masked passes once the
        caller gave up); None for detections."""
        return max(1, int(self._remaining(deadline) * 1e6)) if explain else None

    def _wire(self, request: Request, spec: ModelSpec, deadline: float, explain: bool) -> bytes:
        """The serialized ``ModelInfer`` request of one attempt without shared memory: what
        tritonclient's ``infer`` would send for :meth:`_infer_options`, the study copied once
        (:mod:`cxr.client.wire`)."""
        name, version = self._model(explain)
        inputs = []
        for tensor in request.inputs:
            shape, datatype, data = spec.tensor(tensor)
            inputs.append((tensor.name, datatype, shape, data))
        try:
            return model_infer_request(name, inputs, model_version=version, outputs=spec.outputs,
                                       parameters=request.parameters or None,
                                       timeout_us=self._triton_timeout_us(deadline, explain))
        except ValueError as exc:
            raise client_error(str(exc)) from exc

    def _outputs(self, spec: ModelSpec) -> list[grpcclient.InferRequestedOutput]:
        return [grpcclient.InferRequestedOutput(name) for name in spec.outputs]

    def _wants_shm(self, request: Request) -> bool:
        return self.use_shared_memory and any(t.name == PIXELS for t in request.inputs)

    def _model(self, explain: bool) -> tuple[str, str]:
        """(name, version) of the model a call goes to: the detector, or the explainer (its latest version)."""
        return (self.explain_model_name, "") if explain else (self.model_name, self.model_version)

    def _spec(self, config: dict, explain: bool) -> ModelSpec:
        name = self._model(explain)[0]
        self._specs[name] = ModelSpec.from_config(config, name, explain=explain)  # benign race: same value
        return self._specs[name]

    def _spec_failure(self, err: DetectorError, explain: bool) -> DetectorError:
        """``err`` from reading a model's config, with the fix when the server has no explainer."""
        if explain and err.status == "NOT_FOUND":
            err.message = (f"the server has no {self.explain_model_name!r} model, so no saliency maps ({err.message}); "
                           f"serve a model repository written by this version of cxr (cxr export ... --repository DIR) "
                           f"or call predict() for detections only")
        return err

    def _infer_options(self, request: Request, spec: ModelSpec, region: str | None, deadline: float,
                       explain: bool) -> tuple[tuple, dict[str, Any]]:
        """Positional and keyword arguments of tritonclient's ``infer`` for one attempt."""
        name, version = self._model(explain)
        options: dict[str, Any] = dict(model_version=version, outputs=self._outputs(spec),
                                       parameters=request.parameters or None, client_timeout=self._remaining(deadline))
        if explain:
            options["timeout"] = self._triton_timeout_us(deadline, explain)
        return (name, self._inputs(request, spec, region)), options

    def _result(self, response: Any, request: Request, spec: ModelSpec, started: float,
                explain: bool = False) -> StudyResult:
        latency_ms = (time.monotonic() - started) * 1000.0
        name, version = self._model(explain)
        result = parse_response(response, request, spec, model_name=name, model_version=version, latency_ms=latency_ms)
        if explain:
            result = parse_explained(response, request, spec, result)
        # Never the UID itself, never any DICOM attribute: only a hash to correlate.
        log.debug("study %s (%s): %d detections%s in %.1f ms", request.log_id, request.source,
                  len(result.detections), " and their saliency maps" if explain else "", latency_ms)
        return result

    def _overrides(self, score_threshold: float | None, iou_threshold: float | None, top_k: int | None,
                   masks: int | None = None, grid: int | None = None, seed: int | None = None) -> dict:
        """The request parameters of one call (None: the client's default, else the server's)."""
        return dict(score_threshold=score_threshold, iou_threshold=iou_threshold, top_k=top_k, saliency_masks=masks,
                    saliency_grid=grid, saliency_seed=seed)

