"""Unit tests of the sans-I/O SMTP server core (peerage.mail.smtp.engine): framing, the command
sequence, PIPELINING order, DATA with dot-unstuffing and its limits, MAIL/RCPT parameters, AUTH
continuations, STARTTLS and the error limits. No sockets: bytes in, events and replies out."""

from __future__ import annotations

import base64

import pytest

from peerage.mail.smtp import engine as smtp


def make(**kwargs: object) -> smtp.SmtpEngine:
    options: dict[str, object] = {"hostname": "mx.example.org", "max_size": 1000}
    options.update(kwargs)
    engine = smtp.SmtpEngine(**options)  # type: ignore[arg-type]
    engine.greeting()
    engine.data_to_send()
    return engine


def feed(engine: smtp.SmtpEngine, data: bytes) -> list[smtp.Event]:
    """Every event for `data`, answering MAIL and RCPT with 250 (and accepting them) and messages
    with 250."""
    engine.receive(data)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
        if isinstance(event, smtp.Mail):
            engine.mail_from = "" if event.address == "<>" else event.address
            engine.reply("250 2.1.0 Ok")
        elif isinstance(event, smtp.Rcpt):
            engine.rcpt_tos.append(event.address)
            engine.reply("250 2.1.5 Ok")
        elif isinstance(event, smtp.Message):
            engine.reply("250 2.0.0 Ok")
        elif isinstance(event, smtp.Vrfy):
            engine.reply("252 2.5.2 Cannot VRFY")
        elif isinstance(event, smtp.Quit):
            break
    return events


def codes(out: bytes) -> list[int]:
    return [int(line[:3]) for line in out.split(b"\r\n") if line[3:4] == b" "]


def test_greeting_and_ehlo_lists_extensions() -> None:
    engine = smtp.SmtpEngine(hostname="mx.example.org", ident="peerage ESMTP", max_size=1000,
                             starttls_available=True)
    engine.greeting()
    assert engine.data_to_send() == b"220 mx.example.org peerage ESMTP\r\n"
    feed(engine, b"EHLO client.example\r\n")
    lines = engine.data_to_send().split(b"\r\n")
    assert lines[0] == b"250-mx.example.org"
    assert b"250-SIZE 1000" in lines and b"250-8BITMIME" in lines and b"250-SMTPUTF8" in lines
    assert b"250-STARTTLS" in lines and b"250-PIPELINING" in lines and b"250-ENHANCEDSTATUSCODES" in lines
    assert lines[-2] == b"250 HELP" and not any(line.startswith(b"250-AUTH") for line in lines)


def test_pipelined_transaction_replies_in_order_and_message_unstuffed() -> None:
    engine = make()
    events = feed(engine, b"EHLO c\r\nMAIL FROM:<a@example.net> BODY=8BITMIME SIZE=20\r\n"
                          b"RCPT TO:<b@example.org>\r\nDATA\r\n")
    assert [type(e) for e in events] == [smtp.Reset, smtp.Mail, smtp.Rcpt]
    assert isinstance(events[1], smtp.Mail) and events[1].address == "a@example.net"
    assert events[1].options == ["BODY=8BITMIME", "SIZE=20"]
    assert codes(engine.data_to_send()) == [250, 250, 250, 354]
    # The end marker split over two reads, a stuffed dot, then a pipelined QUIT.
    events = feed(engine, b"Subject: x\r\n\r\n..leading dot\r\n.\r")
    assert events == []
    events = feed(engine, b"\nQUIT\r\n")
    assert isinstance(events[0], smtp.Message)
    assert events[0].data == b"Subject: x\r\n\r\n.leading dot\r\n"
    assert isinstance(events[1], smtp.Quit) and engine.closed
    assert codes(engine.data_to_send()) == [250, 221]
    assert engine.mail_from is None and engine.rcpt_tos == []  # the transaction ended with the message


