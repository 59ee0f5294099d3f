"""Agent log formats, the recent-errors ring, operations, and the CLI progress helper."""

import io
import json
import threading

import pytest

from agent import logs
from agent.operations import Operations
from cli.progress import Progress, run_with_progress, wanted

pytestmark = pytest.mark.unit


@pytest.fixture
def agent_log(tmp_path):
    def make(fmt):
        path = tmp_path / ("agent-%s.log" % fmt)
        log, ring = logs.setup(str(path), "debug", fmt)
        return log, ring, path
    yield make
    logs.setup("", "info")  # drop the file handlers


EP = {"containerID": "c0ffee", "ifname": "eth0", "k8s": {"namespace": "shop", "podName": "web-1"}}


def test_text_lines_carry_the_pod(agent_log):
    log, _, path = agent_log("text")
    log.info("endpoint %d created", 7, extra=logs.pod_fields(EP))
    log.info("housekeeping done")
    first, second = path.read_text().splitlines()
    assert first.endswith(" info endpoint 7 created containerID=c0ffee ifname=eth0 "
                          "podNamespace=shop podName=web-1")
    assert second.endswith(" info housekeeping done")


def test_json_lines_carry_the_pod(agent_log):
    log, _, path = agent_log("json")
    log.warning("ADD failed", extra=logs.pod_fields(key="abc:net1"))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("internal error", extra=logs.pod_fields(EP))
    a, b = (json.loads(ln) for ln in path.read_text().splitlines())
    assert {k: a[k] for k in ("level", "msg", "containerID", "ifname")} == {
        "level": "warning", "msg": "ADD failed", "containerID": "abc", "ifname": "net1"}
    assert "podName" not in a and a["time"].endswith("Z")
    assert (b["podNamespace"], b["podName"]) == ("shop", "web-1")
    assert "ValueError: boom" in b["exception"]


def test_error_ring_keeps_the_last_warnings_and_errors(agent_log):
    log, ring, _ = agent_log("text")
    log.info("not kept")
    for i in range(logs.ERROR_RING_SIZE + 5):
        log.error("error %d", i, extra=logs.pod_fields(EP) if i % 2 else {})
    recent = ring.recent(3)
    assert [e["msg"] for e in recent] == ["error %d" % i for i in range(52, 55)]
    assert recent[0].get("containerID") is None and recent[1]["containerID"] == "c0ffee"
    assert len(ring.recent(1000)) == logs.ERROR_RING_SIZE


def test_operations_report_progress_and_outcome():
    ops = Operations()
    seen = []

    def work(op):
        for i in range(1, 4):
            op.update(i, 3)
            seen.append(ops.get("my-op")["done"])
        return "result"

    assert ops.run("policy-import", work, "my-op") == "result"
    assert seen == [1, 2, 3]
    view = ops.get("my-op")
    assert (view["state"], view["done"], view["total"], view["error"]) == ("done", 3, 3, None)
    with pytest.raises(RuntimeError):
        ops.run("policy-import", lambda op: (_ for _ in ()).throw(RuntimeError("bad file")))
    assert ops.last("policy-import")["state"] == "failed"
    assert ops.last("policy-import")["error"] == "bad file"
    assert ops.start("x", "not/a valid id").id.startswith("x-")


def test_operation_logs_progress_at_most_every_interval(monkeypatch):
    records = []

    class Log:
        def info(self, fmt, *args):
            records.append(fmt % args)

    clock = iter([0.0, 0.5, 2.5, 2.6, 5.0])
    monkeypatch.setattr("agent.operations.time.monotonic", lambda: next(clock))
    op = Operations(Log()).start("endpoint-restore")
    for done in range(1, 5):
        op.update(done, 4)
    assert records == ["endpoint-restore: 2 of 4 done", "endpoint-restore: 4 of 4 done"]


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_or_when_asked():
    assert wanted(False, "table", Tty()) and not wanted(False, "json", Tty())
    assert not wanted(False, "table", io.StringIO()) and wanted(True, "json", io.StringIO())
    quiet = io.StringIO()
    p = Progress("x", False, quiet)
    p.update(1, 2)
    p.close()
    assert quiet.getvalue() == ""


def test_progress_lines_and_redraw():
    plain = io.StringIO()
    p = Progress("import", True, plain, min_interval=0)
    p.update(1, 4)
    p.update(1, 4)  # unchanged: not repeated
    p.update(4, 4)
    p.close()
    lines = plain.getvalue().splitlines()
    assert [ln.split(" ")[1] for ln in lines] == ["1/4", "4/4"]
    assert lines[1].startswith("import: 4/4 (100%)")
    tty = Tty()
    p = Progress("import", True, tty, min_interval=0)
    p.update(2, 4)
    p.close()
    assert tty.getvalue().startswith("\r\033[Kimport: 2/4 (50%)") and tty.getvalue().endswith("\n")


def test_run_with_progress_polls_while_the_call_runs():
    step = threading.Event()
    state = {"done": 0}

    def call():
        for i in range(1, 4):
            state["done"] = i
            step.wait(0.05)
        return "ok"

    out = io.StringIO()
    result = run_with_progress(call, lambda: (state["done"], 3),
                               Progress("op", True, out, min_interval=0), interval=0.01)
    assert result == "ok"
    shown = [ln.split(" ")[1] for ln in out.getvalue().splitlines()]
    assert shown[-1] == "3/3" and len(shown) >= 2  # seen mid-way, then finished

    def failing():
        raise ValueError("agent said no")

    with pytest.raises(ValueError, match="agent said no"):
        run_with_progress(failing, lambda: None, Progress("op", True, io.StringIO()))


def test_pod_fields_of_requests_keys_and_nothing():
    assert logs.pod_fields(key="c1:eth0") == {"containerID": "c1", "ifname": "eth0"}
    assert logs.pod_fields({"containerID": "c", "ifname": "e", "k8s": {}}) == {
        "containerID": "c", "ifname": "e"}
    assert logs.pod_fields() == {}
