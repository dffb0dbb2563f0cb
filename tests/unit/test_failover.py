"""Several broker URLs: splitting, validation, masking, and the order a client tries them in."""

from __future__ import annotations

import pytest

from rpc.transport.connect import Failover
from rpc.transport.urls import mask_url, resolve_url, scrub, split_urls

A = "amqp://u:secret@node1:5672//"
B = "amqp://u:secret@node2:5672//"
C = "amqp://u:secret@node3:5672//"


def test_a_list_of_urls_is_kept_in_order() -> None:
    assert split_urls([A, B, C]) == [A, B, C]


@pytest.mark.parametrize("separator", [";", ",", " ; ", ", "])
def test_one_string_splits_on_semicolons_or_commas(separator: str) -> None:
    assert split_urls(separator.join([A, B])) == [A, B]


def test_a_comma_or_semicolon_inside_a_password_does_not_split() -> None:
    url = "amqp://u:pa,ss;word@node1:5672//"
    assert split_urls(f"{url},{B}") == [url, B]


def test_resolve_url_joins_several_urls_with_semicolons() -> None:
    assert resolve_url([A, B]) == f"{A};{B}"
    assert resolve_url(f"{A},{B}") == f"{A};{B}"


@pytest.mark.parametrize("bad", ["", "localhost:5672", "http://node1//", [A, "nonsense"]])
def test_anything_but_broker_urls_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        split_urls(bad)  # type: ignore[arg-type]


def test_an_invalid_url_is_named_with_its_password_masked() -> None:
    with pytest.raises(ValueError) as info:
        split_urls([A, "amqp://u:secret@node2:notaport//"])
    assert "secret" not in str(info.value)
    assert "u:**@node2" in str(info.value)


def test_every_password_of_a_comma_separated_string_is_masked() -> None:
    assert mask_url(f"{A},{B}") == "amqp://u:**@node1:5672//;amqp://u:**@node2:5672//"


def test_scrub_removes_every_urls_password() -> None:
    assert "secret" not in scrub("login secret refused, other secret2", f"{A},{B[:-2]}2//")


def test_round_robin_tries_the_urls_in_order() -> None:
    failover = Failover([A, B, C])
    assert [failover.take() for _ in range(4)] == [A, B, C, A]


def test_a_reconnect_starts_with_the_node_after_the_one_last_connected() -> None:
    failover = Failover([A, B, C])
    failover.connected(failover.take())
    assert failover.take() == B


def test_after_the_last_node_the_next_reconnect_wraps_to_the_first() -> None:
    failover = Failover([A, B, C])
    failover.connected(C)
    assert failover.take() == A


def test_shuffle_tries_every_url_once_per_round() -> None:
    failover = Failover([A, B, C], "shuffle")
    assert sorted(failover.take() for _ in range(3)) == [A, B, C]


def test_shuffle_spreads_clients_across_nodes() -> None:
    firsts = {Failover([A, B, C], "shuffle").take() for _ in range(60)}
    assert firsts == {A, B, C}


def test_an_unknown_strategy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        Failover([A], "random")  # type: ignore[arg-type]


def test_the_node_is_the_host_and_port_last_connected_to() -> None:
    failover = Failover([A, B])
    assert failover.node() is None
    failover.connected(B)
    assert failover.node() == "node2:5672"
