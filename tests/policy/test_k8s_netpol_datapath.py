"""The Kubernetes documentation's NetworkPolicy examples, translated
(agent/k8s/netpol.py) and enforced by the loaded programs: every verdict
the page states (tests/policy/k8s_netpol_cases.py), for packets run
through `to_container`/`from_container` with BPF_PROG_TEST_RUN.

The agent's flow is test_rules_property's `build` (identities, CIDR
identities and ipcache claims as agent/enforcement.py makes them, the
selector cache, the repository, the endpoint's entries as deltas), and
its `Checker` also holds each verdict to the reference over the rules and
the drop events and counters to the verdicts.
"""

import pytest

from agent.k8s import netpol
from tests.policy import k8s_netpol_cases as C
from tests.policy.test_rules_property import case  # noqa: F401 (the fixture)

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("policy_first", [True, False], ids=["policy-first", "endpoint-first"])
@pytest.mark.parametrize("case_", C.CASES, ids=C.case_id)
def test_documented_verdicts_in_the_datapath(case, case_, policy_first):  # noqa: F811
    name, local, expected = case_
    remotes = [(labels, (address,)) for pod, (labels, address) in C.PODS.items() if pod != local]
    numbers = [300 + i for i in range(len(C.PODS))]
    checker, _, rules, _, _, ep = case(netpol.rules(C.load(name)), C.PODS[local][0], remotes, numbers,
                                       policy_first)
    got = []
    for direction, remote, proto, port, _ in expected:
        got.append(checker.check(rules, ep, direction, C.remote(remote)[1], proto, port))
    assert got == [want for *_, want in expected]
    checker.settle()
