import pytest

from agent import labels as L
from agent.policy import selector as S
from agent.policy.selectorcache import SelectorCache

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self, name):
        self.name, self.changes, self.done = name, [], 0

    def __str__(self):
        return self.name

    def selections_changed(self, selector, added, removed):
        self.changes.append((selector.key, set(added), set(removed)))

    def selections_done(self):
        self.done += 1


class CountingSelector(S.LabelSelector):
    """Counts matches(), to show which identities a selector is tested against."""

    __slots__ = ("calls",)

    def __init__(self, reqs):
        super().__init__(reqs)
        self.calls = []

    def matches(self, identity_id, labels):
        self.calls.append(identity_id)
        return super().matches(identity_id, labels)


def lbl(**kv):
    return frozenset(("k8s", k, v) for k, v in kv.items())


def req(key, value):
    return S.Requirement("any", key, S.IN, [value])


@pytest.fixture
def cache():
    ids = dict(L.RESERVED_IDENTITIES)
    ids.update({300: lbl(app="web"), 301: lbl(app="db"), 302: lbl(app="web", tier="x")})
    return SelectorCache(ids)


def test_selector_matched_once_when_added(cache):
    web = CountingSelector([req("app", "web")])
    user = Recorder("u")
    assert cache.add_user(web, user) == {300, 302}
    assert sorted(web.calls) == [1, 2, 3, 4, 5, 300, 301, 302]
    web.calls.clear()
    cache.add_user(web, Recorder("v"))  # already cached: no matching at all
    assert web.calls == [] and cache.selections(web) == {300, 302}


def test_new_identity_updates_only_matching_selectors_and_users_get_the_delta(cache):
    web, db = S.LabelSelector([req("app", "web")]), S.LabelSelector([req("app", "db")])
    u_web, u_db, u_both = Recorder("web"), Recorder("db"), Recorder("both")
    cache.add_user(web, u_web)
    cache.add_user(db, u_db)
    cache.add_user(web, u_both)
    cache.add_user(db, u_both)
    cache.update_identities({400: lbl(app="web", tier="y")}, ())
    assert u_web.changes == [("{any:app=web}", {400}, set())] and u_web.done == 1
    assert u_db.changes == [] and u_db.done == 0
    assert u_both.changes == [("{any:app=web}", {400}, set())] and u_both.done == 1
    assert cache.selections(web) == {300, 302, 400} and cache.selections(db) == {301}
    cache.update_identities({}, [302, 301, 999])
    assert u_web.changes[-1] == ("{any:app=web}", set(), {302})
    assert u_db.changes == [("{any:app=db}", set(), {301})]
    assert sorted(u_both.changes[1:]) == [("{any:app=db}", set(), {301}), ("{any:app=web}", set(), {302})]
    assert u_both.done == 2  # one done() per update, however many selectors changed


def test_relabelled_identity_and_same_update_noops(cache):
    web = S.LabelSelector([req("app", "web")])
    user = Recorder("u")
    cache.add_user(web, user)
    cache.update_identities({300: lbl(app="web")}, ())  # unchanged labels: nothing
    assert user.changes == []
    cache.update_identities({300: lbl(app="db")}, ())  # an id's labels replaced
    assert user.changes == [("{any:app=web}", set(), {300})]
    cache.update_identities({500: lbl(app="web")}, [500])  # removed unknown id, then added
    assert user.changes[-1] == ("{any:app=web}", {500}, set())


def test_refcounting_and_drop(cache):
    web = S.LabelSelector([req("app", "web")])
    a, b = Recorder("a"), Recorder("b")
    cache.add_user(web, a)
    cache.add_user(web, a)
    cache.add_user(web, b)
    assert cache.selectors() == [{"selector": "{any:app=web}", "identities": [300, 302], "users": ["a", "b"]}]
    cache.remove_user(web, a)
    cache.remove_user(web, b)
    assert web in cache and cache.selectors()[0]["users"] == ["a"]
    cache.remove_user(web, a)
    assert web not in cache and cache.selectors() == []
    with pytest.raises(KeyError, match="has no user"):
        cache.remove_user(web, a)
    cache.update_identities({600: lbl(app="web")}, ())
    assert a.changes == [] and b.changes == []


def test_entities_and_cidr_in_cache(cache):
    import ipaddress
    world, cluster = S.entity_selector("world"), S.entity_selector("cluster")
    cidr = S.CIDRSelector(ipaddress.ip_network("10.0.0.0/8"))
    u = Recorder("u")
    for s in (world, cluster, cidr):
        cache.add_user(s, u)
    assert cache.selections(world) == {2}
    assert cache.selections(cluster) == {1, 3, 4, 5, 300, 301, 302}
    assert cache.selections(cidr) == set()
    cache.update_identities({L.MIN_CIDR_IDENTITY: L.cidr_labels("10.1.0.0/16")}, ())
    assert sorted(u.changes) == [("cidr:10.0.0.0/8", {L.MIN_CIDR_IDENTITY}, set()),
                                 ("entity:world", {L.MIN_CIDR_IDENTITY}, set())]


def test_a_failing_user_does_not_starve_others(cache):
    web = S.LabelSelector([req("app", "web")])

    class Failing(Recorder):
        def selections_changed(self, selector, added, removed):
            raise RuntimeError("map full")

    bad, good = Failing("bad"), Recorder("good")
    cache.add_user(web, bad)
    cache.add_user(web, good)
    with pytest.raises(RuntimeError, match="map full"):
        cache.update_identities({700: lbl(app="web")}, ())
    assert good.changes == [("{any:app=web}", {700}, set())] and 700 in cache.selections(web)
