"""Map pressure leaves out arrays: every entry of an array is always there."""

import threading

import pytest

from datapath.maps.fds import MapFamily, MapFds
from datapath.maps.fields import MAP_ARRAY, MAP_PERCPU_ARRAY

pytestmark = pytest.mark.unit


class Config(MapFamily):
    SHAPES = {"lb_config": (MAP_ARRAY, 4, 4, 1, 0), "stats": (MAP_PERCPU_ARRAY, 4, 8, 64, 0)}


def test_arrays_are_never_under_pressure():
    # Regression: `cilium-cni status` showed the one-entry lb_config as
    # "FULL SOON" (1 of 1). The fd is not a map: walking it would fail.
    fds = MapFds("test", threading.Lock())
    fds.swap({"lb_config": -1, "stats": -1})
    assert Config(fds).pressure() == {}
