"""``cxr serve``: the embedded tritonserver on a model repository, until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr.contract import CPU_PRECISIONS, ENSEMBLE, EXPLAIN, GRPC_PORT, HTTP_PORT, METRICS_PORT, SEGMENT, ServeTarget
from cxr.serving.paths import AUTO, BY_NAME


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cxr.server.launcher import TritonServer

    log_file = args.log_file or Path(args.model_repository) / "tritonserver.log"
    server = TritonServer(
        model_repository=args.model_repository, grpc_port=args.grpc_port, http_port=args.http_port,
        metrics_port=args.metrics_port, host=args.host, target=args.target, precision=args.precision, path=args.path,
        log_file=log_file,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
    )
    server.tls_flags()  # bad TLS files fail here, before anything starts
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start(timeout=args.timeout)  # logs the exposure warnings (non-loopback bind)
    security = server.tls.description
    print(f"Triton is serving {ENSEMBLE} ({args.target}) from {args.model_repository}")
    if server.choice is not None:
        print(f"  detector {server.choice.path.name}: {server.choice.reason}")
    print(f"  gRPC     {args.host}:{args.grpc_port} ({security})")
    print(f"  HTTP     http://{server.http_host}:{args.http_port}/v2/models/{ENSEMBLE}")
    print(f"  metrics  http://{server.http_host}:{args.metrics_port}/metrics")
    if EXPLAIN in server.model_names:
        print(f"  maps     {EXPLAIN}: the detections with a D-RISE saliency map each (cxr predict --saliency)")
    if SEGMENT in server.model_names:
        print(f"  masks    {SEGMENT}: the detections with an instance mask each (DetectorClient(model_name={SEGMENT!r}))")
    print(f"  log      {log_file}")
    print("Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print(f"cxr serve: error: tritonserver exited with status {server.process.returncode}; see {log_file}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    print("stopped.")
    return 0



def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the top-level parser's subcommands."""
    p = sub.add_parser(
        "serve",
        help="serve the model repository with the embedded Triton server",
        description="Start the tritonserver shipped by nvidia-pytriton (CPU; Python backend + ensembles) on the "
        "model repository, wait until cxr_detector is ready, print the endpoints and run until Ctrl-C/SIGTERM. "
        "Binds to loopback unless --host says otherwise. GPU production uses the NGC container (see model_repository/README.md). "
        "Security: --tls-cert/--tls-key put gRPC on TLS, adding --tls-ca makes it mutual (clients need a certificate "
        "signed by that CA). Triton's HTTP endpoint has no TLS: with TLS on it (and metrics) stays on 127.0.0.1 even "
        "when --host is public. A non-loopback --host without TLS is allowed but logs a warning.",
    )
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--target", choices=ServeTarget.values(), default=ServeTarget.CPU.value,
                   help="detector variant: cpu (Python backend + ONNX Runtime), gpu-onnx, gpu-trt (NGC server only)")
    p.add_argument("--path", default=AUTO, choices=(AUTO, *BY_NAME),
                   help="how the cpu target's detector runs: auto (default) serves the fastest runtime x precision that "
                   "passed parity (`cxr export paths` records the verdicts and timings in detector/1/paths.json; "
                   "ort-fp32 when it never ran), or pin one")
    p.add_argument("--precision", choices=[str(x) for x in CPU_PRECISIONS], default=None,
                   help="older spelling of --path ort-fp32 / ort-int8")
    p.add_argument("--host", default="127.0.0.1",
                   help="address gRPC binds (default 127.0.0.1, loopback only); e.g. 0.0.0.0 to serve the network "
                   "- use TLS then")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                   help="server certificate (PEM, chain allowed) for gRPC TLS; needs --tls-key")
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="server private key (PEM) for gRPC TLS")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                   help="CA certificate (PEM) that signs client certificates: turns on mutual TLS, clients without "
                   "a certificate from this CA are refused at the handshake")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--http-port", type=int, default=HTTP_PORT)
    p.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    p.add_argument("--log-file", type=Path, default=None, help="server log (default MODEL_REPOSITORY/tritonserver.log)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(func=cmd_serve)
