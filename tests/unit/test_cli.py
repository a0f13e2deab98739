"""The command line without a gateway: argument parsing, the chat renderer and loop over a scripted
stream, and the PID-file safety of ``up``/``down`` (real child processes, never a foreign one)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from agentcluster import events as ev
from agentcluster.api import CancelOut, SessionOut
from agentcluster.cli import main, parse_args
from agentcluster.cli._chat import ChatRenderer, Console, run_chat
from agentcluster.cli._local import (
    SERVE_MODULE,
    LocalFiles,
    is_alive,
    is_serve_cmdline,
    read_pid,
    run_down,
    run_up,
)
from agentcluster.cli._remote import local_url, resolve_api_key
from agentcluster.client import StreamItem
from agentcluster.config import Settings, load_settings
from agentcluster.runtime import Delta

pytestmark = pytest.mark.timeout(30)

SID = "s-1"
TURN = "t-1"


# --- parsing ----------------------------------------------------------------------------------


def test_chat_defaults_and_options() -> None:
    args = parse_args(["chat"])
    assert (args.command, args.agent, args.session, args.url, args.key) == (
        "chat",
        "default",
        None,
        None,
        None,
    )
    args = parse_args(["chat", "--agent", "tester", "--session", "abc", "--url", "http://h:1"])
    assert (args.agent, args.session, args.url) == ("tester", "abc", "http://h:1")


def test_up_down_status_options() -> None:
    assert parse_args(["up"]).wait == 120.0
    assert parse_args(["up", "--wait", "5"]).wait == 5.0
    assert parse_args(["down"]).timeout == 60.0
    assert parse_args(["status", "--url", "http://h:2"]).url == "http://h:2"


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--wait", "0"],
        ["up", "--wait", "soon"],
        ["keys", "create", "--name", "n"],  # a tenant is required
        ["keys", "create", "--name", "n", "--tenant-id", "a", "--tenant-name", "b"],
        ["keys", "revoke"],
        ["chat", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: agentcluster" in capsys.readouterr().err


def test_keys_subcommands_take_url_and_admin_key_after_the_verb() -> None:
    args = parse_args(
        ["keys", "create", "--name", "ci", "--tenant-name", "acme", "--url", "http://h:3"]
    )
    assert (args.keys_command, args.name, args.tenant_name, args.tenant_id, args.url) == (
        "create",
        "ci",
        "acme",
        None,
        "http://h:3",
    )
    args = parse_args(["keys", "list", "--tenant-id", "t1", "--admin-key", "k" * 20])
    assert (args.keys_command, args.tenant_id, args.admin_key) == ("list", "t1", "k" * 20)
    assert parse_args(["keys", "revoke", "key-9"]).key_id == "key-9"


def test_missing_admin_key_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SA01_AUTH_ADMIN_KEY", raising=False)
    assert main(["keys", "list", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentcluster: SA01_AUTH_ADMIN_KEY: not set")
    assert len(err.strip().splitlines()) == 1


def test_unreachable_gateway_names_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["status", "--url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"agentcluster: gateway not reachable at {url} (")
    assert len(err.splitlines()) == 1


def test_url_and_key_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    wildcard = settings.gateway.model_copy(update={"host": "0.0.0.0", "port": 4242})
    assert local_url(settings.model_copy(update={"gateway": wildcard})) == "http://127.0.0.1:4242"
    monkeypatch.delenv("AGENTCLUSTER_API_KEY", raising=False)
    assert resolve_api_key(None, settings) is None
    (tmp_path / "demo-api-key").write_text("ac_demo\n")
    assert resolve_api_key(None, settings) == "ac_demo"
    monkeypatch.setenv("AGENTCLUSTER_API_KEY", "ac_env")
    assert resolve_api_key(None, settings) == "ac_env"
    assert resolve_api_key("ac_flag", settings) == "ac_flag"


# --- chat rendering ---------------------------------------------------------------------------


def _ids(seq: int) -> dict[str, Any]:
    return {"tenant_id": "tn", "session_id": SID, "seq": seq, "turn_id": TURN}


def delta(text: str, step: int = 1) -> Delta:
    return Delta(session_id=SID, turn_id=TURN, step=step, index=1, text=text)


def tool_turn() -> list[StreamItem]:
    return [
        ev.MessageReceived(**_ids(1), message_id="m1", content="q"),
        ev.TurnStarted(**_ids(2)),
        ev.LlmCompleted(**_ids(3), step=1, model="m", tool_calls=[{"name": "calculator"}]),
        ev.ToolRequested(
            **_ids(4), tool_call_id="c1", tool="calculator", arguments={"expression": "6*7"}
        ),
        ev.ToolDecided(**_ids(5), tool_call_id="c1", tool="calculator", allowed=True),
        ev.ToolCompleted(
            **_ids(6),
            tool_call_id="c1",
            tool="calculator",
            ok=True,
            result={"expression": "6*7", "value": 42},
        ),
        delta("It is", step=2),
        delta(" 42.", step=2),
        ev.LlmCompleted(**_ids(7), step=2, model="m", content="It is 42."),
        ev.TurnCompleted(**_ids(8), message_id="m2", content="It is 42."),
    ]


def render(items: Sequence[StreamItem]) -> tuple[str, ChatRenderer]:
    out = io.StringIO()
    renderer = ChatRenderer(out, "tester")
    for item in items:
        renderer.feed(item)
    renderer.end()
    return out.getvalue(), renderer


def test_renderer_streams_text_and_shows_tools() -> None:
    text, renderer = render(tool_turn())
    assert text == ('  [tool calculator {"expression": "6*7"} -> 42]\n' "tester> It is 42.\n")
    assert (renderer.turn_id, renderer.failed) == (TURN, False)


def test_renderer_writes_each_delta_as_it_arrives() -> None:
    out = io.StringIO()
    renderer = ChatRenderer(out, "a")
    renderer.feed(delta("Hel"))
    assert out.getvalue() == "a> Hel"  # no newline yet: the line grows token by token
    renderer.feed(delta("lo"))
    assert out.getvalue() == "a> Hello"


def test_renderer_prints_an_unstreamed_answer_once() -> None:
    text, _ = render(
        [
            ev.LlmCompleted(**_ids(3), step=1, model="m", content="Whole answer."),
            ev.TurnCompleted(**_ids(4), message_id="m2", content="Whole answer."),
        ]
    )
    assert text == "tester> Whole answer.\n"
    text, _ = render([ev.TurnCompleted(**_ids(4), message_id="m2", content="Only here.")])
    assert text == "tester> Only here.\n"


def test_renderer_shows_policy_denials_failures_and_cancels() -> None:
    text, renderer = render(
        [
            ev.ToolRequested(**_ids(4), tool_call_id="c1", tool="shell", arguments={"cmd": "ls"}),
            ev.ToolDecided(
                **_ids(5), tool_call_id="c1", tool="shell", allowed=False, reason="not allowed"
            ),
            ev.ToolCompleted(
                **_ids(6), tool_call_id="c1", tool="shell", ok=False, error="denied by policy"
            ),
            ev.ToolCompleted(
                **_ids(7), tool_call_id="c2", tool="calculator", ok=False, error="bad input"
            ),
            delta("partial"),
            ev.TurnFailed(**_ids(8), error_type="LlmError", error="upstream 500"),
        ]
    )
    assert text == (
        '  [policy denied shell {"cmd": "ls"}: not allowed]\n'
        "  [tool calculator {} -> error: bad input]\n"
        "tester> partial\n"
        "  [turn failed: LlmError: upstream 500]\n"
    )
    assert renderer.failed
    text, _ = render([ev.TurnCancelled(**_ids(3), reason="by user")])
    assert text == "  [turn cancelled: by user]\n"


# --- the chat loop ----------------------------------------------------------------------------


def session_out(status: Literal["active", "closed"] = "active") -> SessionOut:
    now = datetime.now(UTC)
    return SessionOut(
        session_id=SID,
        agent="tester",
        status=status,
        metadata={},
        last_seq=0,
        created_at=now,
        updated_at=now,
    )


class ScriptedApi:
    """The chat's view of the client, answering each message with the next scripted turn; a
    ``KeyboardInterrupt`` in a script is raised at that point of the stream (Ctrl-C)."""

    def __init__(self, turns: list[Sequence[StreamItem | type[KeyboardInterrupt]]]) -> None:
        self.turns = turns
        self.sent: list[str] = []
        self.cancels: list[str | None] = []
        self.created: list[str] = []
        self.status: Literal["active", "closed"] = "active"

    def create_session(
        self, agent: str = "default", metadata: dict[str, Any] | None = None
    ) -> SessionOut:
        self.created.append(agent)
        return session_out()

    def get_session(self, session_id: str) -> SessionOut:
        return session_out(self.status)

    def stream_turn(self, session_id: str, content: str) -> Iterator[StreamItem]:
        self.sent.append(content)
        for item in self.turns.pop(0):
            if item is KeyboardInterrupt:
                raise KeyboardInterrupt
            assert not isinstance(item, type)
            yield item

    def cancel(self, session_id: str, turn_id: str | None = None) -> CancelOut:
        self.cancels.append(turn_id)
        return CancelOut(cancelled=True)


def console(lines: list[str]) -> tuple[Console, io.StringIO, io.StringIO]:
    pending = list(lines)
    out, err = io.StringIO(), io.StringIO()

    def read_line(prompt: str) -> str:
        out.write(prompt)
        if not pending:
            raise EOFError
        return pending.pop(0)

    return Console(read_line=read_line, out=out, err=err, interactive=False), out, err


def test_chat_answers_each_line_until_eof() -> None:
    api = ScriptedApi([tool_turn(), [delta("bye"), *tool_turn()[-1:]]])
    chat_console, out, err = console(["what is 6*7?", "", "thanks"])
    assert run_chat(api, agent="tester", session_id=None, console=chat_console) == 0
    assert api.created == ["tester"]
    assert api.sent == ["what is 6*7?", "thanks"]
    assert out.getvalue().endswith("tester> It is 42.\ntester> bye\n")
    assert err.getvalue() == f"session {SID} (agent tester)\n"


def test_chat_quit_resume_and_failed_turns() -> None:
    failing: list[StreamItem | type[KeyboardInterrupt]] = [
        ev.TurnFailed(**_ids(3), error_type="E", error="boom")
    ]
    api = ScriptedApi([failing])
    chat_console, out, _ = console(["hi", "/quit", "never sent"])
    assert run_chat(api, agent="x", session_id=SID, console=chat_console) == 1
    assert (api.created, api.sent) == ([], ["hi"])
    assert "[turn failed: E: boom]" in out.getvalue()


def test_chat_refuses_a_closed_session() -> None:
    api = ScriptedApi([])
    api.status = "closed"
    chat_console, _, err = console(["hi"])
    assert run_chat(api, agent="x", session_id=SID, console=chat_console) == 1
    assert api.sent == []
    assert "is closed" in err.getvalue()


def test_ctrl_c_cancels_the_turn_and_the_chat_goes_on() -> None:
    api = ScriptedApi([[delta("thinking"), KeyboardInterrupt], [delta("second")]])
    chat_console, out, _ = console(["long question", "next"])
    assert run_chat(api, agent="x", session_id=None, console=chat_console) == 0
    assert api.cancels == [TURN]
    assert api.sent == ["long question", "next"]
    assert out.getvalue() == "tester> thinking\n  [cancelled]\ntester> second\n"


# --- up/down: PID-file safety ------------------------------------------------------------------

FAKE_SERVE = textwrap.dedent("""
    import signal, sys, time
    if "--stubborn" in sys.argv:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    print("ready", flush=True)
    time.sleep(60)
    """)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings().model_copy(update={"data_dir": tmp_path})


@pytest.fixture
def fake_serve(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Starts processes whose command line is ``<python> .../agentcluster serve``; kills them."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def start_fake_serve(
    tmp_path: Path, started: list[subprocess.Popen[str]], *flags: str
) -> subprocess.Popen[str]:
    script = tmp_path / "bin" / "agentcluster"
    script.parent.mkdir(exist_ok=True)
    script.write_text(FAKE_SERVE)
    process = subprocess.Popen(
        [sys.executable, str(script), "serve", *flags], stdout=subprocess.PIPE, text=True
    )
    started.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"  # its signal handlers are in place
    return process


def down(files: LocalFiles, timeout_s: float = 10.0) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_down(files, timeout_s=timeout_s, answering=lambda: False, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_serve_command_lines() -> None:
    assert is_serve_cmdline(["/v/bin/python3", "-m", "agentcluster.cli", "serve"])
    assert is_serve_cmdline(["/v/bin/python3.11", "/v/bin/agentcluster", "serve", "--address", "x"])
    assert is_serve_cmdline(["agentcluster", "serve"])
    assert not is_serve_cmdline(["agentcluster", "status"])
    assert not is_serve_cmdline(["/usr/bin/vim", "agentcluster", "serve"])
    assert not is_serve_cmdline(["python3", "-c", "pass", "agentcluster", "serve"])
    assert not is_serve_cmdline([sys.executable, "-m", "pytest"])
    assert not is_serve_cmdline([])


def test_the_launcher_that_serve_becomes_is_a_serve_command_line() -> None:
    # `agentcluster serve` execs the edge's launcher in the same process (the PID `up` wrote).
    assert is_serve_cmdline([sys.executable, "-m", SERVE_MODULE, "--address", "local"])
    assert is_serve_cmdline(["/v/bin/python3", "-m", "deployments.launcher"])
    assert not is_serve_cmdline(["/v/bin/python3", "-m", "deployments.gateway"])
    assert not is_serve_cmdline(["/usr/bin/vim", "-m", "deployments.launcher"])


def test_the_launcher_module_answers_as_agentcluster_serve() -> None:
    done = subprocess.run(
        [sys.executable, "-m", SERVE_MODULE, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: agentcluster serve [-h] [--address ADDRESS]")


def test_read_pid_ignores_garbage(tmp_path: Path) -> None:
    path = tmp_path / "agentcluster.pid"
    assert read_pid(path) is None
    for text in ("", "abc", "-5", "0"):
        path.write_text(text)
        assert read_pid(path) is None
    path.write_text("123\n")
    assert read_pid(path) == 123


def test_down_refuses_a_pid_that_is_not_agentcluster_serve(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path)
    files.pid_file.write_text(f"{os.getpid()}\n")  # this pytest process
    code, _, err = down(files)
    assert code == 1
    assert f"pid {os.getpid()}" in err and "not `agentcluster serve`" in err
    assert is_alive(os.getpid())
    assert files.pid_file.exists()  # left for a human to look at


def test_down_without_a_pid_file_or_with_a_dead_pid(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path)
    assert down(files) == (0, "not running\n", "")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    files.pid_file.write_text(str(gone.pid))
    code, out, _ = down(files)
    assert (code, files.pid_file.exists()) == (0, False)
    assert "stale PID file" in out


def test_down_interrupts_an_agentcluster_serve(
    tmp_path: Path, fake_serve: list[subprocess.Popen[str]]
) -> None:
    process = start_fake_serve(tmp_path, fake_serve)
    files = LocalFiles(tmp_path)
    files.pid_file.write_text(str(process.pid))
    code, out, _ = down(files)
    assert (code, out.splitlines()[-1]) == (0, "stopped")
    assert process.wait(timeout=10) == 0  # exited through its SIGINT handler
    assert not files.pid_file.exists()


def test_down_escalates_to_sigkill(tmp_path: Path, fake_serve: list[subprocess.Popen[str]]) -> None:
    process = start_fake_serve(tmp_path, fake_serve, "--stubborn")
    files = LocalFiles(tmp_path)
    files.pid_file.write_text(str(process.pid))
    code, _, _ = down(files, timeout_s=0.3)
    assert code == 0
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert not files.pid_file.exists()


def test_up_is_idempotent_when_serve_runs_and_answers(
    tmp_path: Path, settings: Settings, fake_serve: list[subprocess.Popen[str]]
) -> None:
    process = start_fake_serve(tmp_path, fake_serve)
    files = LocalFiles(tmp_path)
    files.pid_file.write_text(str(process.pid))
    out, err = io.StringIO(), io.StringIO()
    code = run_up(settings, "http://x", lambda: "ready", wait_s=1, out=out, err=err)
    assert code == 0
    assert out.getvalue().startswith(f"already up (pid {process.pid})\n")
    assert read_pid(files.pid_file) == process.pid
    assert not files.log_file.exists()  # nothing was started


def test_up_drops_a_foreign_pid_file_and_starts_nothing_when_a_gateway_answers(
    settings: Settings,
) -> None:
    files = LocalFiles(settings.data_dir)
    files.pid_file.write_text(str(os.getpid()))
    out, err = io.StringIO(), io.StringIO()
    code = run_up(settings, "http://x", lambda: "ready", wait_s=1, out=out, err=err)
    assert code == 0
    assert "not started by `agentcluster up`" in out.getvalue()
    assert not files.pid_file.exists() and not files.log_file.exists()
    assert is_alive(os.getpid())
