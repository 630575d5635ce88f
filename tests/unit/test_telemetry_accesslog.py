"""The one access-log writer (mesh.telemetry.accesslog) of both proxies: a record's
line is what json.dumps of its fields writes, lines of one loop turn go out in one
write + flush, and a record type it cannot render is refused when it is defined."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.telemetry.accesslog import AccessLog as Writer
from mesh.telemetry.accesslog import json_renderer
from nodeagent.accesslog import AccessLog, ConnectionRecord

text = st.text(max_size=30)  # any unicode: quotes, backslashes, braces, %, controls


@given(text, text, text, st.integers(0, 2**62), st.floats(0, 1e12, allow_nan=False))
def test_connection_record_json_is_what_json_dumps_writes(reason: str, policy: str,
                                                          workload: str, n: int,
                                                          started: float) -> None:
    rec = ConnectionRecord("outbound", "10.0.0.1", "{}%s'\"\\", source_workload=workload,
                           request_bytes=n, reason=reason, policy=policy, started=started)
    assert rec.to_json() == json.dumps({"log": "access", **asdict(rec)},
                                       separators=(",", ":"))


def test_node_proxy_lines_of_one_loop_turn_are_written_together() -> None:
    """The node proxy used to write and flush once per connection."""
    writes: list[str] = []

    class Sink(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return super().write(s)

    sink = Sink()
    log = AccessLog(sink)

    async def main() -> None:
        for i in range(3):
            log.write(ConnectionRecord("inbound", f"10.0.0.{i}", "10.0.1.1:80"))
        assert sink.getvalue() == ""  # not yet: at the end of this turn
        await anyio.sleep(0)
        await anyio.sleep(0)

    anyio.run(main)
    assert len(writes) == 1
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert [r["source_address"] for r in lines] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert all(r["log"] == "access" and r["duration_ms"] >= 0 for r in lines)


def test_default_sink_is_stdout_and_none_disables(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog().write(ConnectionRecord("outbound", "10.0.0.1", "10.0.0.2:80"))
    assert json.loads(capsys.readouterr().out)["destination_address"] == "10.0.0.2:80"
    off = Writer(None)
    off.write(ConnectionRecord("outbound", "a", "b"))
    off.flush()
    assert not off.enabled and capsys.readouterr().out == ""
    assert Writer().enabled and Writer()._sink is sys.stdout


def test_a_field_it_cannot_render_is_refused_when_the_record_is_defined() -> None:
    @dataclass
    class Bad:
        name: str
        tags: list[str]

    with pytest.raises(TypeError, match=r"Bad\.tags: an access-log field must be str, int or"):
        json_renderer(Bad)


def test_a_line_written_as_the_loop_ends_is_not_lost() -> None:
    """The node agent and its workers end with asyncio.run / uvloop.run returning: a
    record written in the last turn (a connection closed by the shutdown) still goes
    out, without the owner calling flush()."""
    import asyncio

    sink = io.StringIO()
    log = AccessLog(sink)

    async def main() -> None:
        log.write(ConnectionRecord("outbound", "10.0.0.1", "10.0.0.2:80", outcome="error"))

    asyncio.run(main())
    assert json.loads(sink.getvalue())["outcome"] == "error"
