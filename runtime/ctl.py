"""`aimg ctl ...`: drive a running `aimg daemon` over its HTTP API (docs/daemon.md).

A thin client: every command is one or a few HTTP calls, so what it can do is what the API
allows. Exit codes: 0 done, 1 the daemon refused (its `detail` is printed), 2 the daemon is
not reachable or no token was found, 3 `start --wait` saw the task end without success.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import typer

from aimg.optional import MissingDependencyError, require

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_TOKEN_FILE = "~/.config/aimg/token"
START_HINT = "start it with `aimg daemon --config configs/cell-sim.yaml`"
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TASK_FAILED = 1, 2, 3

app = typer.Typer(
    help=(
        "Control a running `aimg daemon`: start and stop tasks, e-stop, reset, watch its status, "
        "open the live page. Mutating calls send the daemon's token (--token, AIMG_TOKEN, or the "
        "token file the daemon wrote)."
    ),
    epilog="Exit codes: 0 done; 1 the daemon refused (its reason is printed); 2 not reachable "
    "or no token; 3 `start --wait` saw the task end without success.",
    no_args_is_help=True,
)


class CtlError(Exception):
    """A failed call: `message` for the user, `code` for the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _httpx() -> ModuleType:
    """httpx, imported on first use: `aimg` loads this module for every command, and httpx
    comes with the daemon extra only."""
    try:
        return require("httpx", "daemon")
    except MissingDependencyError as exc:
        raise CtlError(str(exc), EXIT_UNREACHABLE) from exc


