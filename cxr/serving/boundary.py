"""The one error boundary of the Triton Python models, kept free of Triton so it is unit-tested.

The ``model.py`` files under ``model_repository/`` are adapters: they read tensors by
the names in :mod:`cxr.contract`, call these functions and :mod:`cxr` numerics, and
answer through :func:`respond` / :func:`respond_batched`, the one error boundary of
the serving layer: every request gets its own response, INVALID_ARG naming the
problem for bad input (:class:`~cxr.errors.InvalidImageError`,
:class:`~cxr.errors.InvalidRequestError`), the code a :class:`StepFailed` names (a
cancelled explanation, a failed BLS call), INTERNAL naming the exception for a bug in
cxr; the other requests of the batch are answered normally.  (``pb_utils`` is the
stub's ``triton_python_backend_utils`` module, passed in so this file imports
without Triton.)
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cxr.errors import InvalidImageError, InvalidRequestError

BAD_INPUT = (InvalidImageError, InvalidRequestError)  # INVALID_ARG; anything else is INTERNAL


class StepFailed(Exception):
    """A request this step stops on purpose, answered with ``code`` (a ``TritonError`` code name)
    and this message, without a traceback: e.g. CANCELLED when the client gave up on a long
    explanation, UNAVAILABLE when a model it calls (BLS) failed."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def model_parameters(model_config: str | dict) -> dict:
    """``parameters`` of a Triton model config as {key: value}; JSON values decoded."""
    cfg = json.loads(model_config) if isinstance(model_config, str) else model_config
    out = {}
    for key, value in cfg.get("parameters", {}).items():
        text = value.get("string_value", "")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def error_response(pb_utils, message: str, code: str = "INVALID_ARG"):
    """A per-request error response, INVALID_ARG unless ``code`` names another ``TritonError`` code."""
    code = getattr(pb_utils.TritonError, code, None)  # error codes exist from Triton 23.09
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


Outputs = dict[str, np.ndarray]


def _guarded(pb_utils, step: str, fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``(fn(), None)``, or ``(None, error response)`` by the boundary rules (module doc)."""
    try:
        return fn(), None
    except BAD_INPUT as exc:
        return None, error_response(pb_utils, str(exc))
    except StepFailed as exc:  # on purpose, so no traceback; logged: a client that hung up reads no response
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(f"{step}: request answered {exc.code}: {exc}")
        return None, error_response(pb_utils, str(exc), exc.code)
    except Exception as exc:  # a bug in cxr (or the host out of memory), not in the study: this request only
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:  # the traceback goes to the server log, for the bug report
            logger.log_error(f"{step}: internal error\n{traceback.format_exc()}")
        return None, error_response(pb_utils, f"internal error in {step} ({type(exc).__name__}: {exc})", "INTERNAL")


def _response(pb_utils, step: str, fn: Callable[[], Outputs]):
    outputs, error = _guarded(pb_utils, step, fn)
    if error is not None:
        return error
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])


def request_parameters(request) -> dict:
    """The request's parameters as a dict (Triton hands them over as JSON)."""
    return json.loads(request.parameters() or "{}")


def respond(pb_utils, requests: Sequence[Any], handle: Callable[[Any], Outputs], *, step: str) -> list:
    """One response per request, in order: ``handle(request)`` -> ``{name: array}``, each request on its own."""
    return [_response(pb_utils, step, lambda r=r: handle(r)) for r in requests]


def respond_batched(pb_utils, requests: Sequence[Any], read: Callable[[Any], np.ndarray],
                    run: Callable[[np.ndarray], Outputs], *, step: str) -> list:
    """Requests of a dynamic batch through one ``run`` call, still answered one by one.

    ``read(request)`` -> its input ``[n, ...]``; ``run(batch)`` -> outputs ``[N, ...]``,
    split back by the requests' ``n``.  A request whose input cannot be read fails
    alone; if the joint call fails, every readable request runs again on its own, so
    one request that breaks ``run`` cannot fail the others.
    """
    responses: list = [None] * len(requests)
    inputs: dict[int, np.ndarray] = {}
    for i, r in enumerate(requests):
        x, error = _guarded(pb_utils, step, lambda r=r: read(r))
        if error is not None:
            responses[i] = error
        else:
            inputs[i] = x
    if not inputs:
        return responses
    xs = list(inputs.values())
    joint, error = _guarded(pb_utils, step, lambda: run(xs[0] if len(xs) == 1 else np.concatenate(xs)))
    start = 0
    for i, x in inputs.items():
        if error is not None:  # find out which request broke the joint call: each alone
            responses[i] = _response(pb_utils, step, lambda x=x: run(x))
        else:
            responses[i] = _response(pb_utils, step, lambda s=start, e=start + len(x): {k: v[s:e] for k, v in joint.items()})
        start += len(x)
    return responses
