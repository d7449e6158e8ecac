"""acgs.edge: rendering haproxy/haproxy.cfg.tmpl, and the local CA and server certificate."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.edge import EdgeConfig, Upstream, default_template, make_tls, render
from acgs.errors import ConfigurationError
from cryptography import x509

UPSTREAMS = [Upstream(f"s{i}", f"10.0.0.{i}:50051", 9464) for i in range(1, 4)]
CONFIG = EdgeConfig(upstreams=UPSTREAMS, certificate=Path("/etc/haproxy/acgs.pem"),
                    tls_addr="0.0.0.0:443", h2c_addr="127.0.0.1:8080",
                    stats_addr="127.0.0.1:8405")


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_render_fills_every_placeholder() -> None:
    out = render(CONFIG, default_template())
    assert "$" not in out
    got = lines(out)
    assert "bind 0.0.0.0:443 ssl crt /etc/haproxy/acgs.pem alpn h2" in got
    assert "bind 127.0.0.1:8080 proto h2" in got
    assert "bind 127.0.0.1:8405" in got
    for u in UPSTREAMS:
        assert f"server {u.name} {u.grpc_addr} check port 9464 check-proto h1" in got
        assert f"server {u.name} {u.grpc_addr} track acgs_unary/{u.name}" in got
    assert f"acl hash_matches req.fhdr(x-constitutional-hash) -m str {CONSTITUTIONAL_HASH}" in got
    assert any(line.startswith("default-server proto h2 check inter 500ms fall 2 rise 2")
               for line in got)


def test_render_timeouts_and_no_h2c() -> None:
    config = dataclasses.replace(CONFIG, h2c_addr=None, unary_timeout_s=2.5,
                                 stream_timeout_s=600, check_interval_s=0.2)
    got = lines(render(config, default_template()))
    assert not any(line.endswith("proto h2") and line.startswith("bind") for line in got)
    assert "timeout server 2500ms" in got  # defaults: unary
    assert got.count("timeout server 600000ms") == 1  # the streaming backend
    assert "timeout client 600000ms" in got
    assert any("check inter 200ms" in line for line in got)


@pytest.mark.parametrize(
    "change",
    [
        {"upstreams": []},
        {"upstreams": [UPSTREAMS[0], UPSTREAMS[0]]},
        {"upstreams": [Upstream("a b", "10.0.0.1:1", 2)]},
        {"upstreams": [Upstream("a", "10.0.0.1", 2)]},
        {"upstreams": [Upstream("a", "10.0.0.1:1", 0)]},
        {"tls_addr": "443"},
        {"constitutional_hash": "other"},
        {"unary_timeout_s": 0},
    ],
)
def test_render_refuses_bad_values(change: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        render(dataclasses.replace(CONFIG, **change), default_template())  # type: ignore[arg-type]


def test_render_refuses_unknown_placeholders() -> None:
    with pytest.raises(ConfigurationError):
        render(CONFIG, "bind $nowhere\n")


def test_make_tls_writes_a_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    pem = files.server_pem.read_bytes()
    server = x509.load_pem_x509_certificate(pem)
    assert b"PRIVATE KEY" in pem  # HAProxy's crt: certificate, then key
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    for secret in (files.ca_key, files.server_pem):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_make_tls_keeps_valid_files(tmp_path: Path) -> None:
    first = make_tls(tmp_path)
    before = first.ca.read_bytes(), first.server_pem.read_bytes()
    second = make_tls(tmp_path)
    assert (second.ca.read_bytes(), second.server_pem.read_bytes()) == before
    first.ca.write_text("not a certificate")
    assert make_tls(tmp_path).ca.read_bytes() != before[0]
