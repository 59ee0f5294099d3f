"""The benchmark's kube-proxy rule generator: kube-proxy's names, spread and syntax."""

import re
import shutil
import subprocess

import pytest

from tests import kubeproxy, lab

pytestmark = pytest.mark.unit


def svc(name="web", port_name="http", endpoints=("10.1.0.5:8080",), ip="10.96.0.10"):
    return kubeproxy.Service("default", name, port_name, ip, 80, tuple(endpoints))


def test_chain_names_are_the_ones_seen_on_real_clusters():
    # Names from iptables-save dumps of real clusters: the API server's service,
    # kube-dns's two ports, an unnamed port (newer "ns/name" form), and an endpoint
    # chain of an unnamed port under the older "ns/name:" form with its DNAT target.
    assert kubeproxy.svc_chain("default/kubernetes:https", "tcp") == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert kubeproxy.svc_chain("kube-system/kube-dns:dns", "udp") == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    assert kubeproxy.svc_chain("kube-system/kube-dns:dns-tcp", "tcp") == \
        "KUBE-SVC-ERIFXISQEP7F7OF4"
    assert kubeproxy.svc_chain("default/nginx", "tcp") == "KUBE-SVC-2CMXP7HKUVJN7L6M"
    assert kubeproxy.sep_chain("default/kubernetes-bootcamp-v1:", "tcp", "10.244.1.2:8080") == \
        "KUBE-SEP-FTIQ6MSD3LWO5HZX"
    assert svc(port_name="").port_name_string == "default/web"
    assert svc().port_name_string == "default/web:http"


def test_rules_for_a_service_with_three_endpoints():
    s = svc(endpoints=("10.1.0.5:8080", "10.1.0.6:8080", "10.1.0.7:8080"))
    text, chains = kubeproxy.restore_input([s], "10.1.0.0/16")
    chain = kubeproxy.svc_chain("default/web:http", "tcp")
    seps = [kubeproxy.sep_chain("default/web:http", "tcp", e) for e in s.endpoints]
    assert chains["nat"] == ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                             "KUBE-MARK-MASQ", chain, *seps]
    lines = text.splitlines()
    services = [x for x in lines if x.startswith("-A KUBE-SERVICES ")]
    assert services == [
        '-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp '
        '-d 10.96.0.10/32 --dport 80 ! -s 10.1.0.0/16 -j KUBE-MARK-MASQ',
        '-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp '
        '-d 10.96.0.10/32 --dport 80 -j ' + chain,
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS']
    spread = [x for x in lines if x.startswith("-A %s " % chain)]
    assert [re.findall(r"--probability (\S+)", x) for x in spread] == \
        [["0.3333333333"], ["0.5000000000"], []]
    assert [x.rsplit(" ", 1)[1] for x in spread] == seps
    assert all("-m statistic --mode random" in x for x in spread[:2])
    assert [x for x in lines if x.startswith("-A %s " % seps[1])] == [
        "-A %s -m comment --comment default/web:http -s 10.1.0.6/32 -j KUBE-MARK-MASQ" % seps[1],
        "-A %s -m comment --comment default/web:http -m tcp -p tcp -j DNAT "
        "--to-destination 10.1.0.6:8080" % seps[1]]
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x00004000/0x00004000" in lines
    assert any(x.startswith("-A KUBE-POSTROUTING ") and x.endswith(
        "-m mark --mark 0x00004000/0x00004000 -j MASQUERADE") for x in lines)


def test_probabilities_are_one_over_the_endpoints_left():
    assert [kubeproxy.probability(n) for n in (4, 3, 2)] == \
        ["0.2500000000", "0.3333333333", "0.5000000000"]


def test_endpoint_comments_dropped_above_kube_proxys_threshold():
    many = [svc(name="s%d" % i, ip="10.96.%d.%d" % (i // 250, i % 250 + 1),
                endpoints=("10.1.0.5:8080", "10.1.0.6:8080")) for i in range(501)]
    text, _ = kubeproxy.restore_input(many, "10.1.0.0/16")
    assert not [x for x in text.splitlines()
                if x.startswith("-A KUBE-SEP-") and "--comment" in x]
    text, _ = kubeproxy.restore_input(many[:500], "10.1.0.0/16")
    assert all("--comment" in x for x in text.splitlines() if x.startswith("-A KUBE-SEP-"))


@pytest.mark.parametrize("binary", ["iptables-restore", "iptables-legacy-restore"])
def test_iptables_restore_accepts_the_rules(binary):
    if shutil.which(binary) is None:
        pytest.skip("%s is not installed" % binary)
    services = [svc(name="s%d" % i, ip="10.96.0.%d" % (i + 1),
                    endpoints=["10.1.0.%d:8080" % (j + 2) for j in range(i + 1)])
                for i in range(3)]
    text, chains = kubeproxy.restore_input(services, "10.1.0.0/16")
    ns = lab.Netns()  # a namespace of its own: the host's tables are never touched
    try:
        def restore(data, *flags):
            proc = subprocess.run(["ip", "netns", "exec", ns.name, binary, "--noflush", *flags],
                                  input=data, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr

        restore(text, "--test")
        restore(text)  # what --test accepted really loads, into chains of those names
        restore(kubeproxy.jump_rules(), "--test")  # the jumps need their chains to exist
        restore(kubeproxy.jump_rules())
        saved = ns.run(binary.replace("-restore", "-save"), "-t", "nat").stdout
        assert ":%s" % kubeproxy.svc_chain("default/s2:http", "tcp") in saved
        assert saved.count("-m statistic --mode random") == 0 + 1 + 2
        assert '-A PREROUTING -m comment --comment "kubernetes service portals" ' \
            '-j KUBE-SERVICES' in saved
        restore(kubeproxy.removal_input(chains))  # and removal_input() removes all of it
        for table in ("filter", "nat"):
            assert "KUBE-" not in ns.run(binary.replace("-restore", "-save"), "-t", table).stdout
    finally:
        ns.remove()
