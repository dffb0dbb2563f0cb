"""rpc.transport.urls: which broker URL is used, and keeping its password out of messages and logs."""

from __future__ import annotations

import pytest
from kombu import Connection

from rpc.transport.urls import DEFAULT_URL, URL_ENV, mask_url, resolve_url, scrub, url_password


@pytest.fixture(autouse=True)
def no_broker_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)


# -- resolve_url -----------------------------------------------------------------------------------

def test_the_default_url_is_guest_on_localhost() -> None:
    assert DEFAULT_URL == "amqp://guest:guest@localhost:5672//"
    assert resolve_url() == DEFAULT_URL


def test_the_environment_variable_is_rpc_broker_url() -> None:
    assert URL_ENV == "RPC_BROKER_URL"


def test_the_environment_variable_beats_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "amqp://env:pw@envhost:5673/v")
    assert resolve_url() == "amqp://env:pw@envhost:5673/v"


def test_an_empty_environment_variable_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(URL_ENV, "")
    assert resolve_url() == DEFAULT_URL


def test_an_explicit_url_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "amqp://env:pw@envhost//")
    assert resolve_url("memory://") == "memory://"


def test_pieces_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "amqp://env:pw@envhost//")
    assert resolve_url(hostname="piecehost") == "amqp://guest:guest@piecehost:5672/%2F"


@pytest.mark.parametrize("piece", ["hostname", "port", "username", "password", "vhost"])
def test_a_url_and_any_piece_together_are_a_value_error(piece: str) -> None:
    value = 5673 if piece == "port" else "x"
    with pytest.raises(ValueError, match="either url"):
        resolve_url("amqp://localhost//", **{piece: value})


def test_pieces_fill_in_the_defaults_for_what_is_missing() -> None:
    assert resolve_url(port=5673) == "amqp://guest:guest@localhost:5673/%2F"


def test_all_pieces_make_one_url() -> None:
    url = resolve_url(hostname="rabbit.example", port=5673, username="app", password="s3cret",
                      vhost="prod")
    assert url == "amqp://app:s3cret@rabbit.example:5673/prod"


def as_kombu_sees_it(url: str) -> Connection:
    """kombu's reading of ``url`` (constructing a Connection does not connect)."""
    return Connection(url)


def test_the_default_vhost_of_pieces_is_the_root_vhost() -> None:
    assert as_kombu_sees_it(resolve_url(hostname="h")).virtual_host == "/"


def test_special_characters_in_pieces_are_quoted_and_survive_kombus_parsing() -> None:
    username, password, vhost = "us@er:1", "p@ss:w/rd?#%&= é", "my/vhost"
    url = resolve_url(hostname="h", username=username, password=password, vhost=vhost)
    for raw in ("@ss", "w/rd", "?#", "my/vhost"):
        assert raw not in url
    conn = as_kombu_sees_it(url)
    assert (conn.hostname, conn.port) == ("h", 5672)
    assert (conn.userid, conn.password, conn.virtual_host) == (username, password, vhost)


def test_an_ipv6_hostname_is_bracketed() -> None:
    url = resolve_url(hostname="::1", port=5673)
    assert url == "amqp://guest:guest@[::1]:5673/%2F"
    assert as_kombu_sees_it(url).hostname == "::1"


def test_an_already_bracketed_ipv6_hostname_is_kept() -> None:
    assert resolve_url(hostname="[::1]") == "amqp://guest:guest@[::1]:5672/%2F"


def test_an_empty_password_piece_is_not_replaced_by_the_default() -> None:
    assert resolve_url(hostname="h", password="") == "amqp://guest:@h:5672/%2F"


# -- mask_url --------------------------------------------------------------------------------------

def test_mask_url_replaces_the_password() -> None:
    assert mask_url("amqp://app:s3cret@rabbit:5672/prod") == "amqp://app:**@rabbit:5672/prod"


def test_mask_url_of_the_default_url_hides_guest_password() -> None:
    assert mask_url(DEFAULT_URL) == "amqp://guest:**@localhost:5672//"


def test_mask_url_hides_a_quoted_password() -> None:
    url = resolve_url(hostname="h", username="u", password="p@ss:w/rd")
    masked = mask_url(url)
    assert masked == "amqp://u:**@h:5672/%2F"


def test_mask_url_hides_a_password_containing_an_at_sign() -> None:
    masked = mask_url("amqp://user:p@ss@host:5672//")
    assert "p@ss" not in masked
    assert masked == "amqp://user:**@host:5672//"


def test_mask_url_hides_a_password_with_an_empty_username() -> None:
    assert mask_url("amqp://:s3cret@host//") == "amqp://:**@host//"


def test_mask_url_keeps_the_query_string() -> None:
    assert mask_url("amqps://u:s3cret@h:5671/v?heartbeat=10") == "amqps://u:**@h:5671/v?heartbeat=10"


@pytest.mark.parametrize("url", [
    "memory://", "amqp://localhost//", "amqp://user@host:5672/v", "redis://host:6379/0", "",
    "not a url",
], ids=repr)
def test_mask_url_leaves_a_url_without_a_password_unchanged(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize("url", ["amqp://u:s3cret@[::1/", "amqp://u:s3cret@[bad]host//"])
def test_mask_url_of_an_unparsable_url_still_hides_the_password(url: str) -> None:
    assert "s3cret" not in mask_url(url)


@pytest.mark.parametrize("url, password", [
    ("amqp://user:pa/ss@host:5672//", "pa/ss"),
    ("amqp://user:pa#ss@host:5672//", "pa#ss"),
    ("amqp://user:pa?ss@host:5672//", "pa?ss"),
], ids=repr)
def test_mask_url_hides_an_unquoted_password_with_url_delimiters(url: str, password: str) -> None:
    assert password not in mask_url(url)


def test_mask_url_hides_every_password_of_a_failover_url() -> None:
    masked = mask_url("amqp://u:first-secret@h1//;amqp://u:second-secret@h2//")
    assert "first-secret" not in masked
    assert "second-secret" not in masked


# -- url_password and scrub ------------------------------------------------------------------------

def test_url_password_reads_the_password() -> None:
    assert url_password("amqp://u:s3cret@h//") == "s3cret"


@pytest.mark.parametrize("url", ["memory://", "amqp://u@h//"], ids=repr)
def test_url_password_without_a_password_is_none(url: str) -> None:
    assert url_password(url) is None


def test_scrub_removes_every_occurrence_of_the_password() -> None:
    text = "login s3cret refused; tried s3cret twice"
    assert scrub(text, "amqp://u:s3cret@h//") == "login ** refused; tried ** twice"


def test_scrub_removes_the_quoted_form_of_the_password() -> None:
    url = resolve_url(hostname="h", username="u", password="p@ss word")
    text = f"cannot connect to {url}"
    assert "p%40ss%20word" in text
    assert "p%40ss%20word" not in scrub(text, url)


def test_scrub_removes_the_decoded_form_of_a_quoted_password() -> None:
    url = resolve_url(hostname="h", username="u", password="p@ss word")
    assert scrub("AMQPLAIN login u/p@ss word refused", url) == "AMQPLAIN login u/** refused"


def test_scrub_without_a_password_changes_nothing() -> None:
    assert scrub("nothing to hide", "memory://") == "nothing to hide"
    assert scrub("nothing to hide", "amqp://u:pw@[::1/") == "nothing to hide"
