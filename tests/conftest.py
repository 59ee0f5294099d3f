"""Fixtures shared by the real-kernel tests: agents, networks, pods.

Each fixture removes what it made (by name or pid) even when the test fails.

The tests are in folders by concept (plugin, chaining, agent, policy,
services, datapath, cli, benchmarks); each file's kind is a marker: `unit`
(no root, no kernel objects), `kernel` (real kernel objects: netns, bpffs, tc),
`e2e` (real processes: the agent, the plugin executable, the CLI,
reference plugins). `pytest -m unit tests/services` runs the services'
unit tests; `pytest tests/policy` every policy test.
"""

import ipaddress
import itertools
import os
import shutil

import pytest

from tests import lab

# The kernel tests' fixtures (a pod on a veth, a bpffs root, a datapath), for every folder.
pytest_plugins = ["tests.kernel"]

_subnets = itertools.count(10)


@pytest.fixture
def cni_path(tmp_path):
    """A CNI bin dir holding our plugin, searched before the reference plugins."""
    bindir = tmp_path / "cni-bin"
    bindir.mkdir()
    os.symlink(lab.PLUGIN_BIN, bindir / "cilium-cni")
    return "%s:%s" % (bindir, lab.REFERENCE_PLUGINS)


@pytest.fixture
def make_agent(tmp_path):
    agents = []

    def make(workdir=None, bpf_root=None, start=True, config=None, socket_lb=False, env=None):
        a = lab.Agent(str(workdir or tmp_path / ("agent%d" % len(agents))), bpf_root, config,
                      socket_lb=socket_lb, env=env)
        agents.append(a)
        return a.start() if start else a

    yield make
    for a in agents:
        a.cleanup()


@pytest.fixture
def agent(make_agent):
    return make_agent()


@pytest.fixture
def pods():
    made = []

    def make():
        ns = lab.Netns()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.remove()


class Network:
    """A bridge network chained into cilium-cni; its bridge is removed after."""

    def __init__(self, tmp_path, agent, cni_path, cni_version="1.0.0", extra_plugins=(),
                 ipv6=False):
        n = next(_subnets)
        self.bridge = lab.unique("ccbr")
        self.subnet = ipaddress.ip_network("10.213.%d.0/24" % n)
        self.name = lab.unique("ccnet-")
        self.conflist = lab.bridge_conflist(
            self.name, self.bridge, str(self.subnet), str(tmp_path / ("ipam-%s" % self.name)),
            agent.socket, cni_version=cni_version, extra_plugins=extra_plugins,
            subnet6="fd00:213:%x::/64" % n if ipv6 else None)
        self.chain = lab.Chain(self.conflist, cni_path, max_version=lab.REFERENCE_MAX_VERSION)
        self.plugin_log = self.conflist["plugins"][-1]["log-file"]

    def remove(self):
        lab.sh("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
def make_network(tmp_path, cni_path):
    made = []

    def make(agent, **kw):
        net = Network(tmp_path, agent, cni_path, **kw)
        made.append(net)
        return net

    yield make
    for net in made:
        net.remove()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_attached(request):
    """The suite's agents, datapaths and benchmarks leave no program of ours
    attached: the cgroup roots and every link of the host namespace hold
    none at the end that they did not hold at the start (an orphan there
    runs on every connect() of the machine; docs/operations.md, "Orphans").

    Only in runs with root tests: those run under the shared lock, so no
    other run attaches anything meanwhile."""
    if os.geteuid() != 0 or not any("require_root" in item.fixturenames
                                    for item in request.session.items):
        yield
        return
    from datapath import footprint
    cgroups = footprint.cgroup_roots()
    before = set(footprint.attached(cgroups))
    yield
    left = [a for a in footprint.attached(cgroups) if a not in before]
    if left:
        pytest.fail("the run left %d program(s) of cilium-cni attached: %s" % (
            len(left), "; ".join("%s (program %d) on %s" % (a.name, a.prog_id, a.where())
                                 for a in left)), pytrace=False)


@pytest.fixture(scope="session")
def require_root():
    """Real-kernel tests need root and iproute2; fail loudly, never skip."""
    if os.geteuid() != 0:
        pytest.fail("the test suite needs root (network namespaces, tc, bpffs)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            pytest.fail("'%s' is missing: run scripts/setup" % tool)


def pytest_collection_modifyitems(items):
    """Every test has exactly one kind (see above): a file without one is a mistake."""
    kinds = {"unit", "kernel", "e2e"}
    for item in items:
        marked = kinds & {m.name for m in item.iter_markers()}
        if len(marked) != 1:
            raise pytest.UsageError("%s: mark the module with one of pytest.mark.unit, "
                                    ".kernel, .e2e (has %s)" % (item.nodeid, sorted(marked)))
