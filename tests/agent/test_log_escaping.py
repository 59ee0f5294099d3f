"""The agent's log writes what clients send escaped: no line is lost."""

import json

import pytest

from agent import logs

pytestmark = pytest.mark.unit


def test_a_lone_surrogate_is_written_escaped_not_lost(tmp_path, capfd):
    # Regression: invalid UTF-8 from a request ("\udc80" in a JSON string)
    # printed "--- Logging error ---" tracebacks and the lines were lost.
    path = tmp_path / "agent.log"
    log, ring = logs.setup(str(path), "info")
    bad = "ctr-\udc80"
    log.warning("PUT /v1/endpoints/%s:eth0 failed", bad, extra=logs.pod_fields(key=bad + ":eth0"))
    for handler in log.handlers:
        handler.flush()
    assert "Logging error" not in capfd.readouterr().err
    line = path.read_text()
    assert "PUT /v1/endpoints/ctr-\\udc80:eth0 failed" in line
    assert "containerID=ctr-\\udc80" in line
    assert ring.recent()[-1]["msg"] == "PUT /v1/endpoints/ctr-\\udc80:eth0 failed"
    json.dumps(ring.recent()).encode()  # `status` can send it


def test_json_lines_escape_it_too(tmp_path, capfd):
    path = tmp_path / "agent.log"
    log, _ = logs.setup(str(path), "info", fmt="json")
    log.warning("bad \udc80 byte")
    for handler in log.handlers:
        handler.flush()
    assert "Logging error" not in capfd.readouterr().err
    assert json.loads(path.read_text())["msg"] == "bad \udc80 byte"


def test_client_text_is_escaped_for_the_log():
    assert logs.escaped("/v1/\xff\udc80") == "/v1/\\xff\\udc80"
