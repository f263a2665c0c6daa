"""Include/exclude by name glob and by label, values with '=' included."""

from __future__ import annotations

from container_netstat.records import Container
from container_netstat.filters import matches, select

WEB = Container("a" * 64, "web-1", "default", {"app": "web", "query": "a=b=c", "team": "x"})
DB = Container("b" * 64, "db", "default", {"app": "db"})
POD = Container("c" * 64, "k8s_POD_x", "none", {"io.kubernetes.pod.namespace": "kube-system"})


def test_name_glob() -> None:
    assert matches(WEB, "web-*") and not matches(DB, "web-*")
    assert matches(WEB, "web-1")


def test_label_with_equals_in_the_value() -> None:
    assert matches(WEB, "query=a=b=c")
    assert matches(WEB, "query=a=*")
    assert not matches(WEB, "query=a")
    assert not matches(DB, "query=*")  # no such label


def test_select_include_then_exclude() -> None:
    every = [WEB, DB, POD]
    assert select(every, [], []) == every
    assert select(every, ["app=*"], []) == [WEB, DB]
    assert select(every, [], ["io.kubernetes.pod.namespace=kube-*"]) == [WEB, DB]
    assert select(every, ["app=*"], ["db"]) == [WEB]
    assert select(every, ["nomatch"], []) == []
