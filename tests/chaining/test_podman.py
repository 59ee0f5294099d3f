"""End to end under a real runtime: podman (CNI backend) runs busybox containers
through libcni, the library containerd and CRI-O use, with the conflists
`bridge` → `portmap` → `cilium-cni` and `ptp` → `cilium-cni`.

Nothing global is changed: podman gets a private containers.conf
(CONTAINERS_CONF), storage.conf (CONTAINERS_STORAGE_CONF), CNI config dir,
plugin dir, storage and cgroup parent, all made here and removed after. What
podman itself puts in global places (its netns under /run/netns, libcni's
result cache under /var/lib/cni/results, portmap's iptables rules) goes
away with `podman rm`; portmap's shared top-level chains, libcni's cache
directory and runc's state directory are removed after the module when this
module created them and they are empty.

What podman 4.3 sends (recorded by the wrapper below; asserted in the tests):
VERSION (env CNI_PATH/CNI_NETNS/CNI_IFNAME="dummy", empty CNI_CONTAINERID,
stdin {"cniVersion": <the conflist's>}) before ADD and DEL: libcni checks that
every plugin supports the conflist's version and otherwise ignores the
conflist (Debian's bridge and portmap stop at 1.0.0); ADD and DEL with CNI_ARGS
"IgnoreUnknown=1;K8S_POD_NAME=<container name>" plus whatever the podman
process had in its own CNI_ARGS (so K8S_POD_NAMESPACE can be given that
way); the conflist's cniVersion; no CHECK ever; DEL's prevResult is the
final ADD result from libcni's cache. Per-container netconf `args` are not
possible (the conflist's static `args` are passed through as written).
"""

import ipaddress
import json
import os
import random
import re
import shutil
import socket
import subprocess
import textwrap
import time

import pytest

from datapath.maps.ct import ct_key_ep
from datapath.maps.ipcache import ipcache_cidr
from datapath.maps.policy import policy_key_ep
from tests import lab
from tests.chaining.test_chain import map_dump

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

CACHE_DIR = "/var/lib/cni/results"  # libcni's default; podman 4.3 does not change it
RUNC_ROOT = "/run/runc"
PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
PORTMAP_JUMPS = (
    ("PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"),
    ("POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade",
     "-j", "CNI-HOSTPORT-MASQ"),
)
INDEX = "hello from a podman container\n"
_SUBNETS_TAKEN = set()

# Records every call podman makes (env, stdin, stdout, exit code), then runs
# the plugin: the tests read what the runtime really sent.
RECORDER = """#!/bin/sh
d="{calls}/${{CNI_CONTAINERID:-none}}"
mkdir -p "$d"
f="$d/$(date +%s%N)-$CNI_COMMAND"
env | grep '^CNI_' > "$f.env"
cat > "$f.in"
"{plugin}" < "$f.in" > "$f.out"
rc=$?
cat "$f.out"
echo "$rc" > "$f.rc"
exit "$rc"
"""


def _missing_runtime():
    for tool in ("podman", "runc", "conmon", "nsenter", "iptables", "busybox"):
        if shutil.which(tool) is None and not os.path.exists("/usr/libexec/podman/" + tool):
            return tool
    return None


def _nat_rules():
    return lab.sh("iptables", "-t", "nat", "-S").stdout.splitlines()


def _portmap_chains_exist():
    return any(r.split()[:2] == ["-N", "CNI-HOSTPORT-DNAT"] for r in _nat_rules())


def _remove_portmap_chains():
    """portmap's shared chains, once nothing is in them (only when we made them)."""
    if any(r.startswith("-A CNI-HOSTPORT-DNAT ") for r in _nat_rules()):
        return
    for jump in PORTMAP_JUMPS:
        lab.sh("iptables", "-t", "nat", "-D", *jump, check=False)
    for chain in PORTMAP_CHAINS:
        lab.sh("iptables", "-t", "nat", "-F", chain, check=False)
        lab.sh("iptables", "-t", "nat", "-X", chain, check=False)


