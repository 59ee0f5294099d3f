"""The agent process: start-up order, serving, and a clean stop on SIGTERM.

Start-up: claim the state dir (a lock) and the socket (bound, not yet
listening: clients get "connection refused", i.e. try again, and the
plugin waits while the `cni.starting` marker says the agent is starting) before
touching the datapath, so a second agent can never re-attach the first
one's endpoints; make sure bpffs is mounted, compile and pin the programs
(the maps are re-used, so counters survive), restore endpoints, complete
the deletions the plugin recorded while the agent was down, then listen.
Stopping leaves programs attached and pinned on purpose: traffic keeps
flowing, and is still counted, while the agent is down or upgrading.
"""

import fcntl
import gc
import os
import resource
import signal
import threading
import time

from agent import logs
from agent import store as store_mod
from agent.config import listen_address
from agent.endpoints import EndpointManager
from agent.enforcement import Enforcement
from agent.errors import AgentError
from agent.monitor import EventHub, pump_events
from agent.operations import Operations
from agent.policydir import PolicyDirWatcher
from agent.sdnotify import Notifier
from agent.server import Api, SocketInUse, UnixApiServer
from agent.services import ServiceManager, attach_lb
from agent.worker import SerialWorker, every
from cni import __version__ as VERSION
from cni import starting
from cni.attachment import pending_delete_dir, pending_delete_names, read_pending_delete, recorded_attachment
from datapath import bpffs, netns
from datapath.loader import Datapath

PENDING_SWEEP_SECONDS = 30.0
HOUSEKEEPING_SECONDS = 10.0
POLICY_DIR_SECONDS = 2.0


class AgentInUse(Exception):
    """Another agent owns this state dir or socket."""


class MetricsUnavailable(Exception):
    """The metrics address cannot be served (in use, not local, ...)."""


def complete_pending_deletes(directory, manager, log):
    """Finish DELs the plugin recorded while it could not reach the agent."""
    done = 0
    for name in pending_delete_names(directory):
        path = os.path.join(directory, name)
        try:
            key = read_pending_delete(path)
        except (OSError, ValueError) as exc:
            log.error("pending deletion %s is unreadable (%s); kept as %s.bad", path, exc, path,
                      extra=logs.pod_fields(key=recorded_attachment(name)))
            os.replace(path, path + ".bad")
            continue
        try:
            if manager.delete(key):
                done += 1
            os.unlink(path)
            log.info("completed recorded deletion of %s", key, extra=logs.pod_fields(key=key))
        except AgentError as exc:
            log.error("recorded deletion of %s failed, will retry: %s", key, exc.message,
                      extra=logs.pod_fields(key=key))
    return done


