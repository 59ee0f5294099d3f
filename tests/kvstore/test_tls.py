"""etcd over TLS with client certificates: the agent's client connects with
the CA, certificate and key it is given, and names the cause when the
certificate is wrong or missing."""

import logging
import subprocess

import pytest
import yaml

from agent.kvstore.etcd import Etcd, KvstoreError
from tests import lab
from tests.kvstore.conftest import EtcdMember

pytestmark = pytest.mark.e2e


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=" + name,
            "-keyout", name + "-key.pem", "-out", name + ".pem", cwd=d)
    return str(d / (name + ".pem"))


def make_cert(d, ca, name, san=None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
            "-keyout", name + "-key.pem", "-out", name + ".csr", cwd=d)
    ext = d / (name + ".ext")
    ext.write_text("subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n"
                   % (san or "DNS:" + name))
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + "-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem",
            cwd=d)
    return str(d / (name + ".pem")), str(d / (name + "-key.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    out = {"ca": make_ca(d, "ca"), "other_ca": make_ca(d, "other")}
    out["cert"], out["key"] = make_cert(d, "ca", "server", "IP:127.0.0.1")
    out["client_cert"], out["client_key"] = make_cert(d, "ca", "agent")
    out["stranger_cert"], out["stranger_key"] = make_cert(d, "other", "stranger")
    return out


@pytest.fixture(scope="module")
def tls_etcd(pki):
    member = EtcdMember(tls=pki)
    try:
        yield member.start()
    finally:
        member.remove()


def test_a_client_certificate_signed_by_the_ca_is_let_in(tls_etcd, pki):
    client = Etcd([tls_etcd.url], pki["ca"], pki["client_cert"], pki["client_key"])
    try:
        client.put("tls-test/k", b"v")
        assert client.get("tls-test/k").value == b"v"
        assert client.health()["reachable"]
    finally:
        client.delete("tls-test/k")
        client.close()


@pytest.mark.parametrize("who,why", [
    ("stranger", "a certificate another CA signed"),
    ("nobody", "no certificate"),
])
def test_a_client_etcd_does_not_trust_is_refused_naming_the_cause(tls_etcd, pki, who, why):
    cert, key = (pki["stranger_cert"], pki["stranger_key"]) if who == "stranger" else ("", "")
    client = Etcd([tls_etcd.url], pki["ca"], cert, key, timeout=2)
    try:
        with pytest.raises(KvstoreError) as err:
            client.put("tls-test/k", b"v")
        text = str(err.value)
        assert tls_etcd.url in text and "the TLS handshake failed" in text, text
    finally:
        client.close()


def test_a_server_certificate_of_another_ca_is_refused(tls_etcd, pki):
    client = Etcd([tls_etcd.url], pki["other_ca"], pki["client_cert"], pki["client_key"], timeout=2)
    try:
        with pytest.raises(KvstoreError):
            client.get("tls-test/k")
    finally:
        client.close()


def test_an_agent_joins_etcd_over_tls(tls_etcd, pki, tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "kvstore": "etcd", "kvstore-endpoints": [tls_etcd.url], "kvstore-prefix": "tls-agent",
        "node-name": "tls-node", "kvstore-ca-file": pki["ca"],
        "kvstore-cert-file": pki["client_cert"], "kvstore-key-file": pki["client_key"]}))
    agent = lab.Agent(str(tmp_path / "a"), config=str(config))
    try:
        agent.start(timeout=60)
        status = agent.api("GET", "/v1/status")[1]["kvstore"]
        assert status["reachable"] and status["node"] == "tls-node", status
        assert "tls-agent/nodes/v1/tls-node" in tls_etcd.keys("tls-agent/")
    finally:
        agent.cleanup()
        tls_etcd.ctl("del", "--prefix", "tls-agent/", check=False)


logging.getLogger("grpc").setLevel(logging.ERROR)