@dataclass
class Daemon:
    """Where the daemon listens and how to authenticate; makes every HTTP call over one kept-alive
    connection (a fresh client per call costs tens of ms, too much for 0.2 s dead-man ticks)."""

    url: str
    token_file: Path
    token_value: str | None = None
    timeout_s: float = 10.0
    _client: Any = field(default=None, init=False, repr=False)

    def _http(self) -> Any:
        if self._client is None:
            self._client = _httpx().Client(timeout=self.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def copy(self) -> Daemon:
        """The same daemon on a connection of its own (one per thread)."""
        return Daemon(self.url, self.token_file, self.token_value, self.timeout_s)

    def token(self) -> str:
        """The bearer token: --token / AIMG_TOKEN, else the first line of the token file."""
        if self.token_value:
            return self.token_value.strip()
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            raise CtlError(
                f"no token: {self.token_file} does not exist. The daemon writes it on its first "
                "start; pass --token-file (AIMG_TOKEN_FILE) or --token (AIMG_TOKEN) otherwise",
                EXIT_UNREACHABLE,
            ) from None
        except OSError as exc:
            raise CtlError(f"cannot read the token file {self.token_file}: {exc}", 2) from exc
        if not token:
            raise CtlError(f"the token file {self.token_file} is empty", EXIT_UNREACHABLE)
        return token

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return self._request("POST", path, json=body, headers=headers)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = _httpx()
        try:
            response = self._http().request(method, self.url + path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.status_code >= 400:
            raise CtlError(f"{method} {path}: {describe_error(response)}", EXIT_REFUSED)
        return response.json() if response.content else {}

    def unreachable(self, exc: Exception) -> CtlError:
        reason = str(exc) or type(exc).__name__
        return CtlError(
            f"the aimg daemon is not reachable at {self.url} ({reason}): {START_HINT}, "
            "or point --url (AIMG_URL) at it",
            EXIT_UNREACHABLE,
        )

    def stream_events(self, names: set[str]) -> Iterator[tuple[str, Any]]:
        """(event name, data) of the events named in `names` from GET /events until the stream
        ends (others, like the camera frames, are skipped unparsed)."""
        httpx = _httpx()
        timeout = httpx.Timeout(self.timeout_s, read=5.0)  # status comes twice a second
        try:
            with self._http().stream("GET", self.url + "/events", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CtlError(f"GET /events: {describe_error(response)}", EXIT_REFUSED)
                name, data = "message", []
                for line in response.iter_lines():
                    if not line:
                        if data and name in names:
                            yield name, json.loads("\n".join(data))
                        name, data = "message", []
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc


def describe_error(response: httpx.Response) -> str:
    """`<status> <detail>` of an error answer (FastAPI's 422 lists become one line)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text.strip() or response.reason_phrase
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail
        )
    return f"{response.status_code} {detail}"


def _fail(exc: CtlError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.code)


def _daemon(ctx: typer.Context) -> Daemon:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    url: str = typer.Option(
        DEFAULT_URL, envvar="AIMG_URL", help="The daemon's address (api.host and api.port)."
    ),
    token_file: Path = typer.Option(
        Path(DEFAULT_TOKEN_FILE),
        envvar="AIMG_TOKEN_FILE",
        help="File holding the token (the daemon's api.token_file).",
    ),
    token: str | None = typer.Option(
        None,
        envvar="AIMG_TOKEN",
        help="The token itself; wins over --token-file.",
        show_default=False,
    ),
) -> None:
    """Control a running `aimg daemon` over HTTP."""
    ctx.obj = Daemon(url.rstrip("/"), token_file.expanduser(), token)


# ---------------------------------------------------------------- summaries


def _num(value: Any, digits: int = 1, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.{digits}f}{unit}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def task_line(task: dict[str, Any]) -> str:
    """One line per task: id, instruction, state or outcome (reason), time, plans."""
    result = task.get("outcome") or task.get("state")
    reason = f" ({task['reason']})" if task.get("reason") else ""
    limits = f"max {_duration(task.get('max_duration_s'))}"
    if task.get("deadman_s"):
        limits += f", dead-man {_num(task['deadman_s'])} s"
    line = (
        f'{task.get("id")} "{task.get("instruction")}" {result}{reason}, '
        f"{_duration(task.get('elapsed_s'))}, {task.get('plans', 0)} plans ({limits})"
    )
    if task.get("episode"):
        line += f", episode {task['episode']}"
    return line


def format_status(status: dict[str, Any], events: int = 3) -> str:
    """A compact human summary of GET /status (docs/daemon.md's Status)."""
    lines = []
    model = status.get("model") or {}
    lines.append(
        f"daemon   {status.get('state')}, up {_duration(status.get('uptime_s'))}, "
        f"model {model.get('path')} ({model.get('backend')})"
    )
    task, last = status.get("task"), status.get("last_task")
    lines.append(f"task     {task_line(task) if task else 'none'}")
    if last:
        lines.append(f"last     {task_line(last)}")
    arm = status.get("arm") or {}
    position = arm.get("position_m")
    where = (
        " ".join(f"{axis} {1000 * v:.1f}" for axis, v in zip("xyz", position, strict=True)) + " mm"
        if isinstance(position, list) and len(position) == 3
        else "position -"
    )
    servo = status.get("servo") or {}
    realtime = servo.get("realtime")
    realtime = {True: "realtime", False: "not realtime"}.get(realtime, realtime)
    jitter = _num(servo.get("jitter_ms_p99"), 2)
    lines.append(
        f"arm      {where}, gripper {_num(arm.get('gripper'), 2)}, "
        f"error {arm.get('error_code', '-')}; servo {servo.get('mode', '-')} ({realtime}, "
        f"{servo.get('overruns', '-')} overruns, p99 jitter {jitter} ms)"
    )
    latency = status.get("latency_s")
    plans = (
        f"latency last {_num(latency.get('last'), 2)} / p50 {_num(latency.get('p50'), 2)} / "
        f"p95 {_num(latency.get('p95'), 2)} s, plan age {_num(status.get('plan_age_s'), 1, ' s')}"
        if latency
        else "no plan yet"
    )
    lines.append(f"planner  {plans}")
    rates = status.get("rates_hz") or {}
    lines.append(
        f"rates    servo {_num(rates.get('servo'), 0)} Hz, camera {_num(rates.get('camera'))} Hz,"
        f" plans {_num(rates.get('plans'), 2)}/s"
    )
    procs = []
    for name, proc in (status.get("processes") or {}).items():
        alive = "up" if proc.get("alive") else "DOWN"
        restarts = f", {proc['restarts']} restarts" if proc.get("restarts") else ""
        procs.append(f"{name} {alive} ({proc.get('state')}{restarts})")
    lines.append(f"procs    {'; '.join(procs) or '-'}")
    if status.get("last_error"):
        lines.append(f"error    {status['last_error']}")
    for event in list(reversed(status.get("events") or []))[:events]:
        when = time.strftime("%H:%M:%S", time.localtime(event.get("time_unix", 0)))
        lines.append(f"safety   {when} {event.get('kind')}: {event.get('message')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- commands


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print GET /status as JSON."),
) -> None:
    """Show the daemon's state, task, arm, planner, rates, processes and recent safety events."""
    try:
        body = _daemon(ctx).get("/status")
    except CtlError as exc:
        _fail(exc)
    typer.echo(json.dumps(body, indent=2) if as_json else format_status(body))


@app.command()
def start(
    ctx: typer.Context,
    instruction: str = typer.Argument(..., help='What to do, e.g. "pick up the red cube".'),
    max_duration: float | None = typer.Option(
        None, "--max-duration", min=0.0, help="Stop the task after S seconds (default: the cell's)."
    ),
    deadman: float | None = typer.Option(
        None,
        "--deadman",
        help="Dead-man interval S: the daemon stops the task unless it hears POST /keepalive "
        "every S seconds. This command sends them until the task ends; Ctrl-C stops the task.",
    ),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Wait for the task to end and print its outcome (exit 3 unless it succeeded); "
        "Ctrl-C stops the task.",
    ),
) -> None:
    """Start a task; returns at once unless --wait or --deadman."""
    daemon = _daemon(ctx)
    body: dict[str, Any] = {"instruction": instruction}
    if max_duration is not None:
        body["max_duration_s"] = max_duration
    if deadman is not None:
        body["deadman_s"] = deadman
    try:
        task = daemon.post("/tasks", body)["task"]
    except CtlError as exc:
        _fail(exc)
    typer.echo(f'{task["id"]} started: "{task["instruction"]}"')
    if not (wait or deadman is not None):
        return
    try:
        ended = wait_for_task(daemon, task["id"], deadman, _progress_printer())
    except KeyboardInterrupt:
        _stop_after_interrupt(daemon, task["id"])
        raise typer.Exit(130) from None
    except CtlError as exc:
        _fail(exc)
    _clear_progress()
    typer.echo(task_line(ended))
    if not ended.get("success"):
        raise typer.Exit(EXIT_TASK_FAILED)


def wait_for_task(
    daemon: Daemon,
    task_id: str,
    deadman_s: float | None,
    progress: Callable[[dict[str, Any]], None],
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Poll GET /status until `task_id` has ended, with keepalives every deadman_s / 4 from a
    thread of their own while it runs (a slow status answer never delays one)."""
    keepalive = Keepalive(daemon.copy(), max(0.05, deadman_s / 4.0)) if deadman_s else None
    if keepalive is not None:
        keepalive.start()
    try:
        while True:
            status = daemon.get("/status")
            for key in ("task", "last_task"):
                task = status.get(key)
                if task and task.get("id") == task_id:
                    # Final only as last_task: the daemon judges success and commits the
                    # episode after the task's state reads "ended", then moves it there.
                    if key == "last_task":
                        return task
                    progress(task)
                    break
            else:
                raise CtlError(f"{task_id} is no longer known to the daemon", EXIT_REFUSED)
            time.sleep(poll_s)
    finally:
        if keepalive is not None:
            keepalive.stop()


class Keepalive(threading.Thread):
    """POST /keepalive every `period_s` until stopped or the daemon answers 409 (no dead-man
    task any more); failures are retried, the dead-man then ends the task by itself."""

    def __init__(self, api: Daemon, period_s: float) -> None:
        super().__init__(name="aimg-ctl-keepalive", daemon=True)
        self.api = api
        self.period_s = period_s
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                started = time.monotonic()
                try:
                    self.api.post("/keepalive")
                except CtlError as exc:
                    if exc.code == EXIT_REFUSED:
                        return
                self._stopped.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        finally:
            self.api.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2.0 * self.api.timeout_s)


def _progress_printer() -> Callable[[dict[str, Any]], None]:
    if not sys.stdout.isatty():
        return lambda task: None

    def show(task: dict[str, Any]) -> None:
        sys.stdout.write(
            f"\r{task['id']} {task['state']}, {_duration(task.get('elapsed_s'))}, "
            f"{task.get('plans', 0)} plans  (Ctrl-C stops it)\x1b[K"
        )
        sys.stdout.flush()

    return show


def _clear_progress() -> None:
    if sys.stdout.isatty():
        sys.stdout.write("\r\x1b[K")


def _stop_after_interrupt(daemon: Daemon, task_id: str) -> None:
    _clear_progress()
    try:
        answer = daemon.post("/stop")
    except CtlError as exc:
        typer.echo(f"interrupted; stopping {task_id} failed: {exc}", err=True)
        return
    typer.echo(f"interrupted: stopped {answer.get('stopped') or task_id} ({answer.get('state')})")


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the running task (the arm holds where it is; the episode is kept)."""
    try:
        answer = _daemon(ctx).post("/stop")
    except CtlError as exc:
        _fail(exc)
    stopped = answer.get("stopped")
    typer.echo(f"stopped {stopped}" if stopped else "no task was running")


@app.command()
def estop(ctx: typer.Context) -> None:
    """E-stop: the arm holds at once and nothing moves until `aimg ctl reset`."""
    try:
        answer = _daemon(ctx).post("/estop")
    except CtlError as exc:
        _fail(exc)
    typer.echo(f"{answer.get('state')}: the arm holds; `aimg ctl reset` once the cell is safe")


@app.command()
def reset(ctx: typer.Context) -> None:
    """Leave estopped or fault; refused while a task runs.

    From fault the daemon restarts the camera or servo process that died.
    """
    try:
        answer = _daemon(ctx).post("/reset")
    except CtlError as exc:
        _fail(exc)
    typer.echo(f"state: {answer.get('state')}")


@app.command()
def watch(
    ctx: typer.Context,
    poll: bool = typer.Option(
        False, "--poll", help="Poll GET /status twice a second instead of reading GET /events."
    ),
) -> None:
    """Show the live status in the terminal, refreshed in place; Ctrl-C exits (the task runs on)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    daemon = _daemon(ctx)
    console = Console()
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:

            def show(text: str) -> None:
                live.update(Text(text), refresh=True)

            _watch_loop(daemon, poll, show)
    except KeyboardInterrupt:
        return
    except CtlError as exc:
        _fail(exc)


def _watch_loop(daemon: Daemon, poll: bool, show: Callable[[str], None]) -> None:
    """Feed `show` a summary on every status; on a dropped connection say so and retry."""
    while True:
        try:
            if poll:
                show(format_status(daemon.get("/status")) + "\n(polling; Ctrl-C exits)")
                time.sleep(0.5)
                continue
            for _, data in daemon.stream_events({"status"}):
                show(format_status(data) + "\n(live; Ctrl-C exits)")
        except CtlError as exc:
            if exc.code == EXIT_REFUSED:
                raise
            show(f"{exc}\ndisconnected - retrying (Ctrl-C exits)")
        except ValueError as exc:  # a torn or non-JSON event
            show(f"{daemon.url}: bad event ({exc})\ndisconnected - retrying (Ctrl-C exits)")
        time.sleep(1.0)


@app.command()
def page(ctx: typer.Context) -> None:
    """Print the live page's address, with the token for its buttons.

    The token rides in the #fragment, which browsers never send to the server; the page keeps
    it for the tab (sessionStorage) and clears it from the address bar.
    """
    daemon = _daemon(ctx)
    try:
        token = daemon.token()
    except CtlError as exc:
        _fail(exc)
    typer.echo(f"{daemon.url}/#token={quote(token, safe='')}")


if __name__ == "__main__":
    app()
