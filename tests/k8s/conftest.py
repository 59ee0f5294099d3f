"""The stand-in API server and a connection to it through a kubeconfig."""

import pytest

from agent.k8s.client import Connection
from tests.k8s.apiserver import ApiServer


@pytest.fixture
def apiserver():
    server = ApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver, tmp_path):
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def conn(kubeconfig):
    c = Connection(kubeconfig)
    yield c
    c.close()
