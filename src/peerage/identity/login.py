"""Running one SASL exchange against the account service and the throttle: the glue every protocol shares.

This module is in charge of the part of authentication that is the same in IMAP, SMTP and the other
line-based protocols once the framing is known: ask the throttle before a secret is checked, look the
SCRAM credential up or verify the password, record the failure (which writes the one failure log
line) or the success. The protocol supplies only ``exchange``, a coroutine that sends a challenge and
returns the client's answer (None when the client cancelled).

It also works out the login-name rule's default domain for a TLS connection: the hosted domain whose
certificate the connection presented (the one SNI chose), else the first hosted domain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from peerage.identity.sasl import (
    Challenge,
    Failure,
    LoginNames,
    NeedCredential,
    NeedExternal,
    NeedPassword,
    SaslServer,
    Step,
    Success,
)

Exchange = Callable[[bytes], Awaitable[bytes | None]]


def login_names(host: Any, sslobj: object | None) -> LoginNames:
    """The login-name rule for a connection to ``host``: bare names take the domain this connection's
    certificate names (SNI), else the first hosted domain; any hosted domain may be named."""
    domains = list(host.config.domains)
    default = domains[0] if domains else None
    if sslobj is not None and len(domains) > 1:
        from peerage.net.tls import local_certificate_der

        der = local_certificate_der(sslobj)  # type: ignore[arg-type]
        if der is not None:
            for name in domains:
                if host.tls.certificate_der(name) == der:
                    default = name
                    break
    return LoginNames(default, domains)


async def authenticate(
    server: SaslServer,
    mechanism: str,
    initial: bytes | None,
    *,
    exchange: Exchange,
    host: Any,
    ip: str,
    protocol: str,
    external: Callable[[str], Awaitable[str | None]] | None = None,
) -> Success | Failure:
    """Step ``server`` to the end. A Failure with condition ``temporary-auth-failure`` means the
    throttle refused the attempt (nothing was checked); ``aborted`` that the client cancelled."""
    throttle = host.limits.auth
    if throttle.check(ip) is None:
        return Failure("temporary-auth-failure", "too many failed attempts from this address; try later")
    step: Step = server.start(mechanism, initial)
    while True:
        if isinstance(step, Challenge):
            answer = await exchange(step.data)
            step = server.abort() if answer is None else server.respond(answer)
        elif isinstance(step, NeedCredential | NeedPassword):
            delay = throttle.check(ip, step.account)
            if delay is None:
                return Failure("temporary-auth-failure", "too many failed attempts; try later",
                               step.username, step.account)
            if delay:
                await asyncio.sleep(delay)  # the throttle's whole point: slow this address down
            if isinstance(step, NeedCredential):
                credential = await host.accounts.scram(step.account, step.hash_name) if step.account else None
                step = server.credential_found(credential)
            else:
                ok = await host.accounts.verify_password(step.account or "-@invalid", step.password)
                step = server.password_checked(ok)
        elif isinstance(step, NeedExternal):
            account = await external(step.authzid) if external is not None else None
            step = server.external_checked(account)
        elif isinstance(step, Success):
            throttle.success(ip, step.account)
            return step
        else:
            if step.condition != "aborted":
                throttle.failure(ip, step.account, protocol=protocol,
                                 mechanism=server.mechanism or mechanism[:32])
            return step
