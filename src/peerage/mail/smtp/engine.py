"""Sans-I/O SMTP server protocol core (RFC 5321): bytes in, events and replies out.

This module is in charge of the SMTP conversation itself, with no socket, clock or policy in it:
command-line framing with the RFC 5321 §4.5.3.1.4 line limit and the extensions' additions, the
refusal of bare CR or LF in command lines (RFC 5321 §2.3.8), PIPELINING (RFC 2920: every reply in the
order of its command), the command sequence and its 503s, the syntax of HELO/EHLO/MAIL/RCPT/DATA/RSET/
NOOP/QUIT/VRFY/HELP/STARTTLS/AUTH, the MAIL parameters SIZE (RFC 1870), BODY (RFC 6152) and SMTPUTF8
(RFC 6531), the message text with its dot-unstuffing and limits, AUTH continuation lines (RFC 4954
§4: base64 and the "*" cancel), ENHANCEDSTATUSCODES (RFC 2034, through `replies.with_enhanced_code`)
and a limit of protocol errors per connection.

What to answer to a sender, a recipient, a message or a login is the caller's (the policy in
`server.py`): `next_event` hands those over as events, and the caller answers each with `reply`
before asking for the next one; every other line the engine answers by itself. Output accumulates
until `data_to_send` takes it, so a pipelined group goes out in one write.

The replies the engine gives by itself are those of aiosmtpd 1.4.6, which served this port before,
where clients and the tests know them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence

from peerage.mail.smtp.replies import with_enhanced_code

# RFC 5321 §4.5.3.1.4: 512 octets for a command line; RFC 1870 §3 adds 26 to MAIL for SIZE= and
# RFC 6531 §3.4 adds 10 for SMTPUTF8. As aiosmtpd did, the CRLF is not counted.
COMMAND_LINE_LIMIT = 512
MAIL_LINE_LIMIT = COMMAND_LINE_LIMIT + 26 + 10
# RFC 4954 §4: an AUTH command with an initial response, and each response line, may be 12288 octets.
AUTH_LINE_LIMIT = 12288
# RFC 5321 §4.5.3.1.6: 1000 octets per text line with its CRLF, plus one for a stuffed dot.
TEXT_LINE_LIMIT = 1001
# aiosmtpd closed a connection after five unknown commands; Postfix's smtpd_hard_error_limit is 20
# errors per connection. Both are kept: five unknown commands, twenty protocol errors of any kind.
MAX_UNKNOWN_COMMANDS = 5
MAX_ERRORS = 20

BARE_LINE_ENDING_IN_COMMAND = (
    "500 5.5.2 Bare <CR> or <LF> in a command line; only <CR><LF> may end a line (RFC 5321 2.3.8)"
)
LINE_TOO_LONG = "500 Command line too long"
TOO_MANY_UNKNOWN = "502 5.5.1 Too many unrecognized commands, goodbye."
TOO_MANY_ERRORS = "421 4.7.0 Too many errors; closing connection"
STARTTLS_FIRST = "530 Must issue a STARTTLS command first"
# RFC 3207 §4: before TLS only these may come when the server requires it.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
# HELP's syntax lines, as aiosmtpd gave them.
SYNTAX = {
    "AUTH": "AUTH <mechanism>",
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM: <address>",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}
PARAMETERS_SYNTAX = " [SP <mail-parameters>]"

# The usual path, "<local@domain>" with nothing that needs quoting or is a route (RFC 5321 §4.1.2).
_PLAIN_PATH = re.compile(r'<([^\s"\\()<>,;:\[\]@]+@[^\s"\\()<>,;:\[\]@]+)>(?=[ \t]|\Z)')

# Engine modes.
COMMAND, TEXT, AUTH_LINE, CLOSED = range(4)


class Event:
    """Something the caller decides on; it answers with `SmtpEngine.reply` (except for `Reset`)."""

    __slots__ = ()


class Mail(Event):
    """MAIL FROM with a well-formed path and parameters the engine accepts. `address` is the path
    without angle brackets and source route ("" for the null path); `options` the upper-cased
    parameters. On acceptance the caller sets `engine.mail_from`."""

    __slots__ = ("address", "options", "smtputf8")

    def __init__(self, address: str, options: list[str], smtputf8: bool) -> None:
        self.address, self.options, self.smtputf8 = address, options, smtputf8


class Rcpt(Event):
    """RCPT TO with a well-formed path after an accepted MAIL. On acceptance the caller appends
    the recipient to `engine.rcpt_tos`."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address


