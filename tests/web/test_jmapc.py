"""A real JMAP client library (jmapc, on requests) against the server: session, mail, submission, push."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerage.mail.mailbox import deliver
from tests.harness import async_wait_for
from tests.web.conftest import DOMAIN, HTTPS_PORT, PASSWORD, USER, next_address, start_host, stop_host

jmapc = pytest.importorskip("jmapc")


def certificate_for(address: str, workdir: Path) -> None:
    """The domain's certificate, valid for the loopback address too, so requests can verify it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN),
                                                        x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (workdir / f"{DOMAIN}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    (workdir / f"{DOMAIN}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_jmapc_reads_changes_and_sends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jmapc import Client, Ref
    from jmapc.methods import (
        EmailGet,
        EmailQuery,
        EmailSet,
        EmailSubmissionSet,
        IdentityGet,
        MailboxGet,
        ThreadGet,
    )
    from jmapc.models import Email, EmailAddress, EmailBodyPart, EmailBodyValue, EmailSubmission, Envelope

    address = next_address()
    certificate_for(address, tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / f"{DOMAIN}.crt"))
    server = await start_host(tmp_path, mail=True, address=address)
    try:
        await deliver(server.host, USER, b"From: Carol <carol@remote.example>\r\nTo: alice@example.org\r\n"
                                          b"Subject: for jmapc\r\nMessage-ID: <j1@remote.example>\r\n\r\nbody\r\n")

        def scenario() -> dict[str, object]:
            client = Client.create_with_password(host=f"{address}:{HTTPS_PORT}", user=USER, password=PASSWORD)
            out: dict[str, object] = {"account": client.account_id}
            boxes = client.request(MailboxGet(ids=None)).data
            out["roles"] = sorted(b.role or "" for b in boxes)
            inbox = next(b for b in boxes if b.role == "inbox")
            drafts = next(b for b in boxes if b.role == "drafts")
            sent = next(b for b in boxes if b.role == "sent")
            results = client.request([
                EmailQuery(filter={"inMailbox": inbox.id}, sort=None, limit=10),
                EmailGet(ids=Ref("/ids"), properties=["id", "subject", "threadId", "from", "keywords"]),
            ])
            emails = results[1].response.data
            out["subjects"] = [e.subject for e in emails]
            thread = client.request(ThreadGet(ids=[emails[0].thread_id])).data
            out["thread"] = thread[0].email_ids
            client.request(EmailSet(update={emails[0].id: {"keywords/$seen": True}}))
            again = client.request(EmailGet(ids=[emails[0].id], properties=["keywords"])).data
            out["keywords"] = again[0].keywords
            identity = client.request(IdentityGet()).data[0]
            draft = Email(mail_from=[EmailAddress(email=USER)], to=[EmailAddress(email="bob@example.org")],
                          subject="from jmapc", keywords={"$draft": True}, mailbox_ids={drafts.id: True},
                          body_values={"body": EmailBodyValue(value="sent by jmapc")},
                          text_body=[EmailBodyPart(part_id="body", type="text/plain")])
            created = client.request(EmailSet(create={"draft": draft}))
            email_id = created.created["draft"].id  # type: ignore[union-attr,index]
            submitted = client.request(EmailSubmissionSet(
                on_success_update_email={"#send": {f"mailboxIds/{drafts.id}": None,
                                                   f"mailboxIds/{sent.id}": True, "keywords/$draft": None}},
                create={"send": EmailSubmission(identity_id=identity.id, email_id=email_id,
                                                envelope=Envelope(mail_from=EmailAddress(email=USER),
                                                                  rcpt_to=[EmailAddress(email="bob@example.org")]))},
            ))
            # The answer is the EmailSubmission/set and the implicit Email/set of onSuccessUpdateEmail.
            out["answers"] = [type(r).__name__ for r in submitted]  # type: ignore[union-attr]
            out["submitted"] = sorted(submitted[0].created or {})  # type: ignore[index,union-attr]
            in_sent = client.request(EmailQuery(filter={"inMailbox": sent.id})).ids  # type: ignore[union-attr]
            out["sent"] = len(in_sent)
            return out

        result = await asyncio.to_thread(scenario)
        assert str(result["account"]).startswith("a")
        assert {"inbox", "sent", "drafts", "trash", "junk"} <= set(result["roles"])  # type: ignore[arg-type]
        assert result["subjects"] == ["for jmapc"]
        assert len(result["thread"]) == 1  # type: ignore[arg-type]
        assert result["keywords"] == {"$seen": True}
        assert result["answers"] == ["EmailSubmissionSetResponse", "EmailSetResponse"]
        assert result["submitted"] == ["send"]
        assert result["sent"] == 1  # onSuccessUpdateEmail moved the draft to Sent
        from peerage.mail.mailbox import store_for

        bob = await store_for(server.host).get_mailbox("bob@example.org", "INBOX")
        assert bob is not None
        (row,) = await store_for(server.host).messages(bob.id, None, with_header=True)
        assert b"from jmapc" in row.header
    finally:
        await stop_host(server)


async def test_jmapc_event_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jmapc import Client, EventSourceConfig

    address = next_address()
    certificate_for(address, tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / f"{DOMAIN}.crt"))
    server = await start_host(tmp_path, mail=True, address=address)
    try:
        got: list[object] = []
        ready = threading.Event()

        def listen() -> None:
            client = Client.create_with_password(host=f"{address}:{HTTPS_PORT}", user=USER, password=PASSWORD,
                                                 event_source_config=EventSourceConfig(closeafter="no", ping=0))
            for event in client.events:
                got.append(event)
                ready.set()
                if len(got) >= 2:
                    break

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        await async_wait_for(lambda: got, 30, "the initial state event")
        await deliver(server.host, USER, b"From: x@remote.example\r\nSubject: push\r\n\r\nbody\r\n")
        await async_wait_for(lambda: len(got) >= 2, 30, "the state event after a delivery")
        changes = got[1].data.changed  # type: ignore[attr-defined]
        assert next(iter(changes.values())).email
    finally:
        await stop_host(server)
