"""Composing with formatting in Chromium: an HTML message with a plain-text alternative reaches Postfix,
what the user types or pastes is cleaned (DOMPurify) before it is sent, and a reply quotes the cleaned
original; hostile HTML in the original or in a paste runs nothing and fetches nothing."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.browser.browser import Browser
from tests.browser.conftest import (
    ALICE,
    ALLOWED_HOSTS,
    BROWSER_HOSTS,
    CAROL,
    DELIVERY_TIMEOUT,
    POSTFIX_ADDRESS,
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

HOSTILE_ORIGINAL = """<html><head><style>body { background: url(https://tracker.test/bg.gif) }</style></head><body>
<p>The plan for <b>Friday</b>:</p>
<ul><li>lunch at <i>noon</i></li><li>walk after</li></ul>
<img src="https://tracker.test/quote.gif" alt="tracker" onerror="window.top.pwned = 'img'">
<script>window.top.pwned = 'script'</script>
<a href="javascript:window.top.pwned='link'">click</a> <a href="https://example.net/map">the map</a>
<form action="https://tracker.test/steal"><input name="x" value="y"></form>
<div style="position:fixed;inset:0;background:red" onmouseover="window.top.pwned='hover'">covered</div>
</body></html>"""

PASTED = ('<meta charset="utf-8"><b>pasted bold</b><img src="https://tracker.test/paste.gif" onerror="window.top.pwned=1">'
          '<script>window.top.pwned=2</script><a href="javascript:alert(1)">bad link</a><style>*{display:none}</style>')


def parts_of(raw: bytes) -> dict[str, str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    out: dict[str, str] = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html") and part.get_content_disposition() is None:
            out.setdefault(part.get_content_type(), part.get_content())
    return out


def maildir_with(postfix: Postfix, user: str, subject: str) -> bytes | None:
    for message in postfix.maildir_messages(user):
        if f"Subject: {subject}\n".encode() in message:
            return message
    return None


def paste_html(browser: Browser, html: str) -> None:
    browser.eval(f"""(() => {{ const dt = new DataTransfer(); dt.setData('text/html', {json.dumps(html)});
        dt.setData('text/plain', 'pasted'); const el = document.getElementById('compose-body');
        el.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: dt, bubbles: true, cancelable: true}})); }})()""")


def test_reply_with_formatting_is_html_with_a_text_alternative_and_quotes_the_cleaned_original(
        peerage: PeerageServer, postfix: Postfix, browser: Browser) -> None:
    original = make_message("Friday plans", "The plan for Friday: lunch at noon.", html=HOSTILE_ORIGINAL)
    deliver(original, CAROL, [ALICE], host=POSTFIX_ADDRESS)
    wait_delivered(peerage, "Friday plans")
    login(browser)
    wait_row(browser, "Friday plans")
    browser.click('.row[data-subject="Friday plans"]')
    browser.wait_for("#reader-subject")
    browser.events()  # from here on: what opening the reply does
    browser.click("#reply")
    browser.wait_for(".compose #compose-body blockquote")
    quote = browser.eval("""(() => { const q = document.querySelector('#compose-body blockquote');
        return { text: q.innerText, html: q.innerHTML, bold: q.querySelector('b')?.textContent,
                 items: q.querySelectorAll('li').length, link: q.querySelector('a[href="https://example.net/map"]') !== null,
                 bad: q.querySelectorAll('script, style, img, form, input, [onerror], [onmouseover], [style]').length,
                 js: [...q.querySelectorAll('a')].filter(a => /^\\s*javascript:/i.test(a.getAttribute('href') || '')).length }; })()""")
    # The original's formatting is quoted; its script, handlers, styles, form and remote image are not.
    assert quote["bold"] == "Friday" and quote["items"] == 2 and quote["link"], quote
    assert quote["bad"] == 0 and quote["js"] == 0, quote
    assert "tracker.test" not in quote["html"] and "[tracker]" in quote["text"], quote
    assert "wrote:" in browser.text("#compose-body")

    # Typed with formatting: Ctrl+B turns bold on and off, the toolbar makes a list.
    type_at_editor_start(browser, "Count me in, ")
    browser.press("Control+b")
    browser.type("gladly")
    browser.press("Control+b")
    browser.type(".")
    browser.press("Enter")
    browser.click('.editor-toolbar [data-cmd="insertUnorderedList"]')
    browser.type("bring a map")
    browser.press("Enter")
    browser.type("bring water")
    browser.press("Enter")
    browser.press("Enter")
    # A paste of hostile HTML is cleaned before it enters the editor.
    paste_html(browser, PASTED)
    pasted = browser.eval("""(() => { const el = document.getElementById('compose-body');
        return { bold: [...el.querySelectorAll('b')].map(b => b.textContent),
                 bad: el.querySelectorAll('script, style, img, [onerror]').length, html: el.innerHTML }; })()""")
    assert "pasted bold" in pasted["bold"] and pasted["bad"] == 0, pasted
    assert "javascript:" not in pasted["html"] and "tracker.test" not in pasted["html"], pasted
    # Something hostile put into the editor by other means is removed when the message is sent.
    browser.eval("""document.getElementById('compose-body').insertAdjacentHTML('beforeend',
        '<p data-x="1" onclick="alert(1)">late <a href="javascript:alert(2)">addition</a></p><iframe srcdoc="x"></iframe>')""")
    browser.eval("document.getElementById('compose-body').dispatchEvent(new InputEvent('input', {bubbles: true}))")
    browser.screenshot("formatted-reply")
    browser.click("#send")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Message sent')", timeout=30)
    events = browser.events()
    assert not [r for r in events["blocked"] if "tracker.test" in r["url"]], events["blocked"]
    assert events["dialogs"] == [] and browser.eval("window.pwned === undefined")

    received = wait_for(lambda: maildir_with(postfix, "carol", "Re: Friday plans"), DELIVERY_TIMEOUT, "the reply at Postfix")
    assert received is not None
    message = email.message_from_bytes(received, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    parts = parts_of(received)
    html, text = parts["text/html"], parts["text/plain"]
    # HTML: the formatting, the cleaned quote, nothing active.
    assert "<b>gladly</b>" in html and "<li>bring a map</li>" in html and "<b>pasted bold</b>" in html, html
    assert '<blockquote type="cite"' in html and "<b>Friday</b>" in html, html
    for bad in ("<script", "onerror", "onclick", "onmouseover", "javascript:", "tracker.test", "<iframe", "<form",
                "<style", "data-x", "position:fixed"):
        assert bad not in html, (bad, html)
    assert "late" in html and "addition" in html
    # The plain-text alternative says the same, less richly: list items and "> " quotes.
    assert "Count me in, gladly." in text, text
    assert "- bring a map\n- bring water" in text, text
    assert "> The plan for Friday:" in text and "> - lunch at noon" in text, text
    wait_for(lambda: imap_find("Sent", "Re: Friday plans") or None, 30, "the reply in Sent")


def test_link_button_and_draft_keeps_the_formatting(peerage: PeerageServer, browser: Browser) -> None:
    login(browser)
    browser.press("c")
    browser.wait_for(".compose #compose-to")
    browser.fill("#compose-to", CAROL)
    browser.fill("#compose-subject", "Formatted draft")
    type_at_editor_start(browser, "see ")
    browser.press("Control+i")
    browser.type("this page")
    browser.press("Control+i")
    # Select "this page" and make it a link; a javascript: address is refused.
    browser.eval("""(() => { const i = document.querySelector('#compose-body i'); const r = document.createRange();
        r.selectNodeContents(i); const s = getSelection(); s.removeAllRanges(); s.addRange(r); })()""")
    browser.click('.editor-toolbar [data-cmd="link"]')
    browser.fill(".link-input", "javascript:alert(1)")
    browser.press("Enter", selector=".link-input")
    browser.wait_until("document.querySelector('.toast.error')?.textContent.includes('must start with')")
    assert browser.count("#compose-body a") == 0
    browser.eval("""(() => { const i = document.querySelector('#compose-body i'); const r = document.createRange();
        r.selectNodeContents(i); const s = getSelection(); s.removeAllRanges(); s.addRange(r); })()""")
    browser.click('.editor-toolbar [data-cmd="link"]')
    browser.fill(".link-input", "https://example.net/page")
    browser.press("Enter", selector=".link-input")
    browser.wait_for('#compose-body a[href="https://example.net/page"]')
    browser.click("#save-draft")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Draft saved')")
    wait_for(lambda: imap_find("Drafts", "Formatted draft") or None, 30, "the draft in Drafts")
    browser.press("Escape")
    browser.wait_for(".compose", state="detached")
    # Reopened from Drafts, the editor shows the formatting it was saved with.
    browser.click('.folder[data-role="drafts"]')
    wait_row(browser, "Formatted draft")
    browser.click('.row[data-subject="Formatted draft"]')
    browser.wait_for('.compose #compose-body a[href="https://example.net/page"] i, .compose #compose-body i a[href="https://example.net/page"]')
    assert "see this page" in browser.text("#compose-body")
    browser.click(".compose .danger")  # Discard: the draft goes
    wait_for(lambda: not imap_find("Drafts", "Formatted draft") or None, 30, "the draft discarded")


def imap_folders() -> list[str]:
    client = imap_login()
    try:
        status, data = client.list()
        assert status == "OK"
        return [line.decode().rsplit(' "/" ', 1)[-1].strip('"') for line in data if isinstance(line, bytes)]
    finally:
        client.logout()


def folder_item(name: str) -> str:
    return f'.folder-list .folder-item[data-mailbox="{name}"]'


def test_folders_are_created_renamed_and_deleted_with_the_servers_errors_shown(peerage: PeerageServer,
                                                                               browser: Browser) -> None:
    login(browser)
    browser.click("#new-folder")
    browser.wait_for("#folder-new-name")
    assert browser.eval("document.activeElement.id") == "folder-new-name"
    # Refused before it is sent: a "/" would make a subfolder in IMAP.
    browser.fill("#folder-new-name", "a/b")
    browser.click("#folder-create")
    browser.wait_until("document.querySelector('.folder-error')?.textContent.includes('cannot contain')")
    browser.fill("#folder-new-name", "Projects")
    browser.click("#folder-create")
    browser.wait_for(folder_item("Projects"))
    browser.wait_for('.sidebar .folder[data-mailbox="Projects"]')
    wait_for(lambda: "Projects" in imap_folders() or None, 30, "Projects over IMAP")
    # The same name again: the server's invalidProperties, said plainly.
    browser.fill("#folder-new-name", "Projects")
    browser.click("#folder-create")
    browser.wait_until("document.querySelector('.folder-error')?.textContent.includes('already a folder named “Projects”')")
    # A subfolder, chosen from the parent list.
    browser.fill("#folder-new-name", "Reports")
    parent_id = browser.eval("[...document.querySelectorAll('#folder-new-parent option')].find(o => o.textContent.trim() === 'Projects').value")
    browser.do("eval", expression=f"(() => {{ const s = document.getElementById('folder-new-parent'); s.value = {json.dumps(parent_id)};"
               " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    browser.click("#folder-create")
    browser.wait_for(folder_item("Reports"))
    wait_for(lambda: "Projects/Reports" in imap_folders() or None, 30, "Projects/Reports over IMAP")
    browser.screenshot("folders")

    # Rename the parent: the child moves with it (IMAP sees both renamed).
    browser.click(f"{folder_item('Projects')} .rename")
    browser.fill(f"{folder_item('Projects')} .rename-name", "Projects 2026")
    browser.click(f"{folder_item('Projects')} .save")
    browser.wait_for(folder_item("Projects 2026"))
    wait_for(lambda: {"Projects 2026", "Projects 2026/Reports"} <= set(imap_folders()) or None, 30, "renamed over IMAP")
    assert "Projects" not in imap_folders()

    # Delete the parent: mailboxHasChild, shown plainly; nothing is deleted.
    browser.click(f"{folder_item('Projects 2026')} .delete")
    browser.click(f"{folder_item('Projects 2026')} .confirm-delete")
    browser.wait_until(f"document.querySelector({json.dumps(folder_item('Projects 2026') + ' .folder-error')})"
                       "?.textContent.includes('has subfolders')")
    browser.click(f"{folder_item('Projects 2026')} .cancel")

    # A message in the child: deleting it is refused (mailboxHasEmail) until the user says the messages go too.
    deliver(make_message("Quarterly report"), CAROL, [ALICE])
    wait_delivered(peerage, "Quarterly report")
    client = imap_login()
    try:
        client.select("INBOX")
        status, data = client.uid("SEARCH", "SUBJECT", '"Quarterly report"')
        assert status == "OK" and data[0]
        assert client.uid("MOVE", data[0].split()[0], '"Projects 2026/Reports"')[0] == "OK"
    finally:
        client.logout()
    browser.wait_until(f"document.querySelector({json.dumps(folder_item('Reports') + ' .folder-counts')})"
                       "?.textContent.startsWith('1 message')", timeout=30)
    browser.click(f"{folder_item('Reports')} .delete")
    browser.wait_for(f"{folder_item('Reports')} .remove-emails")
    browser.click(f"{folder_item('Reports')} .confirm-delete")
    browser.wait_until(f"document.querySelector({json.dumps(folder_item('Reports') + ' .folder-error')})"
                       "?.textContent.includes('still holds 1 message')")
    assert "Projects 2026/Reports" in imap_folders()
    browser.screenshot("folder-delete-refused")
    browser.click(f"{folder_item('Reports')} .remove-emails")
    browser.click(f"{folder_item('Reports')} .confirm-delete")
    browser.wait_for(folder_item("Reports"), state="detached")
    wait_for(lambda: "Projects 2026/Reports" not in imap_folders() or None, 30, "Reports gone over IMAP")
    browser.click(f"{folder_item('Projects 2026')} .delete")
    browser.click(f"{folder_item('Projects 2026')} .confirm-delete")
    browser.wait_for(folder_item("Projects 2026"), state="detached")
    browser.wait_for('.sidebar .folder[data-mailbox="Projects 2026"]', state="detached")
    # Folders with a role keep their names: no rename or delete offered.
    for role in ("INBOX", "Drafts", "Sent", "Trash"):
        assert browser.count(f"{folder_item(role)} .rename, {folder_item(role)} .delete") == 0, role


# What a page that fits a phone looks like from inside: nothing wider than the screen, nothing that
# matters cut off at the right edge.
OVERFLOW = """(() => { const w = document.documentElement.clientWidth; const out = [];
    for (const el of document.querySelectorAll(%s)) { const r = el.getBoundingClientRect();
      if (r.width > 0 && (r.right > w + 1 || r.left < -1)) out.push(`${el.tagName}.${el.className} ${Math.round(r.left)}..${Math.round(r.right)}`); }
    return { scroll: document.documentElement.scrollWidth, width: w, out }; })()"""


def fits(browser: Browser, selector: str) -> None:
    result = browser.eval(OVERFLOW % json.dumps(selector))
    assert result["scroll"] <= result["width"] and not result["out"], result


@pytest.fixture
def phone(tmp_path: Path, browser_tools: tuple[str, str]) -> Iterator[Browser]:
    # A common phone's CSS viewport (390 x 844).
    with Browser(tmp_path / "phone", hosts=BROWSER_HOSTS, allow_hosts=ALLOWED_HOSTS, width=390, height=844) as b:
        try:
            yield b
        finally:
            b.screenshot("end")


def test_phone_width_message_list_and_settings(peerage: PeerageServer, phone: Browser) -> None:
    deliver(make_message("A subject long enough to need cutting short on a phone screen, surely",
                         "Short body."), CAROL, [ALICE])
    wait_delivered(peerage, "A subject long enough")
    login(phone)
    row = '.row[data-subject^="A subject long enough"]'
    phone.wait_for(row)
    assert not phone.eval("!!document.querySelector('.sidebar').offsetParent"), "the sidebar shows on a phone"
    phone.wait_for(".folder-select")
    phone.wait_for(".fab")
    # (.row-bottom clips the subject and preview inside it, with an ellipsis.)
    fits(phone, ".topbar, .topbar *, .list-head, .list-head *, .row, .row-top, .row-top *, .row-bottom, .fab")
    # The row keeps sender, date and subject readable within the screen.
    shown = phone.eval(f"""(() => {{ const r = document.querySelector('{row}'); const b = (s) => r.querySelector(s).getBoundingClientRect();
        return {{ from: b('.from').width, date: b('.date').width, subject: b('.row-bottom').width, row: r.getBoundingClientRect().width }}; }})()""")
    assert shown["from"] > 80 and shown["date"] > 20 and shown["subject"] > 150 and shown["row"] <= 390, shown
    phone.screenshot("phone-list")
    # Reading: the list gives way to the message, with a way back.
    phone.click(row)
    phone.wait_for("#reader-subject")
    fits(phone, ".reader .toolbar, .reader .toolbar *, .thread > h2, .message-head")
    phone.screenshot("phone-reading")
    phone.click(".reader .toolbar .narrow-only")
    phone.wait_for(row)

    # Settings from the top bar; every tab fits, the tab strip scrolls instead of spilling over.
    phone.click("#settings-narrow")
    phone.wait_for(".settings .signature")
    box = phone.eval("(() => { const r = document.querySelector('.modal.settings').getBoundingClientRect();"
                     " return [r.left, r.top, r.right, r.bottom]; })()")
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 390 and box[3] <= 844, box
    fits(phone, ".settings .tab-body, .settings .tab-body *, .settings .modal-head, .settings .modal-head *")
    phone.screenshot("phone-settings-identity")
    for tab, ready in (("Folders", "#folder-new-name"), ("Vacation response", "#vacation-enabled"),
                       ("Keyboard shortcuts", ".shortcuts")):
        phone.eval(f"[...document.querySelectorAll('.tab')].find(t => t.textContent === {json.dumps(tab)}).scrollIntoView()")
        phone.click(f".tab >> text={tab}")
        phone.wait_for(ready)
        fits(phone, ".settings .tab-body, .settings .tab-body *")
        phone.screenshot(f"phone-settings-{tab.split()[0].lower()}")
    # The folder list can be managed at this width too.
    phone.click(".tab >> text=Folders")
    phone.fill("#folder-new-name", "Phone folder")
    phone.click("#folder-create")
    phone.wait_for(folder_item("Phone folder"))
    fits(phone, ".folder-list, .folder-list *")
    phone.click(f"{folder_item('Phone folder')} .delete")
    phone.click(f"{folder_item('Phone folder')} .confirm-delete")
    phone.wait_for(folder_item("Phone folder"), state="detached")
    # Compose takes the whole screen.
    phone.press("Escape")
    phone.wait_for(".settings", state="detached")
    phone.click(".fab")
    phone.wait_for(".compose #compose-body")
    box = phone.eval("(() => { const r = document.querySelector('.compose').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()")
    assert box == [0, 0, 390, 844], box
    fits(phone, ".compose, .compose *")
    phone.screenshot("phone-compose")


def api_posts(events: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [r.get("body", "") for r in events["requests"] if r["method"] == "POST" and r["url"].endswith("/jmap/api")]


def test_start_to_the_inbox_costs_few_requests(peerage: PeerageServer, browser: Browser) -> None:
    deliver(make_message("Counting requests"), CAROL, [ALICE])
    wait_delivered(peerage, "Counting requests")
    browser.events()
    login(browser)
    wait_row(browser, "Counting requests")
    events = browser.events()
    gets = [r["url"].split(":8443")[-1] for r in events["requests"] if r["method"] == "GET"]
    # The session resources are fetched once each: the page's preloads are what the app's fetches get.
    assert gets.count("/.well-known/jmap") == 1 and gets.count("/auth/session") == 1, (gets, events["console"])
    # First visit in this browser: the mailboxes (to learn the inbox) come before the list.
    posts = api_posts(events)
    assert "Mailbox/get" in posts[0] and "Identity/get" in posts[0] and "Email/query" not in posts[0], posts
    # The reader and the editor (DOMPurify) are not in the script the inbox waits for.
    scripts = [u for u in gets if u.startswith("/mail/") and u.endswith(".js")]
    assert len(scripts) >= 3, scripts
    entry = browser.eval("document.querySelector('script[type=module]').getAttribute('src')")
    assert "-" in entry and entry.endswith(".js"), entry
    served = browser.eval(f"""(async () => {{ const r = await fetch({json.dumps(entry)});
        return {{ encoding: r.headers.get('content-encoding'), cache: r.headers.get('cache-control'),
                  size: (await r.arrayBuffer()).byteLength }}; }})()""")
    assert served["encoding"] in ("br", "gzip") and "immutable" in served["cache"], served
    assert served["size"] < 90_000, served  # the entry, uncompressed

    # Returning: the inbox's id is remembered, so mailboxes, identities and the list are one request.
    browser.do("reload")
    wait_row(browser, "Counting requests")
    posts = api_posts(browser.events())
    # The page's start request is the one that asks for the list ("Email/query", quoted: a sync's
    # "Email/queryChanges" is not it). A /changes sync the previous page sent after the delivery's
    # push (Mailbox/changes, Mailbox/get, Identity/get...) may be recorded before it.
    first = next((post for post in posts if '"Email/query"' in post), "")
    for method in ("Mailbox/get", "Identity/get", "Email/query", "Email/get", "Thread/get"):
        assert f'"{method}"' in first, (method, posts)
    # The page still has its CSP and the API its CSRF token.
    headers = browser.eval("""(async () => { const r = await fetch('/mail/'); return r.headers.get('content-security-policy'); })()""")
    assert "script-src 'self'" in headers and "frame-ancestors 'none'" in headers, headers
    refused = browser.eval("""(async () => { const r = await fetch('/jmap/api', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({using: ['urn:ietf:params:jmap:core'], methodCalls: []})}); return r.status; })()""")
    assert refused in (401, 403), refused


def test_plain_text_mode_sends_text_only(peerage: PeerageServer, browser: Browser) -> None:
    login(browser)
    browser.press("c")
    browser.wait_for(".compose #compose-to")
    browser.fill("#compose-to", CAROL)
    browser.fill("#compose-subject", "Plain words only")
    type_at_editor_start(browser, "first ")
    browser.press("Control+b")
    browser.type("bold")
    browser.press("Control+b")
    browser.click("#toggle-format")
    browser.wait_for("textarea#compose-body")
    assert browser.eval("document.querySelector('#compose-body').value").startswith("first bold")
    browser.click("#save-draft")
    browser.wait_until("document.querySelector('.toast')?.textContent.includes('Draft saved')")
    uids = wait_for(lambda: imap_find("Drafts", "Plain words only") or None, 30, "the draft in Drafts")
    client = imap_login()
    try:
        client.select('"Drafts"')
        status, data = client.uid("FETCH", uids[-1], "(BODY.PEEK[])")
        assert status == "OK"
        raw = next(part[1] for part in data if isinstance(part, tuple))
    finally:
        client.logout()
    saved = email.message_from_bytes(raw, policy=email.policy.default)
    assert saved.get_content_type() == "text/plain", saved.get_content_type()
    assert "first bold" in str(saved.get_content())
    # Reopened, a text-only draft opens as text; switching back to formatting keeps the words.
    browser.press("Escape")
    browser.wait_for(".compose", state="detached")
    browser.click('.folder[data-role="drafts"]')
    wait_row(browser, "Plain words only")
    browser.click('.row[data-subject="Plain words only"]')
    browser.wait_for(".compose textarea#compose-body")
    browser.click("#toggle-format")
    browser.wait_for(".compose div#compose-body")
    assert "first bold" in browser.text("#compose-body")
    browser.click(".compose .danger")
    wait_for(lambda: not imap_find("Drafts", "Plain words only") or None, 30, "the draft discarded")