def _cgroup_dirs(name):
    """The cgroup `name` under every hierarchy (v1 controllers, v2 unified)."""
    tops = [os.path.join("/sys/fs/cgroup", name)]
    tops += [os.path.join("/sys/fs/cgroup", c, name) for c in os.listdir("/sys/fs/cgroup")]
    return [t for t in tops if os.path.isdir(t)]


def _remove_cgroup(name):
    for top in _cgroup_dirs(name):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def _free_subnet():
    """A /24 in 10.231.0.0/16 the host has no address or route in (this module
    may run in several test sessions at once on one machine)."""
    used = lab.sh("ip", "-4", "-o", "addr", "show").stdout + lab.sh("ip", "-4", "route").stdout
    taken = _SUBNETS_TAKEN | {int(n) for n in re.findall(r"\b10\.231\.(\d+)\.", used)}
    free = sorted(set(range(1, 255)) - taken)
    if not free:
        raise AssertionError("no free /24 in 10.231.0.0/16")
    n = random.choice(free)
    _SUBNETS_TAKEN.add(n)
    return "10.231.%d.0/24" % n


def subnet(conflist):
    return conflist["plugins"][0]["ipam"]["subnet"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(addr, port, timeout=3.0):
    """The body of GET / from the host, or None if nothing answered."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data.decode(errors="replace")


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


class Container:
    def __init__(self, podman, cid, name, network):
        self.podman, self.id, self.name, self.network = podman, cid, name, network
        info = json.loads(podman("inspect", cid).stdout)[0]
        settings = info["NetworkSettings"]
        self.netns = settings["SandboxKey"]
        self.ip = settings["Networks"][network]["IPAddress"]
        self.prefixlen = settings["Networks"][network]["IPPrefixLen"]

    @property
    def key(self):
        return "%s:eth0" % self.id

    def fetch(self, ip, port=8080, wait=3):
        """GET / from inside this container with busybox nc: the body or None."""
        out = self.podman("exec", self.id, "sh", "-c",
                          "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w %d %s %d"
                          % (wait, ip, port), check=False, timeout=wait + 30)
        return out.stdout if "200 OK" in out.stdout else None

    def host_peer_ifindex(self):
        out = lab.sh("nsenter", "--net=%s" % self.netns, "ip", "-j", "link", "show", "eth0")
        return json.loads(out.stdout)[0]["link_index"]


class Podman:
    """podman with a private config, storage and CNI dirs; created ids are removed."""

    def __init__(self, root, agent):
        self.root, self.agent = root, agent
        self.calls = os.path.join(root, "calls")
        self.net_dir = os.path.join(root, "net.d")
        self.bin_dir = os.path.join(root, "cni-bin")
        self.rootfs = os.path.join(root, "rootfs")
        self.cgroup = lab.unique("ccni-podman-")
        self.created = []
        self.bridges = []
        for d in (self.calls, self.net_dir, self.bin_dir, os.path.join(self.rootfs, "bin"),
                  os.path.join(self.rootfs, "www"), os.path.join(root, "tmp")):
            os.makedirs(d, exist_ok=True)
        shutil.copy(shutil.which("busybox"), os.path.join(self.rootfs, "bin", "busybox"))
        for tool in ("sh", "ip", "nc", "sleep", "cat", "httpd", "printf", "ping"):
            os.symlink("busybox", os.path.join(self.rootfs, "bin", tool))
        with open(os.path.join(self.rootfs, "www", "index.html"), "w") as f:
            f.write(INDEX)
        wrapper = os.path.join(self.bin_dir, "cilium-cni")
        with open(wrapper, "w") as f:
            f.write(RECORDER.format(calls=self.calls, plugin=lab.PLUGIN_BIN))
        os.chmod(wrapper, 0o755)
        self.conf = os.path.join(root, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent("""\
                [containers]
                default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
                [engine]
                runtime = "runc"
                cgroup_manager = "cgroupfs"
                events_logger = "file"
                events_logfile_path = "{root}/events.log"
                tmp_dir = "{root}/tmp"
                [network]
                network_backend = "cni"
                cni_plugin_dirs = ["{bin}", "{ref}"]
                network_config_dir = "{net}"
                """).format(root=root, bin=self.bin_dir, ref=lab.REFERENCE_PLUGINS,
                            net=self.net_dir))
        self.storage_conf = os.path.join(root, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write('[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/storage"\n'
                    % (root, root))

    def env(self, cni_args=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CONTAINERS_CONF=self.conf, CONTAINERS_STORAGE_CONF=self.storage_conf)
        if cni_args:
            env["CNI_ARGS"] = cni_args  # podman appends its own CNI_ARGS to what it sends
        return env

    def __call__(self, *args, check=True, cni_args=None, timeout=60):
        proc = subprocess.run(["podman", *args], capture_output=True, text=True,
                              env=self.env(cni_args), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError("podman %s failed rc=%d: %s%s" % (
                " ".join(args), proc.returncode, proc.stderr, self.agent.log()[-1500:]))
        return proc

    def add_network(self, name, first, subnet, cilium_extra=None, cni_version="1.0.0"):
        ipam = {"type": "host-local", "subnet": subnet,
                "dataDir": os.path.join(self.root, "ipam")}
        first = dict(first, ipMasq=False, ipam=ipam)
        if first["type"] == "bridge":
            self.bridges.append(first["bridge"])
        plugins = [first]
        if first["type"] == "bridge":
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        plugins.append(dict({"type": "cilium-cni", "chaining-mode": "generic-veth",
                             "agent-socket": self.agent.socket,
                             "log-file": os.path.join(self.root, "plugin.log")},
                            **(cilium_extra or {})))
        conflist = {"cniVersion": cni_version, "name": name, "plugins": plugins}
        with open(os.path.join(self.net_dir, name + ".conflist"), "w") as f:
            json.dump(conflist, f)
        return conflist

    def run(self, network, *cmd, ports=(), namespace=None):
        """A detached container on `network`; K8S_POD_NAMESPACE via podman's CNI_ARGS."""
        name = lab.unique("ccni-")
        flags = ["--name", name, "--network", network, "--cgroup-parent", "/" + self.cgroup]
        for host_port, port in ports:
            flags += ["-p", "%d:%d" % (host_port, port)]
        flags += ["--rootfs", self.rootfs]  # a switch: the first argument is the rootfs
        proc = self("run", "-d", *flags, *cmd, check=False,
                    cni_args="K8S_POD_NAMESPACE=%s" % namespace if namespace else None)
        # A failed run can still leave a container behind: remove it by name.
        self.created.append(proc.stdout.strip() or name)
        if proc.returncode != 0:
            raise AssertionError("podman run failed rc=%d: %s\n%s" % (
                proc.returncode, proc.stderr, self.agent.log()[-1500:]))
        return Container(self, proc.stdout.strip(), name, network)

    def web(self, network, **kw):
        return self.run(network, "httpd", "-f", "-p", "8080", "-h", "/www", **kw)

    def sleeper(self, network, **kw):
        return self.run(network, "sleep", "600", **kw)

    def rm(self, *containers):
        ids = [c if isinstance(c, str) else c.id for c in containers]
        if ids:
            self("rm", "-f", "-t", "0", "--ignore", *ids, check=False)

    def recorded(self, cid):
        """The plugin calls for `cid` in order: [{command, env, stdin, stdout, rc}]."""
        d = os.path.join(self.calls, cid)
        out = []
        for stem in sorted({f.rsplit(".", 1)[0] for f in os.listdir(d)} if os.path.isdir(d)
                           else ()):
            def read(ext, stem=stem):
                with open(os.path.join(d, "%s.%s" % (stem, ext))) as f:
                    return f.read()
            env = dict(line.split("=", 1) for line in read("env").splitlines() if "=" in line)
            stdout = read("out").strip()
            out.append({"command": env.get("CNI_COMMAND"), "env": env, "t": int(stem.split("-")[0]),
                        "stdin": json.loads(read("in")),
                        "stdout": json.loads(stdout) if stdout else None,
                        "rc": int(read("rc") or -1)})
        return out

    def cleanup(self):
        self.rm(*self.created)
        for _ in range(2):  # whatever podman could not remove: kill, then remove again
            left = self("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
            if not left:
                break
            self._kill_leftovers()
            self.rm(*left)
        self._wait_for_exit_commands()
        for cid in self.created:  # runc state of a container podman lost track of
            if os.path.isdir(os.path.join(RUNC_ROOT, cid)):
                lab.sh("runc", "delete", "--force", cid, check=False)
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for mnt in sorted((m for m in mounts if m.startswith(self.root + "/")), reverse=True):
            lab.sh("umount", "-l", mnt, check=False)
        _remove_cgroup(self.cgroup)
        for bridge in self.bridges:
            lab.sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_for_exit_commands(self, timeout=15.0):
        """conmon runs `podman container cleanup` after a container exits; its
        storage must outlive those processes (they name our root)."""
        needle = self.root.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = False
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        busy = needle in f.read()
                except OSError:
                    continue
                if busy:
                    break
            if not busy:
                return
            time.sleep(0.1)

    def _kill_leftovers(self):
        """Processes still in our private cgroup (a container podman failed to
        remove, its conmon): they are ours, killed by pid."""
        pids = set()
        for top in _cgroup_dirs(self.cgroup):
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(p) for p in f.read().split())
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if pids:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One agent, one private podman and two networks for the whole module."""
    missing = _missing_runtime()
    if missing:
        pytest.skip("podman tests need '%s': install podman and runc (scripts/setup does)"
                    % missing)
    work = tmp_path_factory.mktemp("podman")
    had_portmap_chains = _portmap_chains_exist()
    # libcni's cache and runc's state dirs: podman's exit command does not pass
    # runtime flags on, so runc keeps its default root
    made_dirs = [d for d in (CACHE_DIR, os.path.dirname(CACHE_DIR), RUNC_ROOT)
                 if not os.path.exists(d)]
    agent = lab.Agent(str(work / "agent"))
    podman = None
    try:
        agent.start()
        podman = Podman(str(work / "podman"), agent)
        bridge = podman.add_network(lab.unique("ccpod-"),
                                    {"type": "bridge", "bridge": lab.unique("ccpbr"),
                                     "isGateway": True, "isDefaultGateway": True},
                                    _free_subnet())
        ptp = podman.add_network(lab.unique("ccptp-"), {"type": "ptp"}, _free_subnet(),
                                 {"args": {"cni": {"labels": [{"key": "net", "value": "ptp"}]}}})
        yield podman, agent, bridge, ptp
    finally:
        if podman is not None:
            podman.cleanup()
        if not had_portmap_chains:
            _remove_portmap_chains()
        for d in made_dirs:  # if they came with us and are empty now
            try:
                os.rmdir(d)
            except OSError:
                pass
        agent.cleanup()


@pytest.fixture
def env(setup):
    podman, agent, bridge, ptp = setup
    first = len(podman.created)
    yield podman, agent, bridge, ptp
    podman.rm(*podman.created[first:])


def endpoint(agent, c):
    status, ep = agent.api("GET", "/v1/endpoints/%s" % c.key)
    return ep if status == 200 else None


def import_policy(agent, path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    proc = subprocess.run([lab.PLUGIN_BIN, "policy", "import", str(path), "--socket",
                           agent.socket], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def delete_policy(agent, name, namespace):
    subprocess.run([lab.PLUGIN_BIN, "policy", "delete", name, "--namespace", namespace,
                    "--socket", agent.socket], capture_output=True, text=True, timeout=120)


def test_container_gets_its_address_and_an_endpoint(env):
    podman, agent, bridge, _ = env
    c = podman.sleeper(bridge["name"], namespace="podtest")
    assert ipaddress.ip_address(c.ip) in ipaddress.ip_network(subnet(bridge))
    assert c.prefixlen == 24
    inside = podman("exec", c.id, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "inet %s/24" % c.ip in inside
    ep = endpoint(agent, c)
    assert ep is not None, agent.endpoints()
    assert ep["interface"]["addresses"] == ["%s/24" % c.ip]
    assert ep["k8s"]["podName"] == c.name and ep["k8s"]["namespace"] == "podtest"
    assert "k8s:io.kubernetes.pod.namespace=podtest" in ep["labels"]
    # the host veth the agent programmed is the kernel's peer of the container's eth0
    assert ep["host"]["ifindex"] == c.host_peer_ifindex()
    # and the container's traffic goes through it
    before = ep["stats"]["egress"]["packets"]
    gateway = subnet(bridge).replace(".0/24", ".1")
    podman("exec", c.id, "ping", "-c", "2", "-W", "2", gateway)
    assert endpoint(agent, c)["stats"]["egress"]["packets"] >= before + 2


def test_what_podman_sends_add_version_cache_and_del(env):
    podman, agent, bridge, _ = env
    started = time.time_ns()
    c = podman.sleeper(bridge["name"], namespace="podtest")
    calls = podman.recorded(c.id)
    assert [x["command"] for x in calls] == ["ADD"]
    add = calls[0]
    assert add["rc"] == 0
    assert add["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=%s;K8S_POD_NAMESPACE=podtest" \
        % c.name
    assert add["env"]["CNI_NETNS"] == c.netns and add["env"]["CNI_IFNAME"] == "eth0"
    assert add["env"]["CNI_PATH"] == "%s:%s" % (podman.bin_dir, lab.REFERENCE_PLUGINS)
    assert add["stdin"]["cniVersion"] == bridge["cniVersion"]
    assert add["stdin"]["name"] == bridge["name"]
    # a chained ADD hands the prior result on unchanged
    assert add["stdout"] == add["stdin"]["prevResult"]
    # libcni asked our VERSION (with placeholder env) before running the chain
    versions = [v for v in podman.recorded("none") if started < v["t"] < add["t"]]
    assert versions and all(v["command"] == "VERSION" and v["rc"] == 0
                            and v["env"]["CNI_NETNS"] == "dummy"
                            and v["stdin"] == {"cniVersion": bridge["cniVersion"]}
                            and "1.0.0" in v["stdout"]["supportedVersions"] for v in versions)
    # libcni caches the chain's final result ...
    cache = os.path.join(CACHE_DIR, "%s-%s-eth0" % (bridge["name"], c.id))
    with open(cache) as f:
        cached = json.load(f)
    assert cached["result"] == add["stdout"]
    podman.rm(c)
    # ... and hands it to DEL as prevResult; podman never runs CHECK
    calls = podman.recorded(c.id)
    assert [x["command"] for x in calls] == ["ADD", "DEL"]
    delete = calls[1]
    assert delete["rc"] == 0 and delete["stdout"] is None
    assert delete["stdin"]["prevResult"] == add["stdout"]
    assert delete["env"]["CNI_ARGS"] == add["env"]["CNI_ARGS"]
    assert [v for v in podman.recorded("none") if add["t"] < v["t"] < delete["t"]]  # VERSION
    assert not os.path.exists(cache)


@pytest.mark.parametrize("cni_version", ["0.3.0", "0.3.1", "0.4.0"])
def test_older_cni_versions(env, cni_version):
    """1.0.0 is the module's network; Debian's reference plugins stop at 1.0.0."""
    podman, agent, _, _ = env
    net = podman.add_network(lab.unique("ccv-"), {"type": "bridge", "bridge": lab.unique("ccpbr"),
                                                  "isGateway": True}, _free_subnet(),
                             cni_version=cni_version)
    c = podman.sleeper(net["name"], namespace="podtest")
    assert endpoint(agent, c)["interface"]["addresses"] == ["%s/24" % c.ip]
    podman.rm(c)
    assert endpoint(agent, c) is None
    calls = podman.recorded(c.id)
    assert [(x["command"], x["stdin"]["cniVersion"], x["rc"]) for x in calls] == [
        ("ADD", cni_version, 0), ("DEL", cni_version, 0)]
    assert calls[0]["stdout"]["cniVersion"] == cni_version


def test_version_validation_accepts_us_for_1_1_0(env):
    """libcni asks every plugin's VERSION when it loads a conflist: at 1.1.0
    Debian's bridge and portmap are refused, cilium-cni is not."""
    podman, _, _, _ = env
    net = podman.add_network(lab.unique("ccv-"), {"type": "bridge", "bridge": lab.unique("ccpbr"),
                                                  "isGateway": True}, _free_subnet(),
                             cni_version="1.1.0")
    try:
        proc = podman("run", "--rm", "--network", net["name"], "--rootfs", podman.rootfs, "true",
                      check=False)
    finally:  # podman would warn about it on every later command
        os.unlink(os.path.join(podman.net_dir, net["name"] + ".conflist"))
    assert proc.returncode != 0
    assert 'plugin bridge does not support config version \\"1.1.0\\"' in proc.stderr
    assert "plugin portmap does not support" in proc.stderr
    assert "plugin cilium-cni" not in proc.stderr


def test_failed_add_is_reported_and_undone(env, tmp_path):
    """With the agent unreachable, podman shows our CNI error, then runs the
    chain's DEL without prevResult (nothing cached): it succeeds and the prior
    plugins release what they made."""
    podman, _, _, _ = env
    bridge = lab.unique("ccpbr")
    net = podman.add_network(lab.unique("ccd-"), {"type": "bridge", "bridge": bridge,
                                                  "isGateway": True}, _free_subnet(),
                             {"agent-socket": str(tmp_path / "run" / "agent.sock")})
    name = lab.unique("ccni-")
    podman.created.append(name)
    proc = podman("run", "-d", "--name", name, "--network", net["name"], "--cgroup-parent",
                  "/" + podman.cgroup, "--rootfs", podman.rootfs, "sleep", "600", check=False)
    assert proc.returncode != 0
    assert 'plugin type="cilium-cni" failed (add)' in proc.stderr
    assert "cilium-cni agent is not reachable at '%s'" % (tmp_path / "run" / "agent.sock") \
        in proc.stderr
    cid = podman("inspect", "--format", "{{.Id}}", name).stdout.strip()
    calls = podman.recorded(cid)
    assert [(x["command"], x["rc"]) for x in calls] == [("ADD", 1), ("DEL", 0)]
    assert calls[0]["stdout"]["code"] == 11
    assert "prevResult" not in calls[1]["stdin"]
    assert json.loads(lab.sh("ip", "-j", "link", "show", "master", bridge).stdout or "[]") == []
    ipam = os.path.join(podman.root, "ipam", net["name"])
    assert sorted(os.listdir(ipam)) == ["last_reserved_ip.0", "lock"]  # the address is free
    # the DEL is left for that agent to complete when it starts
    assert os.listdir(tmp_path / "run" / "pending-deletes") == ["%s:eth0.json" % cid]


def test_stop_and_start_replace_the_endpoint(env):
    """podman stop tears the network down (DEL), start sets it up anew (ADD):
    same container id and ifname, a new netns and host veth."""
    podman, agent, bridge, _ = env
    c = podman.sleeper(bridge["name"], namespace="podtest")
    first = endpoint(agent, c)
    podman("stop", "-t", "0", c.id)
    assert endpoint(agent, c) is None
    assert lab.sh("ip", "link", "show", first["host"]["ifname"], check=False).returncode != 0
    podman("start", c.id)
    c = Container(podman, c.id, c.name, c.network)
    second = endpoint(agent, c)
    assert second is not None and second["host"]["ifindex"] != first["host"]["ifindex"]
    assert second["host"]["ifindex"] == c.host_peer_ifindex()
    assert second["interface"]["addresses"] == ["%s/24" % c.ip]
    assert [x["command"] for x in podman.recorded(c.id)] == ["ADD", "DEL", "ADD"]
    gateway = subnet(bridge).replace(".0/24", ".1")
    podman("exec", c.id, "ping", "-c", "1", "-W", "2", gateway)
    assert endpoint(agent, c)["stats"]["egress"]["packets"] >= 1


POLICY = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: %s, namespace: %s}
    spec:
      endpointSelector: {}
      ingress:
      - fromEndpoints:
        - matchLabels: {k8s:io.kubernetes.pod.namespace: %s}
        - matchLabels: {k8s:io.kubernetes.pod.namespace: %s, role: trusted}
