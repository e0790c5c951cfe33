"""`aimg daemon --config cell.yaml`: the cell as a service (docs/daemon.md).

Start order: config (validated, errors name the key), token, controller (sim cell or devices,
camera, servo and planner processes), then the API. SIGTERM / SIGINT stop the arm at once (the
controller holds it before anything else happens), then the API drains for up to 3 s, the
episode is committed and the processes close; the exit code is 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from aimg.config import ConfigError
from aimg.runtime.daemon_log import configure_logging, log_event

log = logging.getLogger("aimg.daemon")


def daemon(
    config: Path = typer.Option(
        Path("configs/cell-sim.yaml"), "--config", "-c", help="The cell config (YAML)."
    ),
    host: str | None = typer.Option(None, help="Bind address (overrides api.host)."),
    port: int | None = typer.Option(None, help="Port (overrides api.port; 0 picks a free one)."),
    token_file: Path | None = typer.Option(None, help="Token file (overrides api.token_file)."),
    episodes_dir: Path | None = typer.Option(
        None, help="Where task episodes go (overrides recording.dir)."
    ),
    model: Path | None = typer.Option(
        None, help="Checkpoint or export dir (overrides model.path)."
    ),
    backend: str | None = typer.Option(None, help="Backend (overrides model.backend)."),
    log_format: str | None = typer.Option(None, help="json or text (overrides logging.format)."),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="Override any config key: --set tasks.max_duration_s=60 (value read as YAML).",
    ),
) -> None:
    """Run the robot cell as a service: cameras, arm and model held, tasks taken over HTTP.

    The API listens on 127.0.0.1:8787 by default; `aimg ctl` is its client and GET / is the
    live page. Every task is recorded as an episode under recording.dir. Stop it with Ctrl-C or
    SIGTERM (the arm stops first).
    """
    from aimg.runtime.cell_config import load_cell_config, load_or_create_token

    overrides: dict[str, Any] = {
        "api.host": host,
        "api.port": port,
        "api.token_file": token_file,
        "recording.dir": episodes_dir,
        "model.path": model,
        "model.backend": backend,
        "logging.format": log_format,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        overrides.update(parse_settings(settings))
        cfg = load_cell_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(cfg.logging.format, cfg.logging.level)
    try:
        token = load_or_create_token(cfg.api.token_file)
    except OSError as exc:
        typer.echo(f"error: api.token_file {cfg.api.token_file}: {exc}", err=True)
        raise typer.Exit(2) from exc
    code = serve(cfg, token)
    raise typer.Exit(code)


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs -> overrides; values are YAML scalars (60, true, null, text)."""
    import yaml

    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write it as key.path=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return out


def serve(cfg: Any, token: str) -> int:
    """Start the controller and the API; returns the exit code once stopped."""
    import uvicorn

    from aimg.runtime.api import create_app
    from aimg.runtime.controller import Controller

    log_event(log, logging.INFO, "starting", config=cfg.source, cell=cfg.name)
    controller = Controller(cfg)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            controller.start()
        except KeyboardInterrupt:
            log_event(log, logging.WARNING, "interrupted while starting")
            return 0
        except (ConfigError, RuntimeError, OSError) as exc:
            log_event(log, logging.ERROR, "could not start the cell", error=str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        app = create_app(controller, token, cfg.api.max_body_bytes)
        server = _make_server(
            uvicorn.Config(
                app,
                host=cfg.api.host,
                port=cfg.api.port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=3,
                limit_concurrency=512,
            ),
            controller,
        )
        # uvicorn restores the handlers it found and raises the signal again once it has
        # stopped; this one makes that a note in the log, so closing the cell still runs.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _already_stopping)
        server.run()
        if not server.started:
            log_event(log, logging.ERROR, "the API could not bind", host=cfg.api.host)
            return 1
        return 0
    finally:
        controller.close()


def _already_stopping(signum: int, _frame: Any) -> None:
    log_event(log, logging.INFO, "signal while stopping", signal=signal.Signals(signum).name)


def _make_server(config: Any, controller: Any) -> Any:
    """uvicorn's server whose signal handler stops the arm before anything else (uvicorn is
    imported here, not at the top: every `aimg` command imports this module)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            controller.begin_shutdown(f"{signal.Signals(sig).name} received")
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    log_event(
                        log,
                        logging.INFO,
                        "api listening",
                        url=f"http://{host}:{port}",
                        page="`aimg ctl page` prints the live page's address with the token",
                    )

    return Server(config)


def bench_daemon(
    config: Path = typer.Option(Path("configs/cell-sim.yaml"), help="The cell config."),
    requests: int = typer.Option(1000, min=1, help="GET /status requests in the burst."),
    clients: int = typer.Option(16, min=1, help="Client threads (one connection each)."),
) -> None:
    """Start a daemon, run a task, burst status requests at it, SIGTERM it; prints JSON:
    request latency, servo jitter over the burst, plan latency, stop times."""
    import json

    from aimg.runtime.daemon_bench import run_daemon_bench

    typer.echo(json.dumps(run_daemon_bench(config, requests, clients), indent=2))
