"""The sans-I/O parts of the XMPP microblog bridge: Atom entries to Notes and back, item ids, text."""

from __future__ import annotations

from peerage.social.xmpp_bridge import ATOM_NS, THREAD_NS, entry_post, html_to_text, item_sid, note_entry
from peerage.xmpp.stream import Element, serialize


def test_item_ids_map_to_status_segments() -> None:
    assert item_sid("abc-DEF_123") == "abc-DEF_123"
    hashed = item_sid("urn:uuid:1/2 3")
    assert hashed.startswith("x") and len(hashed) == 33 and hashed == item_sid("urn:uuid:1/2 3")
    assert item_sid("a" * 65) != "a" * 65


def test_entries_of_both_xeps_become_posts() -> None:
    # XEP-0277: the text in <title> alone.
    old = Element("entry", ATOM_NS)
    old.add("title", text="Short post")
    assert entry_post(old) == {"content": "Short post"}
    # XEP-0472: a title and an XHTML body, a reply, a content warning.
    new = Element("entry", ATOM_NS)
    new.add("title", attrs={"type": "text"}, text="Title")
    content = new.add("content", attrs={"type": "xhtml"})
    div = content.add("div", "http://www.w3.org/1999/xhtml")
    div.add("p", text="First")
    div.add("p", text="Second")
    new.add("summary", text="spoilers")
    new.add("in-reply-to", THREAD_NS, attrs={"ref": "https://example.org/notes/1"})
    post = entry_post(new)
    assert post["content"] == "Title\n\nFirst\n\nSecond"
    assert post["summary"] == "spoilers" and post["inReplyTo"] == "https://example.org/notes/1"
    # An HTML body is flattened; a reply to something that is not an https URL is not one.
    html_entry = Element("entry", ATOM_NS)
    html_entry.add("content", attrs={"type": "html"}, text="<p>a<br>b</p>")
    html_entry.add("in-reply-to", THREAD_NS, attrs={"ref": "javascript:alert(1)"})
    assert entry_post(html_entry) == {"content": "a\nb"}


def test_a_note_becomes_an_atom_entry() -> None:
    note = {"id": "https://a.test/users/alice/statuses/x1", "content": "<p>Hi <a href='#'>#tag</a></p>",
            "source": {"content": "Hi #tag"}, "published": "2026-12-01T12:00:00Z", "summary": "cw",
            "inReplyTo": "https://b.test/n/2", "tag": [{"type": "Hashtag", "name": "#tag"}]}
    xml = serialize(note_entry(note, "alice@a.test", "Alice"))
    for part in ("<title type='text'>Hi #tag</title>", "<id>https://a.test/users/alice/statuses/x1</id>",
                 "<uri>xmpp:alice@a.test</uri>", "<category term='tag'/>", "ref='https://b.test/n/2'",
                 "<summary type='text'>cw</summary>"):
        assert part in xml, (part, xml)


def test_html_is_flattened_to_text() -> None:
    assert html_to_text("<p>One</p><p>Two<br>three</p><script>x</script>") == "One\n\nTwo\nthree"
    assert html_to_text("&lt;b&gt; &amp;") == "<b> &"