"""


def test_policy_is_enforced_on_container_traffic(env, tmp_path):
    podman, agent, bridge, _ = env
    web = podman.web(bridge["name"], namespace="pweb")
    client = podman.sleeper(bridge["name"], namespace="pclient")
    other = podman.web(bridge["name"], namespace="pother")
    assert INDEX in (wait_for(lambda: other.fetch(web.ip)) or "")  # no policy yet: all allowed
    assert INDEX in (wait_for(lambda: client.fetch(other.ip)) or "")
    name, egress = lab.unique("pod-web-"), lab.unique("pod-client-")
    import_policy(agent, tmp_path / "p.yaml", POLICY % (name, "pweb", "pclient", "pother"))
    import_policy(agent, tmp_path / "e.yaml", """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: %s, namespace: pclient}
        spec:
          endpointSelector: {}
          egress:
          - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: pweb}}]
    """ % egress)
    try:
        assert INDEX in (client.fetch(web.ip) or "")
        assert other.fetch(web.ip, wait=2) is None  # web's ingress
        assert client.fetch(other.ip, wait=2) is None  # client's egress
        drops = endpoint(agent, web)["stats"]["ingress"]["drops"]
        assert drops.get("policy-denied", 0) >= 1
        drops = endpoint(agent, client)["stats"]["egress"]["drops"]
        assert drops.get("policy-denied", 0) >= 1
        # a label added through the agent API: the identity and the verdict follow
        proc = subprocess.run([lab.PLUGIN_BIN, "endpoint", "labels", other.key, "--add",
                               "role=trusted", "--socket", agent.socket],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cni:role=trusted" in endpoint(agent, other)["labels"]
        assert INDEX in (other.fetch(web.ip) or "")
    finally:
        delete_policy(agent, name, "pweb")
        delete_policy(agent, egress, "pclient")
    assert INDEX in (other.fetch(web.ip) or "")
    assert INDEX in (client.fetch(other.ip) or "")


def test_published_port_reaches_the_container(env):
    podman, agent, bridge, _ = env
    port = free_port()
    web = podman.web(bridge["name"], ports=[(port, 8080)])
    gateway = subnet(bridge).replace(".0/24", ".1")
    for addr in ("127.0.0.1", gateway):
        body = wait_for(lambda addr=addr: http_get(addr, port))
        assert body and "200 OK" in body and body.endswith(INDEX), (addr, body)
    assert endpoint(agent, web)["stats"]["ingress"]["packets"] > 0
    dnat = [r for r in _nat_rules() if "--to-destination %s:8080" % web.ip in r]
    assert dnat
    podman.rm(web)
    assert not [r for r in _nat_rules() if "--to-destination %s:8080" % web.ip in r]
    assert http_get("127.0.0.1", port, timeout=1) is None


def _pins(agent):
    out = set()
    for dirpath, dirs, files in os.walk(agent.bpf_root):
        out.update(os.path.join(dirpath, n) for n in dirs + files)
    return out


def _metrics_ep(key):
    return int.from_bytes(key[:4], "little")


def _entries_of(agent, map_name, ep_id, decode):
    return [e for e in map_dump(agent, map_name) if decode(_key(e)) == ep_id]


def test_podman_rm_leaves_no_endpoint_map_entry_or_pin(env, tmp_path):
    podman, agent, bridge, _ = env
    pins_before = _pins(agent)
    port = free_port()
    web = podman.web(bridge["name"], ports=[(port, 8080)], namespace="prm")
    client = podman.sleeper(bridge["name"], namespace="prm")
    assert wait_for(lambda: http_get("127.0.0.1", port))  # portmap's rules in use too
    name = lab.unique("prm-")
    # a policy, so that the endpoint has policy entries to leave behind
    import_policy(agent, tmp_path / "p.yaml", POLICY % (name, "prm", "prm", "prm"))
    try:
        _rm_leaves_nothing(podman, agent, bridge, web, client, pins_before)
    finally:
        delete_policy(agent, name, "prm")


def _rm_leaves_nothing(podman, agent, bridge, web, client, pins_before):
    assert INDEX in (wait_for(lambda: client.fetch(web.ip)) or "")
    ep = endpoint(agent, web)
    ep_id, ifindex, host_if = ep["id"], ep["host"]["ifindex"], ep["host"]["ifname"]
    checked = (("ct", ct_key_ep), ("policy", policy_key_ep), ("metrics", _metrics_ep))
    for map_name, decode in checked:  # the endpoint has entries in every map before
        assert _entries_of(agent, map_name, ep_id, decode), map_name
    assert "%s/32" % web.ip in _ipcache(agent)
    assert ifindex in _endpoints_map(agent)

    podman.rm(web)

    assert endpoint(agent, web) is None
    assert endpoint(agent, client) is not None  # the other container is untouched
    assert ifindex not in _endpoints_map(agent)
    assert "%s/32" % web.ip not in _ipcache(agent)
    for map_name, decode in checked:
        assert _entries_of(agent, map_name, ep_id, decode) == [], map_name
    assert _entries_of(agent, "policy", endpoint(agent, client)["id"], policy_key_ep)
    assert _pins(agent) == pins_before
    assert lab.sh("ip", "link", "show", host_if, check=False).returncode != 0
    assert not os.path.exists(web.netns)
    assert not os.path.exists(os.path.join(CACHE_DIR, "%s-%s-eth0" % (bridge["name"], web.id)))
    assert not [r for r in _nat_rules() if "--to-destination %s:8080" % web.ip in r]


def _ipcache(agent):
    return {ipcache_cidr(_key(e)) for e in map_dump(agent, "ipcache")}


def _endpoints_map(agent):
    return {int.from_bytes(_key(e), "little") for e in map_dump(agent, "endpoints")}


def _key(entry):
    return bytes(int(b, 16) for b in entry["key"])


def test_ptp_chain(env, tmp_path):
    podman, agent, _, ptp = env
    server = podman.web(ptp["name"], namespace="ptpweb")
    client = podman.sleeper(ptp["name"], namespace="ptpclient")
    other = podman.sleeper(ptp["name"], namespace="ptpother")
    assert ipaddress.ip_address(server.ip) in ipaddress.ip_network(subnet(ptp))
    ep = endpoint(agent, server)
    assert ep["host"]["ifindex"] == server.host_peer_ifindex()
    assert ep["host"]["ifname"].startswith("veth")
    # the conflist's static netconf args reach the endpoint as labels
    assert "cni:net=ptp" in ep["labels"]
    assert "k8s:io.kubernetes.pod.namespace=ptpweb" in ep["labels"]
    # traffic between ptp containers is routed by the host
    assert INDEX in (wait_for(lambda: client.fetch(server.ip)) or "")
    name = lab.unique("ptp-web-")
    import_policy(agent, tmp_path / "p.yaml", POLICY % (name, "ptpweb", "ptpclient", "ptpclient"))
    try:
        assert INDEX in (client.fetch(server.ip) or "")
        assert other.fetch(server.ip, wait=2) is None
    finally:
        delete_policy(agent, name, "ptpweb")
    podman.rm(server, client, other)
    keys = {e["key"] for e in agent.endpoints()}
    assert not keys & {server.key, client.key, other.key}
    assert [x["command"] for x in podman.recorded(server.id)] == ["ADD", "DEL"]