class Agent:
    def __init__(self, config):
        self.config = config
        self.log, self.errors = logs.setup(config.log_file, config.log_level, config.log_format)
        self.version = VERSION
        self.started = time.time()
        self.operations = Operations(self.log)
        self.metrics = None
        self._stop = threading.Event()
        self._lock_fd = _claim_state_dir(config.state_dir)
        self.server = None
        self._starting = None  # the fd of the cni.starting marker while starting
        self._pump = None
        self.pending_dir = pending_delete_dir(config.socket)
        self.datapath = Datapath(config.bpf_root)
        self.store = store_mod.Store(config.state_dir)
        self.host_prefixes = netns.HostPrefixes()
        self.cluster = None  # agent.kvstore.cluster.Cluster with kvstore: etcd
        identities = None
        if config.kvstore == "etcd":
            from agent.identity import IdentityAllocator
            from agent.kvstore.cluster import Cluster  # aetcd, grpc: only when clustered
            self.cluster = Cluster(config, IdentityAllocator(self.store,
                                                             config.identity_grace_seconds),
                                   self.log)
            identities = self.cluster.identities
        self.enforcement = Enforcement(self.store, self.datapath, self.log,
                                       config.identity_grace_seconds, self.host_prefixes,
                                       allow_host=config.allow_localhost == "always",
                                       identities=identities)
        self.manager = EndpointManager(self.store, self.datapath, self.enforcement, self.log)
        self.worker = SerialWorker(config.queue_size, self.log)
        self.hub = EventHub()
        self.services = ServiceManager(self.store, self.datapath, self.log)
        if self.cluster is not None:
            self.cluster.attach(self.enforcement, self.services, self.worker)
        self.socklb = None  # datapath.socklb.SocketLB while attached by this agent
        self.watcher = (PolicyDirWatcher(config.policy_dir, self.enforcement, self.log)
                        if config.policy_dir else None)

    def info(self):
        return {
            "version": VERSION,
            "uptimeSeconds": round(time.time() - self.started, 1),
            "pid": os.getpid(),
            "socket": self.config.socket,
            "stateDir": self.config.state_dir,
            "bpfRoot": self.config.bpf_root,
            "endpoints": self.manager.count(),
            "queueDepth": self.worker.depth(),
            "policyRevision": self.enforcement.policy_revision(),
            "policyRules": len(self.enforcement.repo.rules()),
            "policyDir": self.config.policy_dir or None,
            "metricsAddress": self.metrics.address if self.metrics else None,
        }

    def summary(self):
        """`cilium-cni status`: info() plus health, chaining modes, maps, last errors."""
        out = self.info()
        health = self.manager.health()
        out["endpointHealth"] = {"healthy": len(health["healthy"]),
                                 "unhealthy": len(health["unhealthy"]),
                                 "unhealthyEndpoints": health["unhealthy"][:20]}
        modes = {}
        for ep in self.manager.list():
            modes[ep["chainingMode"]] = modes.get(ep["chainingMode"], 0) + 1
        out["chainingModes"] = modes
        out["maps"] = [{"name": name, "entries": n, "capacity": cap,
                        "pressure": round(n / cap, 4) if cap else 0.0}
                       for name, (n, cap) in sorted(self.datapath.map_pressure().items())]
        out["restore"] = self.operations.last("endpoint-restore")
        out["stateVolume"] = self.store.volume()
        out["lastErrors"] = self.errors.recent(10)
        out["orphans"] = self.orphans()
        out["kvstore"] = self.cluster.status() if self.cluster is not None else None
        return out

    def orphans(self):
        """Programs of ours attached on this node that no pinned set owns
        (docs/operations.md, "Orphans"), as dicts; None if they cannot be read."""
        from datapath import footprint
        try:
            found = footprint.orphans(footprint.cgroup_roots(self.config.cgroup_root),
                                      (self.config.bpf_root,))
        except OSError as exc:
            self.log.warning("cannot look for orphaned programs: %s", exc)
            return None
        return [a.as_dict() for a in found]

    def start(self):
        t0 = time.monotonic()
        api = Api(self.manager, self.worker, self.summary, self.enforcement, self.datapath,
                  self.hub, self._stop, operations=self.operations)
        api.services = self.services
        api.cluster = self.cluster
        self.server = UnixApiServer(self.config.socket, api, self.log)
        try:
            self.server.server_bind()
        except SocketInUse as exc:
            self.server.server_close()
            self.server = None
            raise AgentInUse(str(exc)) from None
        self._starting = starting.hold(self.config.socket)
        if self.config.metrics_address:
            api.metrics = self._serve_metrics()
        bpffs.ensure_mounted()
        self.datapath.load()
        rules = self.worker.submit(self.enforcement.restore_policy)
        services = self.worker.submit(self.services.restore, wait=300.0)
        self.socklb = attach_lb(self.config, self.datapath, self.log, self.hub)
        self.log.info("%d service(s) restored", services)
        self.worker.submit(self._housekeeping)
        if self.watcher:
            self.worker.submit(self.watcher.scan)
        if self.cluster is not None:
            # Identities, ipcache, policy and services from etcd before any
            # endpoint is regenerated: until then the pinned maps enforce.
            self.cluster.connect(self._stop)
        restored, dropped = self.operations.run(
            "endpoint-restore", lambda op: self.worker.submit(self.manager.restore, op.update,
                                                              wait=3600.0))
        self.worker.submit(self.enforcement.ipcache.reconcile)
        # The restored endpoints run this version's programs now: carry
        # connections an older version recorded over to its ct keys.
        migrated = self.worker.submit(self.datapath.ct.migrate)
        if migrated:
            self.log.info("%d connection(s) of an older datapath re-keyed", migrated)
        os.makedirs(self.pending_dir, mode=0o700, exist_ok=True)
        completed = self.worker.submit(complete_pending_deletes, self.pending_dir,
                                       self.manager, self.log)
        if self.cluster is not None:
            self.cluster.run(self._stop)
        # Long-lived state is built: keep the cyclic GC from rescanning it
        # on every collection (p99 of policy updates 35 ms -> 8 ms).
        gc.collect()
        gc.freeze()
        self.server.server_activate()
        self._started()
        self.log.info("agent %s ready in %.2f s on %s: %d policy rule(s), %d endpoint(s) "
                      "restored, %d stale removed, %d recorded deletion(s) completed", VERSION,
                      time.monotonic() - t0, self.config.socket, rules, restored, dropped,
                      completed)
        orphans = self.orphans()
        if orphans:
            self.log.warning("%d program(s) of cilium-cni attached on this node belong to no "
                             "agent (their pins are gone): %s; they run on every packet or "
                             "connect() they see until removed with 'cilium-cni cleanup "
                             "--orphans'", len(orphans),
                             ", ".join("%s on %s" % (o["name"], o["where"]) for o in orphans))
        threading.Thread(target=self._sweep_pending, name="pending-deletes", daemon=True).start()
        every(self._stop, HOUSEKEEPING_SECONDS, "housekeeping",
                         lambda: self.worker.submit(self._housekeeping), self.log)
        if self.watcher:
            every(self._stop, POLICY_DIR_SECONDS, "policy-dir",
                             lambda: self.worker.submit(self.watcher.scan), self.log)
        self._pump = threading.Thread(target=pump_events, name="events", daemon=True,
                                      args=(self.datapath, self.hub, self._stop, self.log))
        self._pump.start()

    def _started(self):
        """Listening (or giving up): plugins stop waiting for this start."""
        if self._starting is not None:
            starting.release(self.config.socket, self._starting)
            self._starting = None

    def _serve_metrics(self):
        from agent.metrics import Metrics  # prometheus_client: agent only
        host, port = listen_address(self.config.metrics_address)
        self.metrics = Metrics(self)
        try:
            bound = self.metrics.serve(host, port)
        except OSError as exc:
            self.metrics = None
            raise MetricsUnavailable("cannot serve metrics on %s (metrics-address): %s" % (
                self.config.metrics_address, exc.strerror or exc)) from None
        self.log.info("metrics on http://%s/metrics", bound)
        return self.metrics

    def _housekeeping(self):
        self.enforcement.refresh_host()
        self.enforcement.expire_identities()
        self.datapath.ct.gc()
        self.datapath.lb.ct_gc()

    def _sweep_pending(self):
        while not self._stop.wait(PENDING_SWEEP_SECONDS):
            try:
                self.worker.submit(complete_pending_deletes, self.pending_dir,
                                   self.manager, self.log)
            except Exception:
                self.log.exception("sweeping recorded deletions failed")

    def serve_forever(self):
        self.server.serve_forever(poll_interval=0.5)

    def abort(self):
        """Undo a start that failed half-way; leave the datapath as it was."""
        if self.metrics is not None:
            self.metrics.close()
        self._started()
        if self.server is not None:
            self.server.server_close()
            self.server.remove_socket()
        self.worker.stop()
        if self.cluster is not None:
            self.cluster.close()
        self.store.close()
        self.host_prefixes.close()
        if self.socklb is not None:
            self.socklb.close()
        self.datapath.close()

    def stop(self):
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server.remove_socket()
        self.worker.stop()
        if self._pump is not None:
            self._pump.join(5.0)
        if self.metrics is not None:
            self.metrics.close()
        if self.cluster is not None:
            self.cluster.close()
        self.store.close()
        self.host_prefixes.close()
        if self.socklb is not None:
            self.socklb.close()
        self.datapath.close()
        self.log.info("agent stopped; programs stay attached and pinned")


def _claim_state_dir(state_dir):
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "agent.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentInUse("another agent is already running with state dir '%s'"
                         % state_dir) from None
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    return fd


def raise_fd_limit(want=65536):
    """Lift the soft open-files limit towards the hard one: each API
    connection, pinned map and netlink socket is a descriptor, and the
    usual soft 1024 ran out under a flood of held connections. The systemd
    unit sets LimitNOFILE; in a container the runtime's hard limit applies."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(config):
    raise_fd_limit()
    agent = Agent(config)
    try:
        agent.start()
    except BaseException:
        agent.abort()
        raise
    done = threading.Event()

    def on_signal(signum, _frame):
        agent.log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = threading.Thread(target=agent.serve_forever, name="api", daemon=True)
    server.start()
    notify = Notifier()
    notify.ready("serving on %s" % config.socket)
    tick = min(1.0, notify.watchdog_seconds or 1.0)
    while not done.wait(tick):
        if not server.is_alive() or not agent.worker.alive():
            agent.log.error("%s thread died; stopping",
                            "API server" if not server.is_alive() else "worker")
            break
        if notify.watchdog_seconds:
            notify.watchdog()
    notify.stopping()
    agent.stop()
    return 0
