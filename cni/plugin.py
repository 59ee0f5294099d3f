"""The CNI plugin: one dispatcher over a table of verb handlers.

`main(environ, stdin, stdout)` is the whole contract with the runtime: it
writes exactly one JSON document (a result, a VERSION answer, or an error
object) or nothing (DEL, CHECK, GC and STATUS success), and returns the
exit code. This is the one place where any exception becomes a CNI error
object; no traceback ever reaches the runtime.

Hot path: standard library only (see docs/architecture.md).
"""

import chainers
from chainers.api import Context
from cni import fastjson as json
from cni import version
from cni.client import AgentClient, AgentUnreachable
from cni.env import parse_env
from cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_NETWORK_CONFIG,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    CniError,
)
from cni.log import PluginLog, pod_context
from cni.netconf import decode, from_document, reply_settings
from cni.result import convert

INTERNAL_ERROR = 999  # the spec's "generic" bucket for failures we did not foresee


def _prev_result(conf, required):
    if conf.prev_result is None:
        if required:
            raise CniError(
                INVALID_NETWORK_CONFIG,
                "no prevResult: cilium-cni is a chained plugin; list it after the "
                "plugin that creates the pod's interface (bridge, ptp, calico, ...)")
        return None
    return convert(conf.prev_result, conf.cni_version)


def _need_version(conf, minimum, verb):
    if not version.at_least(conf.cni_version, minimum):
        raise CniError(INCOMPATIBLE_VERSION,
                       "%s needs cniVersion %s or later; the network config says %s"
                       % (verb, minimum, conf.cni_version))


def cmd_add(ctx):
    return ctx.chainer.add(ctx)


def cmd_del(ctx):
    ctx.chainer.delete(ctx)


def cmd_check(ctx):
    ctx.chainer.check(ctx)


def cmd_gc(ctx):
    valid = ctx.conf.valid_attachments
    if valid is None:
        raise CniError(INVALID_NETWORK_CONFIG,
                       "GC needs cni.dev/valid-attachments in the network config")
    _, out = ctx.client.call("POST", "/v1/gc", {"network": ctx.conf.name, "valid": valid})
    ctx.log.info("gc removed %d endpoint(s)" % len((out or {}).get("removed", [])))


def cmd_status(ctx):
    try:
        status, body = ctx.client.request("GET", "/v1/healthz", timeout=5.0)
    except AgentUnreachable as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg) from None
    if status != 200:
        raise CniError(PLUGIN_NOT_AVAILABLE, "cilium-cni agent is not ready: %s"
                       % ((body or {}).get("status") or "HTTP %d" % status))


class _Verb:
    """`waits`: whether the verb waits for a starting agent (netconf
    agent-wait-seconds). DEL does not: it records the deletion at once
    (the agent completes it); STATUS reports what is, now."""

    __slots__ = ("handler", "min_version", "needs_prev_result", "needs_chainer", "waits")

    def __init__(self, handler, min_version, needs_prev_result, needs_chainer, waits):
        self.handler = handler
        self.min_version = min_version
        self.needs_prev_result = needs_prev_result
        self.needs_chainer = needs_chainer
        self.waits = waits


VERBS = {
    "ADD": _Verb(cmd_add, None, True, True, True),
    "DEL": _Verb(cmd_del, None, False, True, False),
    "CHECK": _Verb(cmd_check, "0.4.0", True, True, True),
    "GC": _Verb(cmd_gc, "1.1.0", False, False, True),
    "STATUS": _Verb(cmd_status, "1.1.0", False, False, False),
}


def _chainer_for(verb_name, conf, log):
    try:
        return chainers.api.lookup(conf.chaining_mode)
    except CniError:
        if verb_name != "DEL":
            raise
        # DEL must not block pod deletion over a config mistake that ADD
        # already reported: clean up what is ours the generic way.
        log.error("DEL with chaining mode %r: deleting as generic-veth" % conf.chaining_mode)
        return chainers.api.lookup("generic-veth")


def _read(stdin):
    try:
        return stdin.read()
    except UnicodeDecodeError as exc:  # a text stdin in a strict locale
        raise CniError(DECODING_FAILURE, "failed to decode network configuration: "
                       "not UTF-8 at byte %d" % exc.start) from None
    except (OSError, ValueError) as exc:
        raise CniError(IO_FAILURE, "cannot read the network configuration from stdin: %s"
                       % exc) from None


def _version_answer(stdin_data):
    requested = None
    try:
        requested = json.loads(stdin_data).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        pass
    return version.version_result(requested if isinstance(requested, str) else None)


def main(environ, stdin, stdout):
    cni_version = version.LATEST
    log = PluginLog()
    try:
        # stdin first, whatever the environment: an error about either is
        # answered in the netconf's cniVersion and logged to its log-file
        # whenever the netconf decodes that far.
        data = _read(stdin)
        if environ.get("CNI_COMMAND") == "VERSION":
            stdout.write(json.dumps(_version_answer(data)))
            return 0
        doc = doc_error = None
        try:
            doc = decode(data)
        except CniError as exc:
            doc_error = exc
        else:
            asked, log_file = reply_settings(doc)
            cni_version = asked or cni_version
            if log_file:
                log = PluginLog(log_file)
        args = parse_env(environ)
        if doc_error:
            raise doc_error
        log.context = pod_context(args)
        conf = from_document(doc)
        cni_version = conf.cni_version
        log = PluginLog(conf.log_file, log.context, conf.log_max_bytes, conf.log_max_backups)
        verb = VERBS[args.command]
        if verb.min_version:
            _need_version(conf, verb.min_version, args.command)
        prev = None
        if args.command == "DEL":
            try:
                prev = _prev_result(conf, required=False)
            except CniError as exc:
                log.error("ignoring unreadable prevResult on DEL: %s" % exc.msg)
        else:
            prev = _prev_result(conf, verb.needs_prev_result)
        chainer = _chainer_for(args.command, conf, log) if verb.needs_chainer else None
        client = AgentClient(conf.agent_socket, command=args.command,
                             wait=conf.agent_wait_seconds if verb.waits else 0.0)
        ctx = Context(args, conf, prev, client, log, chainer)
        out = verb.handler(ctx)
        log.info("ok")
        if out is not None:
            stdout.write(json.dumps(out))
        return 0
    except CniError as exc:
        log.error("code %d: %s" % (exc.code, exc.msg))
        stdout.write(json.dumps(exc.to_dict(cni_version)))
        return 1
    except Exception as exc:  # the last line of defence: never a traceback
        import traceback
        log.error("internal error: %s" % "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).replace("\n", " | "))
        err = CniError(INTERNAL_ERROR, "cilium-cni internal error: %s: %s"
                       % (type(exc).__name__, exc), details="see the plugin log")
        stdout.write(json.dumps(err.to_dict(cni_version)))
        return 1