class Message(Event):
    """The text of a message after DATA, dot-unstuffed (RFC 5321 §4.5.2), within the limits."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Auth(Event):
    """AUTH with a mechanism the engine was told of; `initial` is the initial response as sent
    (base64, or "=" for an empty one), or None."""

    __slots__ = ("initial", "mechanism")

    def __init__(self, mechanism: str, initial: str | None) -> None:
        self.mechanism, self.initial = mechanism, initial


class AuthResponse(Event):
    """The client's line after a 334 challenge, decoded; None when it cancelled with "*" or sent
    bad base64 (the engine has already answered 501). Needs no `reply` of its own."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None) -> None:
        self.data = data


class Reset(Event):
    """RSET was accepted (the engine has answered it); the caller forgets its transaction state."""

    __slots__ = ()


class Vrfy(Event):
    """VRFY with an address."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address


class StartTls(Event):
    """STARTTLS was accepted and "220" queued: send it, then start TLS. Bytes the client sent after
    the command were dropped (RFC 3207 §5, command injection); call `tls_started` once TLS is up."""

    __slots__ = ()


class Quit(Event):
    """The client said QUIT (answered) or the engine gave up on it: send what is queued and close."""

    __slots__ = ()


RESET = Reset()
STARTTLS = StartTls()
QUIT = Quit()


def parse_path(text: str) -> tuple[str | None, str]:
    """(address, rest) of a MAIL or RCPT argument after the keyword: the path between angle brackets,
    its source route dropped (RFC 5321 §4.1.1.3 says to ignore it), or a bare address as aiosmtpd
    accepted; address None when the path is malformed."""
    text = text.lstrip(" \t")
    if not text:
        return "", ""
    plain = _PLAIN_PATH.match(text)
    if plain is not None:
        return plain.group(1), text[plain.end():]
    if text[0] != "<":
        address, _, rest = text.partition(" ")
        if "<" in address or ">" in address:
            return None, ""
        return address, rest
    # The closing ">" is the first outside a quoted string (RFC 5321 §4.1.2 Quoted-string).
    i, n, quoted = 1, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            break
        elif c == "<":
            return None, ""
        i += 1
    else:
        return None, ""
    path, rest = text[1:i], text[i + 1 :]
    if rest and rest[0] not in " \t":
        return None, ""
    if not path:
        return "<>", rest  # the null reverse-path, named as aiosmtpd named it
    if path[0] == "@":
        # A source route "@a,@b:local@domain".
        _route, colon, path = path.partition(":")
        if not colon or not path:
            return None, ""
    if any(c in path for c in " \t") and '"' not in path:
        return None, ""
    return path, rest


def parse_parameters(words: Sequence[str]) -> dict[str, str | bool] | None:
    """RFC 5321 §4.1.2 esmtp-param: keyword["=" value]; None when one is malformed."""
    result: dict[str, str | bool] = {}
    for word in words:
        name, eq, value = word.partition("=")
        if not name.isalnum() or (eq and not value):
            return None
        result[name] = value if eq else True
    return result


class SmtpEngine:
    """One SMTP server connection's protocol state."""

    def __init__(
        self,
        *,
        hostname: str,
        ident: str = "ESMTP",
        max_size: int = 0,
        smtputf8: bool = True,
        starttls_available: bool = False,
        require_starttls: bool = False,
        tls: bool = False,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        auth_mechanisms: frozenset[str] = frozenset(),
        offer_auth: Callable[[], Sequence[str]] | None = None,
        extensions: Sequence[str] = ("PIPELINING", "ENHANCEDSTATUSCODES"),
    ) -> None:
        self.hostname = hostname
        self.ident = ident
        self.max_size = max_size
        self.smtputf8_enabled = smtputf8
        self.starttls_available = starttls_available
        self.require_starttls = require_starttls and starttls_available
        self.tls = tls
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.auth_mechanisms = auth_mechanisms  # what AUTH accepts as an event; others get 504
        self.offer_auth = offer_auth  # what EHLO lists after AUTH, asked at each EHLO
        self.extensions = tuple(extensions)
        self.mode = COMMAND
        self.helo: str | None = None
        self.extended = False
        self.authenticated = False
        # The transaction (RFC 5321 §3.3): set by the caller when it accepts MAIL and RCPT.
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
        self.smtputf8 = False
        self.mail_options: list[str] = []
        self._buffer = b""
        self._out: list[bytes] = []
        self._text: list[bytes] = []  # message text so far (TEXT mode)
        self._text_size = 0
        self._tail = b"\r\n"  # the last bytes of the text; the DATA line's CRLF at first
        self._discarding = False  # a command line over the limit: drop bytes up to its LF
        self._pending: Event | None = None  # a Message awaiting its `reply`
        self._unknown = 0
        self._errors = 0

    # Input and output.

    def greeting(self) -> None:
        self._out.append(f"220 {self.hostname} {self.ident}\r\n".encode())

    def receive(self, data: bytes) -> None:
        if self.mode != CLOSED:
            self._buffer += data

    def buffered(self) -> int:
        return len(self._buffer)

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    @property
    def closed(self) -> bool:
        return self.mode == CLOSED

    def reply(self, text: str) -> None:
        """The caller's answer to the pending event, enhanced status code added when missing."""
        event, self._pending = self._pending, None
        if isinstance(event, Message):
            self.reset_transaction()
        self._send(text)

    def _send(self, text: str) -> None:
        self._out.append(with_enhanced_code(text).encode("utf-8", "replace") + b"\r\n")

    def _raw(self, text: str) -> None:
        self._out.append(text.encode("utf-8", "replace") + b"\r\n")

    def _error(self, text: str) -> None:
        self._send(text)
        self._errors += 1
        if self._errors >= MAX_ERRORS and self.mode != CLOSED:
            self._send(TOO_MANY_ERRORS)
            self._close()

    def _close(self) -> None:
        self.mode = CLOSED
        self._buffer = b""

    def reset_transaction(self) -> None:
        self.mail_from = None
        self.rcpt_tos = []
        self.smtputf8 = False
        self.mail_options = []

    def challenge(self, data: bytes) -> None:
        """Send a 334 challenge (RFC 4954 §4); the next line is the client's response."""
        self._out.append(b"334 " + base64.b64encode(data) + b"\r\n")
        self.mode = AUTH_LINE

    def login(self) -> None:
        """The pending AUTH succeeded: answer 235."""
        self.authenticated = True
        self.reply("235 2.7.0 Authentication successful")

    def tls_started(self) -> None:
        """RFC 3207 §4.2: after the handshake the server forgets what the client said before."""
        self.tls = True
        self.helo = None
        self.extended = False
        self.authenticated = False
        self.reset_transaction()

    def close_with(self, text: str) -> None:
        """Send a last reply (a 421) and stop reading."""
        self._send(text)
        self._close()

    # Parsing.

    def next_event(self) -> Event | None:
        """The next event for the caller, or None when more bytes are needed (or the connection is
        closed: see `closed`). Lines the engine answers itself are answered on the way."""
        while self.mode != CLOSED:
            if self.mode == TEXT:
                event = self._read_text()
                if event is None:
                    if self.mode == TEXT:
                        return None
                    continue  # the text was refused; what follows it is commands again
                self._pending = event
                return event
            buffer = self._buffer
            end = buffer.find(b"\n")
            limit = AUTH_LINE_LIMIT + 2 if self.mode == AUTH_LINE or buffer[:4].upper() == b"AUTH" else \
                MAIL_LINE_LIMIT + 2
            if end < 0:
                if len(buffer) > limit:
                    # RFC 5321 §4.5.3.1.4: refuse the line once it ends; keep nothing of it meanwhile.
                    self._buffer = b""
                    self._discarding = True
                return None
            line, self._buffer = buffer[:end + 1], buffer[end + 1:]
            if self._discarding:
                self._discarding = False
                if self.mode == AUTH_LINE:
                    self.mode = COMMAND
                    self._send("501 5.5.2 Response too long")
                    return AuthResponse(None)
                self._error(LINE_TOO_LONG)
                continue
            if self.mode == AUTH_LINE:
                self.mode = COMMAND
                return self._auth_response(line)
            event = self._command(line)
            if event is not None:
                return event
        return None

    def _auth_response(self, line: bytes) -> Event:
        blob = line.strip()
        if blob == b"*":
            self._send("501 5.7.0 Auth aborted")
            return AuthResponse(None)
        try:
            return AuthResponse(base64.b64decode(blob, validate=True))
        except (binascii.Error, ValueError):
            self._send("501 5.5.2 Can't decode base64")
            return AuthResponse(None)

    def _command(self, line: bytes) -> Event | None:
        # RFC 5321 §2.3.8: only CRLF ends a line; a bare CR or LF is refused and the line not read.
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self._error(BARE_LINE_ENDING_IN_COMMAND)
            return None
        line = line[:-2]
        if not line:
            self._error("500 Error: bad syntax")
            return None
        word, _, rest = line.partition(b" ")
        try:
            command = word.decode("ascii").upper()
        except UnicodeDecodeError:
            self._error("500 Error: bad syntax")
            return None
        arg: str | None = None
        if rest:
            rest = rest.strip()
            if self.smtputf8_enabled:
                arg = rest.decode("utf-8", "surrogateescape")
            else:
                try:
                    arg = rest.decode("ascii")
                except UnicodeDecodeError:
                    self._error("500 Error: strict ASCII mode")
                    return None
        limit = COMMAND_LINE_LIMIT
        if self.extended:
            if command == "MAIL":
                limit = MAIL_LINE_LIMIT
            elif command == "AUTH":
                limit = AUTH_LINE_LIMIT
        if len(line) > limit:
            self._error(LINE_TOO_LONG)
            return None
        if self.require_starttls and not self.tls and command not in ALLOWED_BEFORE_STARTTLS:
            self._error(STARTTLS_FIRST)
            return None
        handler = _COMMANDS.get(command)
        if handler is None:
            self._unknown += 1
            if self._unknown >= MAX_UNKNOWN_COMMANDS:
                self._send(TOO_MANY_UNKNOWN)
                self._close()
                return QUIT
            self._error(f'500 Error: command "{command}" not recognized')
            return None
        return handler(self, arg)

    # Commands.

    def _needs_helo(self, helo: str = "HELO") -> bool:
        if not self.helo:
            self._error(f"503 Error: send {helo} first")
            return True
        return False

    def _needs_auth(self) -> bool:
        if self.auth_required and not self.authenticated:
            self._send("530 5.7.0 Authentication required")
            return True
        return False

    def _helo(self, arg: str | None) -> Event | None:
        if not arg:
            self._error("501 Syntax: HELO hostname")
            return None
        self.reset_transaction()
        self.extended = False
        self.helo = arg
        self._raw(f"250 {self.hostname}")
        return RESET

    def _ehlo(self, arg: str | None) -> Event | None:
        if not arg:
            self._error("501 Syntax: EHLO hostname")
            return None
        self.reset_transaction()
        self.extended = True
        self.helo = arg
        lines = [self.hostname]
        if self.max_size:
            lines.append(f"SIZE {self.max_size}")
        lines.append("8BITMIME")
        if self.smtputf8_enabled:
            lines.append("SMTPUTF8")
        if self.starttls_available and not self.tls:
            lines.append("STARTTLS")
        if (self.tls or not self.auth_require_tls) and self.offer_auth is not None:
            mechanisms = self.offer_auth()
            if mechanisms:
                lines.append("AUTH " + " ".join(mechanisms))
        lines.extend(self.extensions)
        lines.append("HELP")
        last = len(lines) - 1
        self._out.append("".join(f"250{' ' if i == last else '-'}{text}\r\n"
                                 for i, text in enumerate(lines)).encode("utf-8", "replace"))
        return RESET

    def _syntax_error(self, keyword: str) -> None:
        text = f"501 Syntax: {SYNTAX[keyword]}"
        if self.extended:
            text += PARAMETERS_SYNTAX
        self._error(text)

    def _mail(self, arg: str | None) -> Event | None:
        if self._needs_helo() or self._needs_auth():
            return None
        if arg is None or arg[:5].upper() != "FROM:":
            self._syntax_error("MAIL")
            return None
        address, rest = parse_path(arg[5:])
        if address is None:
            self._error("553 5.1.3 Error: malformed address")
            return None
        if not address or (rest.strip() and not self.extended):
            self._syntax_error("MAIL")
            return None
        if self.mail_from is not None:
            self._error("503 Error: nested MAIL command")
            return None
        options = rest.upper().split()
        params = parse_parameters(options)
        if params is None:
            self._syntax_error("MAIL")
            return None
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            self._error("501 Error: BODY can only be one of 7BIT, 8BITMIME")
            return None
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool):
            self._error("501 Error: SMTPUTF8 takes no arguments")
            return None
        if smtputf8 and not self.smtputf8_enabled:
            self._error("501 Error: SMTPUTF8 disabled")
            return None
        size = params.pop("SIZE", None)
        if size:
            if isinstance(size, bool) or not size.isdigit():
                self._syntax_error("MAIL")
                return None
            if self.max_size and int(size) > self.max_size:
                self._send("552 Error: message size exceeds fixed maximum message size")
                return None
        if params:
            self._error("555 MAIL FROM parameters not recognized or not implemented")
            return None
        return Mail(address, options, smtputf8)

    def _rcpt(self, arg: str | None) -> Event | None:
        if self._needs_helo() or self._needs_auth():
            return None
        if self.mail_from is None:
            self._error("503 Error: need MAIL command")
            return None
        if arg is None or arg[:3].upper() != "TO:":
            self._syntax_error("RCPT")
            return None
        address, rest = parse_path(arg[3:])
        if address is None:
            self._error("553 5.1.3 Error: malformed address")
            return None
        if not address or (rest.strip() and not self.extended):
            self._syntax_error("RCPT")
            return None
        params = parse_parameters(rest.upper().split())
        if params is None:
            self._syntax_error("RCPT")
            return None
        if params:
            # No RCPT parameter is offered (DSN's NOTIFY= and ORCPT= are not, RFC 3461).
            self._error("555 RCPT TO parameters not recognized or not implemented")
            return None
        return Rcpt(address)

    def _data(self, arg: str | None) -> Event | None:
        if self._needs_helo() or self._needs_auth():
            return None
        if not self.rcpt_tos:
            self._error("503 Error: need RCPT command")
            return None
        if arg:
            self._error("501 Syntax: DATA")
            return None
        self._raw("354 End data with <CR><LF>.<CR><LF>")
        self.mode = TEXT
        self._text = []
        self._text_size = 0
        self._tail = b"\r\n"
        return None

    def _read_text(self) -> Event | None:
        """RFC 5321 §4.1.1.4: the text ends at a line holding only "."; the DATA line's CRLF counts
        as the CRLF before it, so an empty message is "." CRLF at once."""
        buffer = self._buffer
        # The end marker may straddle earlier reads: look back four bytes into the text.
        before = self._tail
        found = (before + buffer).find(b"\r\n.\r\n")
        if found < 0:
            self._keep_text(buffer)
            self._buffer = b""
            return None
        found -= len(before)
        end, cut = found + 2, found + 5
        if end < 0:  # the marker began in an earlier read: take its start back out of the text
            self._text_size += end
            trim = -end
            while trim and self._text:
                last = self._text.pop()
                if len(last) > trim:
                    self._text.append(last[:-trim])
                    break
                trim -= len(last)
            end = 0
        self._keep_text(buffer[:end])
        self._buffer = buffer[cut:]
        self.mode = COMMAND
        text, self._text, self._tail = b"".join(self._text), [], b"\r\n"
        size, self._text_size = self._text_size, 0
        if self.max_size and size > self.max_size:
            self.reset_transaction()
            self._send("552 Error: Too much mail data")
            return None
        if text and max(map(len, text.split(b"\r\n"))) > TEXT_LINE_LIMIT - 2:
            self.reset_transaction()
            self._send("500 Line too long (see RFC5321 4.5.3.1.6)")
            return None
        # RFC 5321 §4.5.2: a leading dot of a line was added by the client; take it away.
        if text.startswith(b".") or b"\n." in text:
            text = (b"\r\n" + text).replace(b"\r\n.", b"\r\n")[2:]
        return Message(text)

    def _keep_text(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._tail = (self._tail + chunk[-4:])[-4:]
        self._text_size += len(chunk)
        if self.max_size and self._text_size > self.max_size:
            # Too much already: keep only the tail in which the end marker is looked for.
            self._text = [self._tail]
            return
        self._text.append(chunk)

    def _rset(self, arg: str | None) -> Event | None:
        if arg:
            self._error("501 Syntax: RSET")
            return None
        self.reset_transaction()
        self._send("250 2.0.0 Ok")
        return RESET

    def _noop(self, arg: str | None) -> Event | None:
        self._send("250 2.0.0 Ok")
        return None

    def _quit(self, arg: str | None) -> Event | None:
        if arg:
            self._error("501 Syntax: QUIT")
            return None
        self._send("221 Bye")
        self._close()
        return QUIT

    def _vrfy(self, arg: str | None) -> Event | None:
        if self._needs_auth():
            return None
        if not arg:
            self._error("501 Syntax: VRFY <address>")
            return None
        address, _ = parse_path(arg)
        if address is None:
            self._send("502 Could not VRFY " + arg)
            return None
        return Vrfy(address)

    def _expn(self, arg: str | None) -> Event | None:
        self._send("502 EXPN not implemented")
        return None

    def _help(self, arg: str | None) -> Event | None:
        if self._needs_auth():
            return None
        available = [name for name in SYNTAX if name != "STARTTLS" or self.starttls_available]
        code = 250
        if arg:
            name = arg.upper()
            if name in available:
                text = SYNTAX[name]
                if self.extended and name in ("MAIL", "RCPT"):
                    text += PARAMETERS_SYNTAX
                self._send("250 Syntax: " + text)
                return None
            code = 501
        self._send(f"{code} Supported commands: {' '.join(sorted(available))}")
        return None

    def _starttls(self, arg: str | None) -> Event | None:
        if arg:
            self._error("501 Syntax: STARTTLS")
            return None
        if not self.starttls_available:
            self._send("454 TLS not available")
            return None
        if self.tls:
            self._error("503 5.5.1 TLS already active")
            return None
        self._raw("220 Ready to start TLS")
        self._buffer = b""  # RFC 3207 §5: nothing the client sent in clear counts after TLS
        return STARTTLS

    def _auth(self, arg: str | None) -> Event | None:
        if self._needs_helo("EHLO"):
            return None
        if not self.extended:
            self._error("500 Error: command 'AUTH' not recognized")
            return None
        if self.auth_require_tls and not self.tls:
            self._send("538 5.7.11 Encryption required for requested authentication mechanism")
            return None
        if self.authenticated:
            self._error("503 Already authenticated")
            return None
        if self.mail_from is not None:
            # RFC 4954 §4: AUTH is not permitted during a mail transaction.
            self._error("503 5.5.1 AUTH not permitted during a mail transaction")
            return None
        if not arg:
            self._error("501 Not enough value")
            return None
        args = arg.split()
        if len(args) > 2:
            self._error("501 Too many values")
            return None
        mechanism = args[0].upper()
        if mechanism not in self.auth_mechanisms:
            self._send("504 5.5.4 Unrecognized authentication type")
            return None
        return Auth(mechanism, args[1] if len(args) == 2 else None)


_COMMANDS: dict[str, Callable[[SmtpEngine, str | None], Event | None]] = {
    "HELO": SmtpEngine._helo,
    "EHLO": SmtpEngine._ehlo,
    "MAIL": SmtpEngine._mail,
    "RCPT": SmtpEngine._rcpt,
    "DATA": SmtpEngine._data,
    "RSET": SmtpEngine._rset,
    "NOOP": SmtpEngine._noop,
    "QUIT": SmtpEngine._quit,
    "VRFY": SmtpEngine._vrfy,
    "EXPN": SmtpEngine._expn,
    "HELP": SmtpEngine._help,
    "STARTTLS": SmtpEngine._starttls,
    "AUTH": SmtpEngine._auth,
}
