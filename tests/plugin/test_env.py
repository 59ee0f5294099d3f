import pytest

from cni.env import CniArgs, parse_cni_args, parse_env
from cni.errors import INVALID_ENVIRONMENT, CniError

pytestmark = pytest.mark.unit

CID = "3f4b1c2d9e8a7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
CNI_ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-x2x7k;"
    "K8S_POD_INFRA_CONTAINER_ID=" + CID + ";K8S_POD_UID=8b1f7f3e-3c1a-4c55-9d7e-2a6f0c1b2d3e"
)


def env(command="ADD", **overrides):
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": CID,
        "CNI_NETNS": "/var/run/netns/cni-1234",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/libexec/cni",
        "CNI_ARGS": CNI_ARGS,
        "PATH": "/usr/bin",
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def fails(environ, message):
    with pytest.raises(CniError) as exc:
        parse_env(environ)
    assert exc.value.code == INVALID_ENVIRONMENT
    assert message in exc.value.msg
    return exc.value


def test_add_full():
    a = parse_env(env("ADD"))
    assert isinstance(a, CniArgs)
    assert (a.command, a.container_id, a.netns, a.ifname) == (
        "ADD",
        CID,
        "/var/run/netns/cni-1234",
        "eth0",
    )
    assert a.path == ["/opt/cni/bin", "/usr/libexec/cni"]
    assert a.args["IgnoreUnknown"] == "1"
    assert a.k8s_namespace == "kube-system"
    assert a.k8s_pod_name == "coredns-5d78c9869d-x2x7k"
    assert a.k8s_pod_uid == "8b1f7f3e-3c1a-4c55-9d7e-2a6f0c1b2d3e"


def test_k8s_properties_none_without_cni_args():
    a = parse_env(env("CHECK", CNI_ARGS=None))
    assert a.args == {}
    assert (a.k8s_namespace, a.k8s_pod_name, a.k8s_pod_uid) == (None, None, None)


def test_slots_no_attribute_bag():
    a = parse_env(env())
    with pytest.raises(AttributeError):
        a.extra = 1


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_add_check_require(command, var):
    err = fails(env(command, **{var: None}), "required environment variable %s is missing" % var)
    assert err.msg == "required environment variable %s is missing" % var
    fails(env(command, **{var: ""}), var)  # empty counts as missing, as in skel


@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"])
def test_del_requires(var):
    fails(env("DEL", **{var: None}), var)


@pytest.mark.parametrize("netns", [None, ""])
def test_del_without_netns(netns):
    a = parse_env(env("DEL", CNI_NETNS=netns))
    assert a.netns is None
    assert a.container_id == CID and a.ifname == "eth0"


def test_del_keeps_netns_when_given():
    assert parse_env(env("DEL")).netns == "/var/run/netns/cni-1234"


def test_version_needs_nothing_and_ignores_junk():
    a = parse_env({"CNI_COMMAND": "VERSION", "CNI_IFNAME": "a/b", "CNI_ARGS": "junk"})
    assert a.command == "VERSION"
    assert (a.container_id, a.netns, a.ifname, a.path, a.args) == (None, None, None, [], {})


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_need_path(command):
    a = parse_env({"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"})
    assert a.path == ["/opt/cni/bin"] and a.container_id is None
    fails({"CNI_COMMAND": command}, "CNI_PATH is missing")


def test_missing_command():
    fails({}, "required environment variable CNI_COMMAND is missing")


def test_unknown_command():
    err = fails(env("add"), "unknown CNI_COMMAND 'add'")
    assert err.msg.endswith("valid are ADD, DEL, CHECK, VERSION, GC, STATUS")


def test_empty_command():
    err = fails(env(""), "CNI_COMMAND is empty")
    assert err.msg.endswith("valid are ADD, DEL, CHECK, VERSION, GC, STATUS")


@pytest.mark.parametrize("var, value, shown", [
    # os.environ keeps bytes that are not UTF-8 as lone surrogates
    ("CNI_IFNAME", "eth\udcff", "eth\\xff"),
    ("CNI_NETNS", "/var/run/netns/\udcc3(\u00e9", "/var/run/netns/\\xc3(\u00e9"),
    ("CNI_PATH", "/opt/cni/\udcff", "/opt/cni/\\xff"),
    ("CNI_ARGS", "K8S_POD_NAME=\udcff", "K8S_POD_NAME=\\xff"),
])
def test_not_utf8(var, value, shown):
    fails(env(**{var: value}), "environment variable %s '%s' is not valid UTF-8" % (var, shown))


@pytest.mark.parametrize("command, shown", [
    ("ÄDD", "ÄDD"), ("AD\udcff", "AD\\xff"),
    ("\ud800", "\\ud800"),  # not from an environment, but not a crash either
])
def test_unknown_command_shown(command, shown):
    fails(env(command), "unknown CNI_COMMAND '%s'" % shown)


def test_not_utf8_in_a_variable_the_command_does_not_use():
    assert parse_env(env("VERSION", CNI_IFNAME="\udcff")).ifname is None


@pytest.mark.parametrize("cid", ["a", "0", "abc_DEF.1-2", CID])
def test_container_id_ok(cid):
    assert parse_env(env(CNI_CONTAINERID=cid)).container_id == cid


@pytest.mark.parametrize("cid", ["-abc", "_abc", ".abc", "abc/def", "abc def", "abc;x", "ábc", "aé"])
def test_container_id_bad(cid):
    fails(env(CNI_CONTAINERID=cid), "invalid container id")


@pytest.mark.parametrize("name", ["eth0", "net1", "a" * 15, "veth.1", "eth-0_x"])
def test_ifname_ok(name):
    assert parse_env(env(CNI_IFNAME=name)).ifname == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("a" * 16, "longer than 15 bytes"),
        ("é" * 8, "longer than 15 bytes"),  # 16 bytes in UTF-8, 8 characters
        (".", "invalid interface name '.'"),
        ("..", "invalid interface name '..'"),
        ("eth/0", "must not contain"),
        ("eth:0", "must not contain"),
        ("eth 0", "must not contain"),
        ("eth\t0", "must not contain"),
    ],
)
def test_ifname_bad(name, message):
    fails(env(CNI_IFNAME=name), message)


def test_ifname_checked_on_del_too():
    fails(env("DEL", CNI_IFNAME="x" * 16), "longer than 15 bytes")


def test_cni_args_pairs():
    assert parse_cni_args("A=1;B=;C=x=y;") == {"A": "1", "B": "", "C": "x=y"}
    assert parse_cni_args("") == {}


@pytest.mark.parametrize("bad, pair", [("A=1;B", "'B'"), ("=v", "'=v'"), ("IgnoreUnknown", "'IgnoreUnknown'")])
def test_cni_args_malformed(bad, pair):
    fails(env(CNI_ARGS=bad), "invalid CNI_ARGS pair " + pair)


def test_cni_path_empty_entries_dropped():
    assert parse_env(env(CNI_PATH="/opt/cni/bin::/x:")).path == ["/opt/cni/bin", "/x"]
