"""Hostile input: the /proc parsers and the tag sanitizer under hypothesis.

Properties: a parser either returns or raises ParseError (never anything else); the
sanitized tags always decode, with an independent implementation of transfer's tag
parsing (docs/facts.rst, "The open-falcon push": strip spaces, split on ',', then on the first '='), to exactly the
intended keys, each once, with non-empty values; the counter fits 255 bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from container_netstat import falcon, procnet
from container_netstat.errors import ParseError
from container_netstat.metrics import NETNS_METRICS, PREFIX
from container_netstat.records import Sample

from conftest import PROC_NET
from test_falcon import transfer_tags
from test_procnet import tcp_states

SAMPLE_SNMP = (PROC_NET / "linux-6.18-server" / "snmp").read_text()
SAMPLE_SOCKSTAT = (PROC_NET / "linux-6.18-server" / "sockstat").read_text()
SAMPLE_TCP = (PROC_NET / "linux-6.18-states" / "tcp").read_text()

PROCISH = st.text(alphabet=st.sampled_from(list("TCPUDsocket: inuse0123456789-\n\t x=")), max_size=400)


def mutate(base: str):  # type: ignore[no-untyped-def]
    """Real files with a slice cut out, a byte changed, or lines swapped."""
    return st.tuples(st.integers(0, len(base)), st.integers(0, 40), st.text(max_size=5)).map(
        lambda t: base[: t[0]] + t[2] + base[t[0] + t[1]:]
    )


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), PROCISH, mutate(SAMPLE_SOCKSTAT)))
def test_sockstat_parser_never_crashes(text: str) -> None:
    try:
        result = procnet.parse_sockstat(text, "sockstat")
    except ParseError as err:
        assert str(err).startswith("sockstat")
    else:
        assert all(isinstance(v, int) for fields in result.values() for v in fields.values())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), PROCISH, mutate(SAMPLE_SNMP)))
def test_snmp_parser_never_crashes(text: str) -> None:
    try:
        result = procnet.parse_snmp(text, "snmp")
    except ParseError as err:
        assert str(err).startswith("snmp")
    else:
        assert all(isinstance(v, int) for fields in result.values() for v in fields.values())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), mutate(SAMPLE_TCP)))
def test_tcp_table_parser_never_crashes(text: str) -> None:
    try:
        result = tcp_states(text, "tcp")
    except ParseError:
        pass
    else:
        assert result["orphan"] <= sum(v for k, v in result.items() if k != "orphan")


HOSTILE_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from(list(",= \"'>/\r\n\t\x00\x7fé名")), max_size=80),
    st.integers(0, 70000).map(lambda n: "v" * n),
)


@settings(max_examples=400, deadline=None)
@given(namespace=HOSTILE_TEXT, pod=HOSTILE_TEXT, metric=st.sampled_from([m.name for m in NETNS_METRICS]))
def test_sanitized_tags_decode_to_exactly_the_intended_keys(namespace: str, pod: str, metric: str) -> None:
    (item,) = falcon.build_items(
        [Sample(PREFIX + metric, 1, "GAUGE", (("namespace", namespace), ("pod", pod)))],
        endpoint=namespace or "h", timestamp=1700000000, step=60,
    )
    decoded = transfer_tags(item["tags"])
    assert list(decoded) == ["namespace", "pod"]
    assert item["tags"].count("namespace=") == 1 and item["tags"].count(",pod=") == 1
    assert all(decoded.values())
    assert len((item["metric"] + "/" + item["tags"]).encode()) <= 255
    assert len(item["endpoint"].encode()) <= 255
    assert all(32 < ord(ch) < 127 for ch in item["tags"] + item["endpoint"])
    assert not set("\"'>/ ") & set(item["tags"])
