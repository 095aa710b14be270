"""Run the service in the foreground: `python -m app.server` (or the `sola serve` command).

Uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes in-flight requests, runs the shutdown
half of the lifespan (the model worker finishes its current job), then exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

from pydantic import ValidationError

from app.settings import Settings, is_loopback

log = logging.getLogger("sola")


class ConfigError(SystemExit):
    pass


def check_bind(settings: Settings) -> None:
    """Without API keys everyone is admin: only ever listen on loopback then."""
    if not settings.keys and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host}: no API keys are configured, "
            "so anyone could edit the model. Set SOLA_API_KEYS='name:secret:admin,...' or bind to 127.0.0.1."
        )


def serve(settings: Settings | None = None) -> None:
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        """Requests that are not valid HTTP (say, `Content-Length: abc`) never reach the app; uvicorn answers
        them itself, in plain text. Answer them in the API's one error shape instead."""

        def send_400_response(self, msg: str) -> None:
            message = f"{msg} (malformed request line or headers, e.g. a non-numeric Content-Length)"
            body = json.dumps({"error": {"code": "bad_request", "message": message}}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown (exit status -15); a requested,
            # completed stop is a success here, so forget the signal and exit 0.
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    from app.main import create_app

    try:
        settings = settings or Settings()
    except ValidationError as exc:
        # Never echo the input: SOLA_API_KEYS holds secrets.
        problems = "; ".join(f"SOLA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
    check_bind(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # FAISS tries its AVX512 build first and logs "Could not load library with AVX512 support" at INFO when the
    # wheel has none: it then loads the AVX2 build, which is what runs. Nothing is wrong; keep its warnings only.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if not settings.keys:
        log.warning("no API keys configured: every request acts as 'anonymous' admin (loopback only)")
    fatal: list[str] = []
    server: Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        http=JsonErrorH11Protocol,
    )
    server = Server(config)
    server.run()
    if fatal:
        raise SystemExit(f"sola: startup failed: {fatal[0]}")
    if not server.started:
        raise SystemExit(1)  # e.g. the port was taken; uvicorn has logged why


def main() -> None:
    try:
        serve()
    except ConfigError as exc:
        print(f"sola: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
