"""``flameup-analytics check``: can this machine reach the API with these credentials?

Each step is checked on its own so the report names the first thing that is wrong (DNS, TCP,
TLS, proxy, key, workspace, clock) and what to do about it. Every step ends ``ok``, ``warn``
(it passed, but something looks off), ``skip`` (it could not be checked) or ``fail``; the
first failure ends the check.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from ._redact import redact_key, redact_url
from .errors import ConfigurationError, TransportError
from .message import keys
from .transport import HTTPTransport, Request, Response, configured_ca_bundle, tls_context, usable_proxy

#: Beyond this, the timestamps the SDK stamps on events (from this machine's clock) are off.
MAX_CLOCK_SKEW = 60.0
KEY_PATTERN = re.compile(r"^ws_(live|test)_[A-Za-z0-9]+_[A-Za-z0-9]+\.\S+$")


#: How a step ended: passed, passed with a concern, not checked, failed.
Status = Literal["ok", "warn", "skip", "fail"]

_SET_WORKSPACE = "set FLAMEUP_WORKSPACE_ID or pass --workspace-id"


@dataclass(frozen=True)
class Finding:
    """What one step found; ``hint`` says what to do when it is not ``ok``."""

    step: str
    status: Status
    detail: str
    hint: str = ""

    @property
    def ok(self) -> bool:
        """Whether the step passed without a concern."""
        return self.status == "ok"


def diagnose(
    api_key: str, workspace_id: str | None, host: str, user_agent: str, timeout: float = 5.0
) -> list[Finding]:
    """Check each step from configuration to an authenticated request; stop at the first failure."""
    findings = _configuration(api_key, workspace_id)
    parts = urllib.parse.urlsplit(host)
    hostname = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        proxy = usable_proxy(host)
    except ConfigurationError as exc:
        findings.append(Finding("proxy", "fail", str(exc)))
        return findings
    if proxy:
        findings.append(
            Finding("proxy", "ok", f"requests go through {redact_url(proxy)} (from the environment)")
        )
        proxy_parts = urllib.parse.urlsplit(proxy)
        reach_host, reach_port = proxy_parts.hostname or "", proxy_parts.port or 80
    else:
        reach_host, reach_port = hostname, port
    for step in (_dns, _tcp):
        finding = step(reach_host, reach_port, timeout)
        findings.append(finding)
        if not finding.ok:
            return findings
    if parts.scheme == "https" and not proxy:
        finding = _tls(hostname, port, timeout)
        findings.append(finding)
        if not finding.ok:
            return findings
    findings += _api(api_key, workspace_id, host, user_agent, timeout)
    return findings


def _configuration(api_key: str, workspace_id: str | None) -> list[Finding]:
    concerns = []
    if not KEY_PATTERN.match(api_key):
        concerns.append(
            Finding(
                "configuration",
                "warn",
                f"the API key {redact_key(api_key)} does not look like ws_live_abc12345_abc123.your_secret",
                "check FLAMEUP_API_KEY (or --api-key) if the API refuses it",
            )
        )
    if workspace_id is None:
        concerns.append(
            Finding(
                "configuration",
                "warn",
                "no workspace id: track() works; identify, send_transactional, get_person and "
                "verifying the key need one",
                _SET_WORKSPACE,
            )
        )
    return concerns or [
        Finding("configuration", "ok", f"key {redact_key(api_key)}, workspace {workspace_id}")
    ]


def _dns(hostname: str, port: int, timeout: float) -> Finding:
    try:
        found = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Finding(
            "dns", "fail", f"cannot resolve {hostname}: {exc}", "check FLAMEUP_HOST and the DNS setup"
        )
    addresses = sorted({str(info[4][0]) for info in found})
    return Finding("dns", "ok", f"{hostname} -> {', '.join(addresses)}")


def _tcp(hostname: str, port: int, timeout: float) -> Finding:
    started = time.monotonic()
    try:
        socket.create_connection((hostname, port), timeout=timeout).close()
    except OSError as exc:
        return Finding(
            "tcp",
            "fail",
            f"cannot connect to {hostname}:{port}: {exc}",
            "a firewall or a missing HTTPS_PROXY setting? (egress to the API must be allowed)",
        )
    return Finding(
        "tcp", "ok", f"connected to {hostname}:{port} in {(time.monotonic() - started) * 1000:.0f} ms"
    )


def _tls(hostname: str, port: int, timeout: float) -> Finding:
    context = tls_context(configured_ca_bundle())
    try:
        with (
            socket.create_connection((hostname, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as tls,
        ):
            version = tls.version()
            certificate = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return Finding(
            "tls",
            "fail",
            f"the certificate of {hostname} is not trusted: {exc.verify_message}",
            "a TLS-inspecting proxy? set REQUESTS_CA_BUNDLE to its CA bundle",
        )
    except (ssl.SSLError, OSError) as exc:
        return Finding("tls", "fail", f"TLS handshake with {hostname} failed: {exc}")
    expires = certificate.get("notAfter", "?")
    return Finding("tls", "ok", f"{version}, certificate valid until {expires}")


def _api(api_key: str, workspace_id: str | None, host: str, user_agent: str, timeout: float) -> list[Finding]:
    if workspace_id is None:
        return [
            Finding("auth", "skip", "the key was not verified: that needs a workspace id", _SET_WORKSPACE),
            Finding("clock", "skip", "not checked: no request was made"),
        ]
    # A read that changes nothing: look up a person that cannot exist.
    query = urllib.parse.urlencode({"external_id": f"flameup-check-{secrets.token_hex(4)}"})
    workspace = urllib.parse.quote(workspace_id, safe="")
    request = Request(
        "GET",
        f"{host}/api/v1/workspaces/{workspace}/people/search?{query}",
        {"Authorization": f"Bearer {api_key}", "User-Agent": user_agent, "Idempotency-Key": keys.new()},
    )
    transport = HTTPTransport(pool_size=1)
    sent = time.time()
    try:
        answer = transport.send(request, timeout)
    except TransportError as exc:
        return [Finding("http", "fail", f"no HTTP answer: {exc}")]
    finally:
        transport.close()
    if 200 <= answer.status < 300:
        # The API stamped its Date somewhere during the round trip: compare with the middle of it.
        return [
            Finding("auth", "ok", f"the API accepted the key for workspace {workspace_id}"),
            clock_skew(answer.header("Date"), (sent + time.time()) / 2),
        ]
    hint = {
        401: "the key is wrong or revoked: check FLAMEUP_API_KEY (or --api-key)",
        403: "the key is wrong or revoked: check FLAMEUP_API_KEY (or --api-key)",
        404: "unknown workspace or wrong host: check FLAMEUP_WORKSPACE_ID and FLAMEUP_HOST "
        "(or --workspace-id and --host)",
    }.get(answer.status, "")
    return [Finding("auth", "fail", _refusal_text(answer), hint)]


def _refusal_text(answer: Response) -> str:
    """``HTTP 401: <the API's message>``, once: without a message the body's stand-in is the status."""
    status = f"HTTP {answer.status}"
    message = answer.error_message()
    return message if message.startswith(status) else f"{status}: {message}"


def clock_skew(date_header: str | None, local_time: float) -> Finding:
    try:
        server_time = email.utils.parsedate_to_datetime(date_header or "").timestamp()
    except (TypeError, ValueError):
        return Finding("clock", "skip", "not checked: the API sent no usable Date header")
    skew = local_time - server_time
    if abs(skew) > MAX_CLOCK_SKEW:
        return Finding(
            "clock",
            "fail",
            f"this machine's clock is {skew:+.0f} s off the API's",
            "event timestamps come from this clock: enable NTP",
        )
    return Finding("clock", "ok", f"within {MAX_CLOCK_SKEW:.0f} s of the API's ({skew:+.1f} s)")
