"""Telling a user that a fit has ended: email through the site's mail server, and/or a webhook.

A webhook is a POST of a small JSON document ({"fit", "name", "state", "chisq", "url"}) to the
address the user gave, http or https only, never following a redirect; only to the hosts the site
allows when it names any, else only to public addresses (a service that POSTs wherever it is told is
a way into the site's own network).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import smtplib
import socket
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from ..records import Status
from .settings import ServiceConfig

EMAIL = r"^[^@\s<>,;\"']+@[A-Za-z0-9.-]+$"


def check_request(config: ServiceConfig, email: str | None, webhook: str | None) -> dict[str, str]:
    """What a submission asks to be told, checked: a plain address, an allowed http(s) URL."""
    import re

    found: dict[str, str] = {}
    if email:
        if not config.mail_host:
            raise UsageError("this service sends no email: ask its administrators for a mail server")
        if not re.match(EMAIL, email) or len(email) > 254:
            raise UsageError(f"notify email {email!r} is not an email address")
        found["email"] = email
    if webhook:
        try:
            parts = urlsplit(webhook)
            parts.port  # noqa: B018 - parsing the port can fail too
        except ValueError:
            raise UsageError(f"webhook {webhook!r} is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"webhook {webhook!r}: give an http or https URL")
        if config.webhook_hosts and parts.hostname not in config.webhook_hosts:
            raise UsageError(f"webhook host {parts.hostname!r} is not one this service may call")
        checked_address(config, parts.hostname)
        found["webhook"] = webhook
    return found


def resolve(host: str) -> list[str]:
    """The host's addresses (one lookup)."""
    try:
        return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, None)))
    except (OSError, UnicodeError):
        raise UsageError(f"webhook host {host!r} cannot be resolved") from None


def checked_address(config: ServiceConfig, host: str) -> str:
    """The address to call *host* at, from one lookup: the call goes there and nowhere else, so a name
    that resolves to a public address for the check cannot lead the call into this site's own network
    (loopback, private, link-local: the cloud metadata address among them), unless the site names the
    host in [webhooks] allowed_hosts."""
    addresses = resolve(host)
    if not config.webhook_hosts:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global:
                raise UsageError(
                    f"webhook host {host!r} is on this site's own network ({ip}): the service does not call "
                    "there unless its administrators allow the host in [webhooks] allowed_hosts"
                )
    return addresses[0]


class _Pinned(http.client.HTTPConnection):
    """HTTP to a host's name (its Host header) at an address checked beforehand."""

    def __init__(self, host: str, address: str, **kwargs: Any):
        super().__init__(host, **kwargs)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """HTTPS to a host's name (its Host header, and the name its certificate must carry) at an address
    checked beforehand."""

    def __init__(self, host: str, address: str, **kwargs: Any):
        super().__init__(host, **kwargs)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(config: ServiceConfig, url: str, body: bytes, timeout: float = 20) -> int:
    """POST *body* to *url* at the address checked for its host now; never a redirect. The status."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    address = checked_address(config, host)
    kind = _PinnedTLS if parts.scheme == "https" else _Pinned
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal: bracketed, or http.client reads a port
    connection = kind(named, address, port=parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "bumps-mpi"}
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        answer.read(1024)
        return answer.status
    finally:
        connection.close()


def message(config: ServiceConfig, fit: dict, record: Status) -> dict[str, Any]:
    url = f"{config.base_url.rstrip('/')}/fits/{fit['id']}" if config.base_url else None
    return {
        "fit": fit["id"],
        "name": fit["name"],
        "state": record.get("state"),
        "chisq": record.get("chisq"),
        "url": url,
    }


def send(config: ServiceConfig, fit: dict, record: Status) -> list[str]:
    """Send what the fit asked for; what went wrong, in words (never raises: the fit has ended anyway)."""
    wanted = json.loads(fit.get("notify") or "{}")
    body = message(config, fit, record)
    problems = []
    if wanted.get("email"):
        try:
            mail = EmailMessage()
            mail["From"], mail["To"] = config.mail_sender, wanted["email"]
            mail["Subject"] = f"bumps-mpi: fit {fit['name']} {body['state']}"
            mail.set_content(
                f"Your fit {fit['name']} ({fit['id']}) ended: {body['state']}"
                + (f", chisq {body['chisq']:.6g}" if isinstance(body["chisq"], float) else "")
                + (f".\n\n{body['url']}\n" if body["url"] else ".\n")
            )
            with smtplib.SMTP(config.mail_host, config.mail_port, timeout=20) as smtp:
                smtp.send_message(mail)
        except Exception as exc:  # never raises: the fit has ended anyway
            problems.append(f"email to {wanted['email']}: {type(exc).__name__}: {exc}")
    if wanted.get("webhook"):
        try:  # checked again now, and called at the address checked: a name may resolve elsewhere later
            post(config, wanted["webhook"], json.dumps(body).encode())
        except Exception as exc:
            problems.append(f"webhook {wanted['webhook']}: {type(exc).__name__}: {exc}")
    return problems
