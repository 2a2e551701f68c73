"""``fastdllm serve``: an OpenAI-compatible HTTP server (``/v1/completions``, ``/v1/chat/completions``)
and the live denoising page (``/``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import common
from .common import CLIError

API_KEY_ENV = "FASTDLLM_API_KEY"

EXAMPLES = """\
examples:
  fastdllm serve --model Efficient-Large-Model/Fast_dLLM_v2_1.5B --port 8000
  fastdllm serve --model ./my-bd-model --served-model-name my-bd --max-batch-size 16
  fastdllm serve --model ./my-bd-model --max-batch-size 16 --kv-cache-tokens 1024 --max-model-len 4096
  FASTDLLM_API_KEY=$(openssl rand -hex 16) fastdllm serve --host 0.0.0.0 --request-timeout 300

then, with any OpenAI client:
  curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "my-bd", "messages": [{"role": "user", "content": "Hi"}], "threshold": 0.9}'
  curl http://localhost:8000/metrics     # Prometheus: requests, tokens, queue, KV cache, latencies
  open http://localhost:8000/            # the denoising page: watch the blocks being decoded
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API, with a live denoising page at /. "
                    "Block-diffusion options (threshold, acceptance, block_size, small_block_size, use_block_cache, mode, "
                    "top_k) are accepted as extra body fields.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(p, steps=False)  # the server reads after every forward
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    s.add_argument("--served-model-name", metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the model path's last part)")
    s.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                   help="most sequences decoded together in one forward pass (default: %(default)s)")
    s.add_argument("--kv-cache-tokens", type=int, metavar="N",
                   help="KV-cache positions per batch slot: the cache holds max-batch-size x N positions, "
                        "allocated at start and shared (a sequence reserves its prompt plus max_tokens, rounded "
                        "up to a block) (default: --max-model-len if given, else the model's context, at most 2048)")
    s.add_argument("--max-model-len", type=int, metavar="N",
                   help="most prompt plus max_tokens tokens of one request; longer requests get 400 "
                        "(default: the model's context, at most the whole KV cache)")
    s.add_argument("--default-max-tokens", type=int, default=512, metavar="N",
                   help="max_tokens of chat requests that give none, cut to what fits (default: %(default)s)")
    s.add_argument("--prefill-chunk", type=int, default=512, metavar="N",
                   help="prompt tokens prefilled per step, in the same forward as the running sequences' "
                        "decode steps (default: %(default)s)")
    s.add_argument("--no-interleave-prefill", action="store_true",
                   help="prefill a new prompt whole before decoding continues (the running streams pause)")
    s.add_argument("--max-waiting", type=int, metavar="N",
                   help="sequences that may wait for a place in the batch; more get 503 (default: no bound)")
    g = p.add_argument_group("guards against hostile clients")
    g.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1/... (401 otherwise); default: ${API_KEY_ENV} "
                        "if set (better than the command line, which other users can see); the page at / takes "
                        "it as http://host:port/#key=KEY")
    g.add_argument("--auth-health-metrics", action="store_true",
                   help="require the API key on /health and /metrics too (they are open by default)")
    g.add_argument("--max-body-bytes", type=int, metavar="N",
                   help="largest request body: a longer one gets 413 while it is read (default: 64 bytes per "
                        "token of --max-model-len, at least 1 MiB)")
    g.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="seconds from a request's headers to the end of its body; a slower client gets 408 "
                        "(default: %(default)s)")
    g.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a connection may take to send a request's headers before it is closed "
                        "(default: %(default)s)")
    g.add_argument("--request-timeout", type=float, metavar="S",
                   help="most seconds one API request may run, streaming included; it is then cancelled "
                        "(408, or an error event on a stream) (default: no limit)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default: %(default)s)")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch_size <= 0:
        raise CLIError(f"--max-batch-size must be positive, got {args.max_batch_size}")
    if args.kv_cache_tokens is not None and args.kv_cache_tokens <= 0:
        raise CLIError(f"--kv-cache-tokens must be positive, got {args.kv_cache_tokens}")
    if args.default_max_tokens <= 0:
        raise CLIError(f"--default-max-tokens must be positive, got {args.default_max_tokens}")
    for flag in ("max_model_len", "max_waiting"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.prefill_chunk <= 0:
        raise CLIError(f"--prefill-chunk must be positive, got {args.prefill_chunk}")
    if args.max_body_bytes is not None and args.max_body_bytes <= 0:
        raise CLIError(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    for flag in ("body_timeout", "header_timeout", "request_timeout"):
        value = getattr(args, flag)
        if value is not None and not value > 0:  # also refuses nan
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        raise CLIError("--api-key must not be empty")
    common.check_model_arguments(args)


def served_name(model: str) -> str:
    p = Path(model)
    if p.exists():
        return p.resolve().name
    return model  # a hub id keeps its owner, as vLLM does


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError:
        raise CLIError("serving needs fastapi, uvicorn and prometheus_client: pip install 'fastdllm[serve]'") from None
    from ..serve import create_app
    from ..serve.http import config as http_config

    # the key comes from the flag or the environment here, and only here; it is passed on, never printed
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV, "").strip() or None)
    llm = common.load_model(args, max_batch_size=args.max_batch_size)
    name = args.served_model_name or served_name(args.model)
    try:
        app = create_app(llm, name, max_batch_size=args.max_batch_size, default_max_tokens=args.default_max_tokens,
                         kv_cache_tokens=args.kv_cache_tokens, max_model_len=args.max_model_len,
                         prefill_chunk=args.prefill_chunk, interleave_prefill=not args.no_interleave_prefill,
                         max_waiting=args.max_waiting, max_body_bytes=args.max_body_bytes,
                         body_timeout=args.body_timeout, request_timeout=args.request_timeout, api_key=api_key,
                         auth_health_metrics=args.auth_health_metrics)
    except ValueError as e:  # limits that contradict each other or the model
        raise CLIError(str(e).replace("max_model_len", "--max-model-len").replace("kv_cache_tokens",
                                                                                 "--kv-cache-tokens")) from None
    kind = "block diffusion" if llm.is_block_diffusion else "autoregressive"
    state = app.state.server
    limits = state.limits
    auth = "; API key required" + (" (also on /health and /metrics)" if args.auth_health_metrics else "") \
        if api_key else ""
    print(f"[{common.PROG}] serving '{name}' ({kind}) on http://{args.host}:{args.port}/v1 "
          f"(max model len {limits.max_model_len}, KV cache {limits.kv_tokens} positions, bodies up to "
          f"{state.max_body_bytes} bytes{auth}); the denoising page: http://{args.host}:{args.port}/",
          file=sys.stderr, flush=True)
    uvicorn.Server(http_config(app, args.host, args.port, args.header_timeout, log_level=args.log_level)).run()
    return 0
