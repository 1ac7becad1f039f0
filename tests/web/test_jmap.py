"""JMAP protocol tests: each method, its errors, and the store shared with IMAP."""

from __future__ import annotations

import asyncio
import json

from peerage.mail.mailbox import deliver, store_for
from tests.harness import async_wait_for
from tests.web.conftest import USER, Jmap, WebHost


def message(subject: str, sender: str = "carol@remote.example", body: str = "Hello there",
            extra: str = "") -> bytes:
    return (f"From: Carol <{sender}>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@remote.example>\r\n"
            f"{extra}\r\n{body}\r\n").encode()


async def test_session_resource(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    session = await jmap.session()
    assert session["username"] == USER
    assert "urn:ietf:params:jmap:mail" in session["capabilities"]
    assert session["apiUrl"].endswith("/jmap/api")
    assert "{blobId}" in session["downloadUrl"] and "{accountId}" in session["uploadUrl"]
    account = session["accounts"][jmap.account]
    assert account["accountCapabilities"]["urn:ietf:params:jmap:mail"]["maxMailboxesPerEmail"] is None


async def test_unauthenticated_and_wrong_password(mailhost: WebHost) -> None:
    async with mailhost.client().get(mailhost.base + "/.well-known/jmap") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    jmap = Jmap(mailhost, password="wrong")
    async with jmap.client.get(mailhost.base + "/.well-known/jmap") as response:
        assert response.status == 401


async def test_mailboxes_and_counts(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("one"))
    await deliver(mailhost.host, USER, message("two"), flags=["\\Seen"])
    jmap = Jmap(mailhost)
    boxes = (await jmap.one("Mailbox/get", {"ids": None}))["list"]
    roles = {b["role"]: b for b in boxes}
    assert {"inbox", "sent", "drafts", "trash", "junk"} <= set(roles)
    assert roles["inbox"]["totalEmails"] == 2 and roles["inbox"]["unreadEmails"] == 1
    assert roles["inbox"]["myRights"]["mayReadItems"] is True


async def test_email_query_get_and_body_values(mailhost: WebHost) -> None:
    for n in range(5):
        await deliver(mailhost.host, USER, message(f"subject {n}", body=f"body number {n}"))
    jmap = Jmap(mailhost)
    inbox = await jmap.mailbox("inbox")
    responses = await jmap.call(
        ("Email/query", {"filter": {"inMailbox": inbox}, "sort": [{"property": "subject", "isAscending": False}],
                         "limit": 3, "calculateTotal": True}),
        ("Email/get", {"#ids": {"resultOf": "c0", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "from", "preview", "textBody", "bodyValues", "keywords"],
                       "fetchTextBodyValues": True}),
    )
    query, got = responses[0][1], responses[1][1]
    assert query["total"] == 5 and len(query["ids"]) == 3
    subjects = [e["subject"] for e in got["list"]]
    assert subjects == ["subject 4", "subject 3", "subject 2"]
    first = got["list"][0]
    assert first["from"] == [{"name": "Carol", "email": "carol@remote.example"}]
    part = first["textBody"][0]["partId"]
    assert first["bodyValues"][part]["value"].strip() == "body number 4"
    assert first["preview"] == "body number 4"


async def test_query_filters_and_collapse_threads(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("root", extra="X-A: 1\r\n"))
    root_id = f"{abs(hash('root'))}@remote.example"
    await deliver(mailhost.host, USER, message("Re: root", extra=f"References: <{root_id}>\r\nIn-Reply-To: <{root_id}>\r\n"))
    await deliver(mailhost.host, USER, message("other", sender="dave@remote.example", body="needle here"),
                  flags=["\\Flagged"])
    jmap = Jmap(mailhost)

    async def ids(**args: object) -> list[str]:
        return list((await jmap.one("Email/query", args))["ids"])

    assert len(await ids()) == 3
    assert len(await ids(collapseThreads=True)) == 2
    assert len(await ids(filter={"from": "dave"})) == 1
    assert len(await ids(filter={"text": "needle"})) == 1
    assert len(await ids(filter={"body": "needle"})) == 1
    assert len(await ids(filter={"hasKeyword": "$flagged"})) == 1
    assert len(await ids(filter={"operator": "NOT", "conditions": [{"hasKeyword": "$flagged"}]})) == 2
    assert len(await ids(filter={"operator": "OR", "conditions": [{"subject": "other"}, {"subject": "Re:"}]})) == 2
    assert len(await ids(filter={"header": ["X-A"]})) == 1
    got = await jmap.one("Email/get", {"ids": await ids(filter={"subject": "root"}), "properties": ["threadId"]})
    assert len({e["threadId"] for e in got["list"]}) == 1
    thread = await jmap.one("Thread/get", {"ids": [got["list"][0]["threadId"]]})
    assert len(thread["list"][0]["emailIds"]) == 2


async def test_keywords_and_state_shared_with_imap(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("flag me"))
    jmap = Jmap(mailhost)
    query = await jmap.one("Email/query", {})
    (email_id,) = query["ids"]
    state = (await jmap.one("Email/get", {"ids": [email_id], "properties": ["keywords"]}))["state"]
    result = await jmap.one("Email/set", {"update": {email_id: {"keywords/$seen": True, "keywords/$flagged": True}}})
    assert email_id in result["updated"]
    # The change is in the store IMAP reads, with a new MODSEQ.
    store = store_for(mailhost.host)
    inbox = await store.get_mailbox(USER, "INBOX")
    assert inbox is not None
    (row,) = await store.messages(inbox.id, None)
    assert set(row.flags) == {"\\Seen", "\\Flagged"}
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert changes["updated"] == [email_id] and changes["created"] == [] and changes["destroyed"] == []
    # A change made underneath (as IMAP STORE does) moves the JMAP state.
    await store.store_flags(inbox.id, [row.uid], "remove", ["\\Flagged"])
    got = await jmap.one("Email/get", {"ids": [email_id], "properties": ["keywords"]})
    assert got["list"][0]["keywords"] == {"$seen": True}
    assert got["state"] != changes["newState"]


async def test_create_draft_move_and_destroy(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    drafts = await jmap.mailbox("drafts")
    trash = await jmap.mailbox("trash")
    created = await jmap.one("Email/set", {"create": {"d1": {
        "mailboxIds": {drafts: True}, "keywords": {"$draft": True, "$seen": True},
        "from": [{"name": "Alice", "email": USER}], "to": [{"email": "bob@example.org"}], "subject": "Draft",
        "textBody": [{"partId": "t", "type": "text/plain"}], "htmlBody": [{"partId": "h", "type": "text/html"}],
        "bodyValues": {"t": {"value": "plain text"}, "h": {"value": "<p>html text</p>"}},
    }}})
    new = created["created"]["d1"]
    got = await jmap.one("Email/get", {"ids": [new["id"]], "fetchAllBodyValues": True,
                                       "properties": ["subject", "textBody", "htmlBody", "bodyValues", "mailboxIds"]})
    email = got["list"][0]
    assert email["subject"] == "Draft" and email["mailboxIds"] == {drafts: True}
    values = {v["value"].strip() for v in email["bodyValues"].values()}
    assert {"plain text", "<p>html text</p>"} <= values
    moved = await jmap.one("Email/set", {"update": {new["id"]: {"mailboxIds": {trash: True}}}})
    assert new["id"] in moved["updated"]
    # The move keeps the Email's id (RFC 8621 §4.1.1: the id is the message's, not its place's).
    (trashed,) = (await jmap.one("Email/query", {"filter": {"inMailbox": trash}}))["ids"]
    assert trashed == new["id"]
    two = await jmap.one("Email/set", {"update": {trashed: {"mailboxIds": {trash: True, drafts: True}}}})
    assert trashed in two["updated"]
    both = await jmap.one("Email/get", {"ids": [trashed], "properties": ["mailboxIds"]})
    assert both["list"][0]["mailboxIds"] == {trash: True, drafts: True}
    assert (await jmap.one("Email/query", {"filter": {"inMailbox": drafts}}))["ids"] == [trashed]
    gone = await jmap.one("Email/set", {"destroy": [trashed, "e1-999"]})
    assert gone["destroyed"] == [trashed] and gone["notDestroyed"]["e1-999"]["type"] == "notFound"
    for box in (trash, drafts):
        assert (await jmap.one("Email/query", {"filter": {"inMailbox": box}}))["ids"] == []


async def test_set_if_in_state_mismatch(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    (response,) = await jmap.call(("Email/set", {"ifInState": "nope", "update": {}}))
    assert response[0] == "error" and response[1]["type"] == "stateMismatch"


async def test_method_errors(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    responses = await jmap.call(
        ("Nope/get", {}),
        ("Email/query", {"filter": {"bogus": 1}}),
        ("Email/query", {"sort": [{"property": "bogus"}]}),
        ("Email/get", {"ids": "notalist"}),
        ("Email/get", {"#ids": {"resultOf": "zz", "name": "Email/query", "path": "/ids"}}),
        ("Mailbox/get", {"accountId": "nobody"}),
        ("Email/changes", {"sinceState": "garbage!"}),
        ("Email/get", {"ids": [f"e{n}-1" for n in range(1001)]}),
    )
    types = [r[1]["type"] for r in responses]
    assert types == ["unknownMethod", "unsupportedFilter", "unsupportedSort", "invalidArguments",
                     "invalidResultReference", "accountNotFound", "cannotCalculateChanges", "requestTooLarge"]


async def test_request_level_errors(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    await jmap.session()
    status, data = await jmap.raw(b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and data["type"] == "urn:ietf:params:jmap:error:notJSON"
    status, data = await jmap.raw({"using": "x"})
    assert status == 400 and data["type"] == "urn:ietf:params:jmap:error:notRequest"
    status, data = await jmap.raw({"using": ["urn:example:unknown"], "methodCalls": []})
    assert status == 400 and data["type"] == "urn:ietf:params:jmap:error:unknownCapability"
    calls = [["Core/echo", {}, str(n)] for n in range(65)]
    status, data = await jmap.raw({"using": Jmap.USING, "methodCalls": calls})
    assert status == 400 and data["limit"] == "maxCallsInRequest"
    deep = b"[" * 200 + b"]" * 200
    status, data = await jmap.raw(deep, headers={"Content-Type": "application/json"})
    assert status == 400 and data["type"] == "urn:ietf:params:jmap:error:notJSON"
    very_deep = b"[" * 100000 + b"]" * 100000
    status, data = await jmap.raw(very_deep, headers={"Content-Type": "application/json"})
    assert status == 400


async def test_oversized_request(tmp_path) -> None:
    from tests.web.conftest import start_host, stop_host

    server = await start_host(tmp_path, mail=True, extra={"web": {"max_request_size": 1000}})
    try:
        jmap = Jmap(server)
        await jmap.session()
        status, data = await jmap.raw(json.dumps({"using": [], "methodCalls": [], "pad": "x" * 5000}).encode())
        assert status == 400 and data["limit"] == "maxSizeRequest"
        # The server still answers afterwards.
        assert (await jmap.one("Mailbox/get", {"ids": None}))["list"]
    finally:
        await stop_host(server)


async def test_slow_request_body_gets_408(tmp_path) -> None:
    from tests.web.conftest import HTTPS_PORT, PASSWORD, start_host, stop_host

    server = await start_host(tmp_path, mail=True, extra={"web": {"body_timeout": 0.5}})
    try:
        import base64
        import ssl

        context = ssl.create_default_context(cafile=str(server.cert))
        context.check_hostname = False
        reader, writer = await asyncio.open_connection(server.address, HTTPS_PORT, ssl=context)
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        writer.write(f"POST /jmap/api HTTP/1.1\r\nHost: example.org\r\nAuthorization: Basic {auth}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(200), 10)
        assert b" 408 " in data.split(b"\r\n")[0]
        writer.close()
    finally:
        await stop_host(server)


async def test_upload_download_import_parse(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    session = await jmap.session()
    raw = message("imported", body="imported body")
    upload = session["uploadUrl"].replace("{accountId}", jmap.account)
    async with jmap.client.post(upload, data=raw, headers={"Content-Type": "message/rfc822"}) as response:
        assert response.status == 201
        blob = (await response.json())["blobId"]
    parsed = await jmap.one("Email/parse", {"blobIds": [blob, "unope"], "fetchTextBodyValues": True})
    assert parsed["parsed"][blob]["subject"] == "imported" and parsed["notFound"] == ["unope"]
    inbox = await jmap.mailbox("inbox")
    imported = await jmap.one("Email/import", {"emails": {"i1": {"blobId": blob, "mailboxIds": {inbox: True},
                                                                 "keywords": {"$seen": True}}}})
    created = imported["created"]["i1"]
    download = (session["downloadUrl"].replace("{accountId}", jmap.account).replace("{blobId}", created["blobId"])
                .replace("{name}", "m.eml").replace("{type}", "message/rfc822"))
    async with jmap.client.get(download) as response:
        assert response.status == 200
        assert b"imported body" in await response.read()
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert "sandbox" in response.headers["Content-Security-Policy"]


async def test_attachments_round_trip(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    session = await jmap.session()
    upload = session["uploadUrl"].replace("{accountId}", jmap.account)
    async with jmap.client.post(upload, data=b"%PDF-1.4 fake", headers={"Content-Type": "application/pdf"}) as r:
        blob = (await r.json())["blobId"]
    drafts = await jmap.mailbox("drafts")
    created = await jmap.one("Email/set", {"create": {"a": {
        "mailboxIds": {drafts: True}, "from": [{"email": USER}], "subject": "with file",
        "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "see attached"}},
        "attachments": [{"blobId": blob, "type": "application/pdf", "name": "doc.pdf"}]}}})
    new_id = created["created"]["a"]["id"]
    got = (await jmap.one("Email/get", {"ids": [new_id], "properties": ["attachments", "hasAttachment"]}))["list"][0]
    assert got["hasAttachment"] is True
    (attachment,) = got["attachments"]
    assert attachment["name"] == "doc.pdf" and attachment["type"] == "application/pdf"
    url = (session["downloadUrl"].replace("{accountId}", jmap.account).replace("{blobId}", attachment["blobId"])
           .replace("{name}", "doc.pdf").replace("{type}", "application/pdf"))
    async with jmap.client.get(url) as response:
        assert await response.read() == b"%PDF-1.4 fake"


async def test_mailbox_set_and_changes(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    state = (await jmap.one("Mailbox/get", {"ids": None}))["state"]
    created = await jmap.one("Mailbox/set", {"create": {"p": {"name": "Projects"}, "c": {"name": "Child", "parentId": "#p"}}})
    parent, child = created["created"]["p"]["id"], created["created"]["c"]["id"]
    boxes = {b["id"]: b for b in (await jmap.one("Mailbox/get", {"ids": [parent, child]}))["list"]}
    assert boxes[child]["parentId"] == parent and boxes[child]["name"] == "Child"
    changes = await jmap.one("Mailbox/changes", {"sinceState": state})
    assert set(changes["created"]) == {parent, child}
    refused = await jmap.one("Mailbox/set", {"destroy": [parent]})
    assert refused["notDestroyed"][parent]["type"] == "mailboxHasChild"
    renamed = await jmap.one("Mailbox/set", {"update": {child: {"name": "Renamed"}}})
    assert child in renamed["updated"]
    store = store_for(mailhost.host)
    assert await store.get_mailbox(USER, "Projects/Renamed") is not None
    inbox = await jmap.mailbox("inbox")
    refused = await jmap.one("Mailbox/set", {"destroy": [inbox]})
    assert refused["notDestroyed"][inbox]["type"] == "forbidden"
    query = await jmap.one("Mailbox/query", {"filter": {"role": "inbox"}})
    assert query["ids"] == [inbox]


async def test_mailbox_query_changes(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    query = await jmap.one("Mailbox/query", {"sort": [{"property": "name"}]})
    assert query["canCalculateChanges"] is True
    trash = await jmap.mailbox("trash")
    created = await jmap.one("Mailbox/set", {"create": {"a": {"name": "Aardvark"}}, "destroy": [trash]})
    new = created["created"]["a"]["id"]
    await deliver(mailhost.host, USER, message("counts move"))
    inbox = await jmap.mailbox("inbox")
    changes = await jmap.one("Mailbox/queryChanges", {"sinceQueryState": query["queryState"],
                                                      "sort": [{"property": "name"}], "calculateTotal": True})
    # Sorted by name, "Aardvark" comes first; the inbox changed (its counts) and is re-placed.
    assert {"id": new, "index": 0} in changes["added"]
    assert {new, trash, inbox} <= set(changes["removed"])
    assert changes["total"] == len(query["ids"]) and changes["newQueryState"] != query["queryState"]
    after = await jmap.one("Mailbox/query", {"sort": [{"property": "name"}]})
    for item in changes["added"]:
        assert after["ids"][item["index"]] == item["id"]
    limited = await jmap.call(("Mailbox/queryChanges", {"sinceQueryState": query["queryState"], "maxChanges": 1}))
    assert limited[0][1]["type"] == "tooManyChanges"
    same = await jmap.one("Mailbox/queryChanges", {"sinceQueryState": after["queryState"]})
    assert same["added"] == [] and same["removed"] == []


async def test_query_changes(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("first"))
    jmap = Jmap(mailhost)
    query = await jmap.one("Email/query", {"sort": [{"property": "receivedAt", "isAscending": False}]})
    await deliver(mailhost.host, USER, message("second"))
    changes = await jmap.one("Email/queryChanges", {"sinceQueryState": query["queryState"],
                                                    "sort": [{"property": "receivedAt", "isAscending": False}]})
    assert len(changes["added"]) == 1 and changes["newQueryState"] != query["queryState"]


async def test_identity_vacation_and_snippets(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("find the needle", body="a needle in text"))
    jmap = Jmap(mailhost)
    identities = await jmap.one("Identity/get", {"ids": None})
    (identity,) = identities["list"]
    assert identity["email"] == USER
    updated = await jmap.one("Identity/set", {"update": {identity["id"]: {"textSignature": "-- Alice"}}})
    assert identity["id"] in updated["updated"]
    refused = await jmap.one("Identity/set", {"create": {"x": {"email": "mallory@example.org"}}})
    assert refused["notCreated"]["x"]["type"] == "forbiddenFrom"
    again = await jmap.one("Identity/get", {"ids": None})
    assert again["list"][0]["textSignature"] == "-- Alice" and again["state"] != identities["state"]
    vacation = await jmap.one("VacationResponse/get", {"ids": None})
    assert vacation["list"][0]["isEnabled"] is False
    await jmap.one("VacationResponse/set", {"update": {"singleton": {"isEnabled": True, "subject": "Away"}}})
    vacation = await jmap.one("VacationResponse/get", {})
    assert vacation["list"][0]["isEnabled"] is True and vacation["list"][0]["subject"] == "Away"
    ids = (await jmap.one("Email/query", {}))["ids"]
    snippets = await jmap.one("SearchSnippet/get", {"emailIds": ids, "filter": {"text": "needle"}})
    assert "<mark>needle</mark>" in snippets["list"][0]["subject"]


async def test_submission_to_local_user_through_the_queue_path(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    drafts = await jmap.mailbox("drafts")
    sent = await jmap.mailbox("sent")
    before = (await jmap.one("EmailSubmission/get", {"ids": None}))["state"]
    responses = await jmap.call(
        ("Email/set", {"create": {"m": {"mailboxIds": {drafts: True}, "keywords": {"$draft": True},
                                        "from": [{"email": USER}], "to": [{"email": "bob@example.org"}],
                                        "bcc": [{"email": "alice@example.org"}],
                                        "subject": "hello bob", "textBody": [{"partId": "t"}],
                                        "bodyValues": {"t": {"value": "hi"}}}}}),
        ("EmailSubmission/set", {"create": {"s": {"identityId": "default", "emailId": "#m"}},
                                 "onSuccessUpdateEmail": {"#s": {"mailboxIds": {sent: True},
                                                                 "keywords/$draft": None}}}),
    )
    assert responses[1][0] == "EmailSubmission/set" and "s" in responses[1][1]["created"], responses
    assert responses[2][0] == "Email/set" and responses[2][1]["updated"]
    store = store_for(mailhost.host)
    bob_inbox = await store.get_mailbox("bob@example.org", "INBOX")
    assert bob_inbox is not None
    (row,) = await store.messages(bob_inbox.id, None, with_header=True)
    assert b"hello bob" in row.header and b"Bcc" not in row.header
    sent_ids = (await jmap.one("Email/query", {"filter": {"inMailbox": sent}}))["ids"]
    # The draft moved to Sent and kept its id.
    assert sent_ids == [responses[0][1]["created"]["m"]["id"]]
    submission = responses[1][1]["created"]["s"]["id"]
    changes = await jmap.one("EmailSubmission/changes", {"sinceState": before})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([submission], [], [])
    middle = changes["newState"]
    assert (await jmap.one("EmailSubmission/set", {"destroy": [submission]}))["destroyed"] == [submission]
    gone = await jmap.one("EmailSubmission/changes", {"sinceState": middle})
    assert (gone["created"], gone["destroyed"]) == ([], [submission])
    # Created and destroyed since the first state: not reported at all.
    quiet = await jmap.one("EmailSubmission/changes", {"sinceState": before})
    assert (quiet["created"], quiet["updated"], quiet["destroyed"]) == ([], [], [])


async def test_identity_changes(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    start = (await jmap.one("Identity/get", {"ids": None}))["state"]
    made = await jmap.one("Identity/set", {"create": {"w": {"email": USER, "name": "Work"}},
                                           "update": {"default": {"name": "Alice"}}})
    work = made["created"]["w"]["id"]
    changes = await jmap.one("Identity/changes", {"sinceState": start})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([work], ["default"], [])
    middle = changes["newState"]
    assert made["newState"] == middle
    await jmap.one("Identity/set", {"destroy": [work]})
    later = await jmap.one("Identity/changes", {"sinceState": middle})
    assert (later["created"], later["updated"], later["destroyed"]) == ([], [], [work])
    whole = await jmap.one("Identity/changes", {"sinceState": start})
    assert (whole["created"], whole["updated"], whole["destroyed"]) == ([], ["default"], [])
    same = await jmap.one("Identity/changes", {"sinceState": later["newState"]})
    assert same["created"] == same["updated"] == same["destroyed"] == []
    (bad,) = await jmap.call(("Identity/changes", {"sinceState": "I999"}))
    assert bad[1]["type"] == "cannotCalculateChanges"


async def test_submission_refuses_a_foreign_from(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    drafts = await jmap.mailbox("drafts")
    responses = await jmap.call(
        ("Email/set", {"create": {"m": {"mailboxIds": {drafts: True}, "from": [{"email": "ceo@example.org"}],
                                        "to": [{"email": "bob@example.org"}], "subject": "spoof"}}}),
        ("EmailSubmission/set", {"create": {"s": {"identityId": "default", "emailId": "#m"}}}),
    )
    assert responses[1][1]["notCreated"]["s"]["type"] == "forbiddenFrom"


async def test_web_session_needs_csrf_for_jmap_posts(mailhost: WebHost) -> None:
    client, csrf = await mailhost.login()
    async with client.get(mailhost.base + "/.well-known/jmap") as response:
        assert response.status == 200
    body = {"using": Jmap.USING, "methodCalls": [["Core/echo", {"x": 1}, "0"]]}
    async with client.post(mailhost.base + "/jmap/api", json=body) as response:
        assert response.status == 403
    async with client.post(mailhost.base + "/jmap/api", json=body, headers={"X-CSRF-Token": csrf}) as response:
        assert response.status == 200
        assert (await response.json())["methodResponses"][0][0] == "Core/echo"


async def test_eventsource_wakes_on_delivery(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    await jmap.session()
    events: list[dict[str, object]] = []

    async def listen() -> None:
        async with jmap.client.get(mailhost.base + "/jmap/eventsource?types=*&closeafter=state&ping=0") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))

    task = asyncio.create_task(listen())
    await async_wait_for(lambda: events, 30, "the initial state event")
    await deliver(mailhost.host, USER, message("push"))
    await asyncio.wait_for(task, 30)
    assert len(events) == 2
    changed = events[1]["changed"]
    assert isinstance(changed, dict) and "Email" in changed[jmap.account]


async def test_upload_limit_and_other_accounts(tmp_path) -> None:
    from tests.web.conftest import OTHER_USER, start_host, stop_host

    server = await start_host(tmp_path, mail=True, extra={"web": {"max_upload_size": 1000}})
    try:
        alice, bob = Jmap(server), Jmap(server, user=OTHER_USER)
        session = await alice.session()
        await bob.session()
        upload = session["uploadUrl"].replace("{accountId}", alice.account)
        async with alice.client.post(upload, data=b"x" * 5000) as response:
            assert response.status == 413
            assert (await response.json(content_type=None))["limit"] == "maxSizeUpload"
        async with alice.client.post(upload, data=b"small") as response:
            blob = (await response.json())["blobId"]
        # Bob can neither upload into nor download from Alice's account, nor use her blob.
        async with bob.client.post(upload, data=b"x") as response:
            assert response.status == 404
        url = f"{server.base}/jmap/download/{alice.account}/{blob}/x.bin"
        async with bob.client.get(url) as response:
            assert response.status == 404
        parsed = await bob.one("Email/parse", {"blobIds": [blob]})
        assert parsed["notFound"] == [blob]
    finally:
        await stop_host(server)


async def test_vacation_response_is_sent_once_and_not_to_lists(mailhost: WebHost) -> None:
    from tests.web.conftest import OTHER_USER

    bob = Jmap(mailhost, user=OTHER_USER)
    await deliver(mailhost.host, OTHER_USER, message("before", sender=USER))  # already there: no reply
    await bob.one("VacationResponse/set", {"update": {"singleton": {
        "isEnabled": True, "subject": "Away until Monday", "textBody": "Back soon."}}})

    def to_bob(subject: str, extra: str = "") -> bytes:
        return (f"From: Alice <{USER}>\r\nTo: {OTHER_USER}\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n{extra}\r\nhello\r\n").encode()

    # Through the mail service's local delivery, as SMTP delivers: with [sieve] enabled (the default)
    # the vacation response is sent by Sieve at delivery, from the envelope sender.
    from peerage.mail.service import MailService

    mail = next(s for s in mailhost.host.services if isinstance(s, MailService))
    await mail.deliver_local(OTHER_USER, to_bob("first"), mail_from=USER)
    await mail.deliver_local(OTHER_USER, to_bob("second"), mail_from=USER)
    await mail.deliver_local(OTHER_USER, to_bob("list mail", "Precedence: list\r\nList-Id: <l.example.org>\r\n"),
                             mail_from=USER)
    store = store_for(mailhost.host)
    inbox = await store.get_mailbox(USER, "INBOX")
    assert inbox is not None
    await async_wait_for(lambda: store.messages(inbox.id, None, with_header=True), 30, "the vacation response")
    await asyncio.sleep(0.3)  # a second response, if any, would be there too
    rows = await store.messages(inbox.id, None, with_header=True)
    assert len(rows) == 1, [r.header for r in rows]
    header = rows[0].header
    assert b"Subject: Away until Monday" in header and b"Auto-Submitted: auto-replied" in header
    assert b"In-Reply-To: <first@example.org>" in header
