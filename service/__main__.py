"""``python -m service [--host H] [--port P] [--model-dir DIR] [--device cpu|gpu|auto] [--weights float32|bfloat16]``.

Flags override the ``RNN_SERVE_*`` environment variables.
"""
from __future__ import annotations

import argparse

import uvicorn

from model_core.nn.recurrent_base import WEIGHT_FORMATS
from service.logs import configure_logging
from service.main import create_app
from service.settings import Settings
from service.slow_clients import header_timeout_protocol


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model-dir")
    p.add_argument("--device", choices=["cpu", "gpu", "auto"])
    p.add_argument("--weights", choices=WEIGHT_FORMATS, help="RNN_SERVE_WEIGHTS")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    # log_config=None: uvicorn keeps our structured handlers; its access log is replaced by ours.
    # On SIGTERM uvicorn stops accepting, lets in-flight requests finish (up to the timeout), then
    # the lifespan drains the batchers.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                log_config=None, access_log=False, timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
                ws_per_message_deflate=settings.ws_compression,
                # a frame over the request limit is refused by the WebSocket layer (close 1009), never buffered
                ws_max_size=settings.max_request_bytes,
                timeout_keep_alive=settings.keep_alive_seconds,
                http=header_timeout_protocol(settings.header_timeout_seconds))


if __name__ == "__main__":
    main()