def test_empty_message_and_marker_at_the_start_of_a_read() -> None:
    engine = make()
    feed(engine, b"HELO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    events = feed(engine, b".\r\n")
    assert isinstance(events[0], smtp.Message) and events[0].data == b""
    feed(engine, b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert feed(engine, b"line\r\n") == []
    events = feed(engine, b".\r\n")
    assert isinstance(events[0], smtp.Message) and events[0].data == b"line\r\n"


def test_sequence_errors_are_503() -> None:
    engine = make()
    feed(engine, b"MAIL FROM:<a@example.net>\r\n")
    assert engine.data_to_send() == b"503 5.5.1 Error: send HELO first\r\n"
    feed(engine, b"EHLO c\r\nRCPT TO:<b@example.org>\r\nDATA\r\nMAIL FROM:<a@example.net>\r\n"
                 b"MAIL FROM:<a@example.net>\r\n")
    assert codes(engine.data_to_send()) == [250, 503, 503, 250, 503]


def test_null_reverse_path_allows_rcpt() -> None:
    engine = make()
    events = feed(engine, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\n")
    assert isinstance(events[1], smtp.Mail) and events[1].address == "<>"
    assert isinstance(events[2], smtp.Rcpt)
    assert codes(engine.data_to_send())[-1] == 250


@pytest.mark.parametrize(("line", "code"), [
    (b"MAIL FROM:<a@example.net> FROBNICATE=1", 555),
    (b"MAIL FROM:<a@example.net> BODY=9BIT", 501),
    (b"MAIL FROM:<a@example.net> SIZE=1001", 552),
    (b"MAIL FROM:<a@example.net> SIZE=abc", 501),
    (b"MAIL FROM:<a@example.net> SMTPUTF8=yes", 501),
    (b"MAIL FROM:<a@example.net> X=", 501),
    (b"MAIL FROM:<<<>>>", 553),
    (b"MAIL FROM:", 501),
    (b"MAIL TO:<a@example.net>", 501),
])
def test_mail_parameters_refused(line: bytes, code: int) -> None:
    engine = make()
    events = feed(engine, b"EHLO c\r\n" + line + b"\r\n")
    assert not any(isinstance(e, smtp.Mail) for e in events)
    assert codes(engine.data_to_send())[-1] == code


def test_smtputf8_and_source_route() -> None:
    engine = make()
    events = feed(engine, "EHLO c\r\nMAIL FROM:<@relay.example:jörg@example.net> SMTPUTF8\r\n".encode())
    mail = events[1]
    assert isinstance(mail, smtp.Mail) and mail.address == "jörg@example.net" and mail.smtputf8


def test_rcpt_parameters_and_quoted_local_part() -> None:
    engine = make()
    events = feed(engine, b'EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org> NOTIFY=NEVER\r\n'
                          b'RCPT TO:<"x > y"@example.org>\r\nrcpt to: <c@example.org>\r\n')
    assert codes(engine.data_to_send()) == [250, 250, 555, 250, 250]
    assert [e.address for e in events if isinstance(e, smtp.Rcpt)] == ['"x > y"@example.org', "c@example.org"]


def test_bare_line_endings_in_commands_refused_in_place() -> None:
    engine = make()
    feed(engine, b"EHLO c\r\nNOOP\nNOOP\r\nNO\rOP\r\nNOOP\r\n")
    out = engine.data_to_send().split(b"\r\n")
    replies = [line for line in out if line[3:4] == b" "]
    assert replies[1].startswith(b"500 5.5.2 Bare <CR> or <LF>")
    assert replies[2].startswith(b"250 ") and replies[3].startswith(b"500 5.5.2 Bare")
    assert replies[4].startswith(b"250 ")


def test_command_line_limit() -> None:
    engine = make()
    feed(engine, b"EHLO c\r\nNOOP " + b"x" * 600 + b"\r\nMAIL FROM:<a@example.net> " + b"x" * 20 + b"\r\n")
    assert codes(engine.data_to_send()) == [250, 500, 555]
    # A line that never ends is not held in memory past the limit, and is refused once it ends.
    engine.receive(b"X" * 100000)
    assert engine.next_event() is None and engine.buffered() == 0
    feed(engine, b"XXX\r\nNOOP\r\n")
    assert codes(engine.data_to_send()) == [500, 250]


def test_text_limits() -> None:
    engine = make(max_size=100)
    feed(engine, b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    engine.data_to_send()
    assert feed(engine, b"y" * 200 + b"\r\n.\r\nNOOP\r\n") == []
    assert codes(engine.data_to_send()) == [552, 250]
    engine = make(max_size=10000)
    feed(engine, b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    engine.data_to_send()
    assert feed(engine, b"y" * 1000 + b"\r\n.\r\n") == []
    assert engine.data_to_send().startswith(b"500 5.5.2 Line too long")
    assert engine.mail_from is None


def test_unknown_commands_and_error_limit() -> None:
    engine = make()
    feed(engine, b"EHLO c\r\nBDAT 10\r\n")
    assert engine.data_to_send().endswith(b'500 5.5.2 Error: command "BDAT" not recognized\r\n')
    events = feed(engine, b"XA\r\nXB\r\nXC\r\nXD\r\nNOOP\r\n")
    assert isinstance(events[-1], smtp.Quit) and engine.closed
    assert engine.data_to_send().endswith(b"502 5.5.1 Too many unrecognized commands, goodbye.\r\n")
    engine = make()
    feed(engine, b"EHLO c\r\n" + b"RCPT TO:<b@example.org>\r\n" * 25)
    out = engine.data_to_send()
    assert codes(out).count(503) == smtp.MAX_ERRORS and out.endswith(b"421 4.7.0 Too many errors; closing connection\r\n")
    assert engine.closed


def test_other_commands() -> None:
    engine = make()
    events = feed(engine, b"EHLO c\r\nNOOP anything\r\nVRFY alice\r\nVRFY\r\nEXPN list\r\nHELP\r\nHELP MAIL\r\n"
                          b"RSET\r\nRSET x\r\nQUIT now\r\nQUIT\r\n")
    assert any(isinstance(e, smtp.Vrfy) and e.address == "alice" for e in events)
    out = engine.data_to_send()
    assert codes(out) == [250, 250, 252, 501, 502, 250, 250, 250, 501, 501, 221]
    assert b"250 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]" in out
    assert b"STARTTLS" not in out.split(b"Supported commands:")[1].split(b"\r\n")[0]


def test_starttls_required_and_state_forgotten() -> None:
    engine = make(starttls_available=True, require_starttls=True, auth_required=True,
                  auth_mechanisms=frozenset({"PLAIN"}), offer_auth=lambda: ["PLAIN"])
    events = feed(engine, b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nAUTH PLAIN\r\nSTARTTLS\r\nNOOP injected\r\n")
    out = engine.data_to_send()
    assert codes(out) == [250, 530, 530, 220]
    assert b"AUTH" not in out.split(b"\r\n530")[0]  # no AUTH before TLS
    assert isinstance(events[-1], smtp.StartTls)
    assert engine.next_event() is None and engine.buffered() == 0  # the injected command is dropped
    engine.tls_started()
    assert engine.helo is None
    feed(engine, b"EHLO c\r\n")
    out = engine.data_to_send()
    assert b"250-AUTH PLAIN\r\n" in out and b"STARTTLS" not in out
    feed(engine, b"MAIL FROM:<a@example.net>\r\n")
    assert engine.data_to_send() == b"530 5.7.0 Authentication required\r\n"


def test_auth_with_continuation_and_cancel() -> None:
    engine = make(tls=True, auth_mechanisms=frozenset({"PLAIN", "SCRAM-SHA-256"}))
    engine.receive(b"EHLO c\r\nAUTH CRAM-MD5\r\nAUTH scram-sha-256\r\n")
    assert isinstance(engine.next_event(), smtp.Reset)
    event = engine.next_event()
    assert isinstance(event, smtp.Auth) and event.mechanism == "SCRAM-SHA-256" and event.initial is None
    engine.challenge(b"")
    engine.receive(b"*\r\n")
    response = engine.next_event()
    assert isinstance(response, smtp.AuthResponse) and response.data is None
    out = engine.data_to_send()
    assert codes(out)[-3:] == [504, 334, 501] and b"501 5.7.0 Auth aborted" in out
    engine.receive(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    event = engine.next_event()
    assert isinstance(event, smtp.Auth) and event.initial == "AGFsaWNlAHNlY3JldA=="
    engine.challenge(b"server-final")
    engine.receive(base64.b64encode(b"x" * 9000) + b"\r\n")  # RFC 4954: longer than a command line
    response = engine.next_event()
    assert isinstance(response, smtp.AuthResponse) and response.data == b"x" * 9000
    engine.login()
    assert engine.authenticated and engine.data_to_send().endswith(b"235 2.7.0 Authentication successful\r\n")
    feed(engine, b"AUTH PLAIN\r\n")
    assert engine.data_to_send() == b"503 5.5.1 Already authenticated\r\n"


def test_auth_needs_tls_and_ehlo() -> None:
    engine = make(auth_mechanisms=frozenset({"PLAIN"}))
    feed(engine, b"AUTH PLAIN\r\nHELO c\r\nAUTH PLAIN\r\nEHLO c\r\nAUTH PLAIN\r\n")
    assert codes(engine.data_to_send()) == [503, 250, 500, 250, 538]


def test_parse_path() -> None:
    assert smtp.parse_path("<a@example.org> SIZE=1") == ("a@example.org", " SIZE=1")
    assert smtp.parse_path("<>") == ("<>", "")
    assert smtp.parse_path("a@example.org") == ("a@example.org", "")
    assert smtp.parse_path('<"a\\"b>"@example.org>') == ('"a\\"b>"@example.org', "")
    assert smtp.parse_path("<a@example.org")[0] is None
    assert smtp.parse_path("<a@example.org>x")[0] is None
    assert smtp.parse_path("<@r:>")[0] is None


def test_replies_do_not_depend_on_read_boundaries() -> None:
    """The same conversation fed whole and one byte at a time gives the same replies and message."""
    conversation = (b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                    b"Subject: x\r\n\r\n..\r\n.x\r\nend\r\n.\r\nNOOP\nRSET\r\nQUIT\r\n")
    whole = make()
    whole_events = feed(whole, conversation)
    split = make()
    split_events: list[smtp.Event] = []
    for i in range(len(conversation)):
        split_events.extend(feed(split, conversation[i:i + 1]))
    assert whole.data_to_send() == split.data_to_send()
    assert [type(e) for e in whole_events] == [type(e) for e in split_events]
    messages = [e.data for e in split_events if isinstance(e, smtp.Message)]
    assert messages == [b"Subject: x\r\n\r\n.\r\nx\r\nend\r\n"]
