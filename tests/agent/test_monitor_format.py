"""The monitor's human output line."""
import pytest

pytestmark = pytest.mark.unit

def test_monitor_line_names_time_reason_endpoint_identities_and_flow():
    from cli.observe import format_event
    line = format_event({"time": 0.25, "type": "drop", "epID": 3, "direction": "ingress",
                         "srcIdentity": 258, "dstIdentity": 256, "src": "fd00::4", "dst": "fd00::2",
                         "sport": 40012, "dport": 8080, "proto": "tcp", "reason": "policy-denied"})
    assert line.endswith("DROP (policy-denied) ep 3 ingress: identity 258 -> 256  "
                         "[fd00::4]:40012 -> [fd00::2]:8080 tcp")
    assert line[8:12] == ".250"
