"""The sans-I/O parts of social attachments: image types by their bytes, which remote attachments may be
linked, and enclosures in microblog entries both ways."""

from __future__ import annotations

from peerage.social.media import MAX_ATTACHMENTS, safe_remote_attachments, sniff
from peerage.social.xmpp_bridge import ATOM_NS, entry_post, note_entry
from peerage.xmpp.stream import Element


def test_images_are_typed_by_their_bytes() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == "image/png"
    assert sniff(b"\xff\xd8\xff\xe0" + b"\0" * 8) == "image/jpeg"
    assert sniff(b"GIF89a" + b"\0" * 8) == "image/gif"
    assert sniff(b"RIFF\x10\0\0\0WEBPVP8 ") == "image/webp"
    # What claims to be an image but is not: SVG (script), HTML, a RIFF that is not WebP, nothing.
    for data in (b"<svg onload=alert(1)>", b"<!doctype html>", b"RIFF\x10\0\0\0WAVEfmt ", b""):
        assert sniff(data) is None


def test_only_https_remote_attachments_are_linked() -> None:
    note = {"attachment": [
        {"type": "Document", "url": "https://example.org/a.png", "mediaType": "image/png", "name": "A"},
        {"type": "Document", "url": "javascript:alert(1)"},
        {"type": "Document", "url": "http://example.org/b.png"},
        {"type": "Image", "url": [{"type": "Link", "href": "https://example.org/c.jpg"}]},
        {"type": "Document", "url": {"href": "data:image/png;base64,AAAA"}},
        "https://example.org/not-an-object",
    ]}
    assert safe_remote_attachments(note) == [("https://example.org/a.png", "image/png", "A"),
                                             ("https://example.org/c.jpg", "", "")]  # a Link list: its first
    # A Note with a single attachment object (Fedify compacts one-item lists), and a flood of them.
    assert safe_remote_attachments({"attachment": {"url": "https://example.org/d.gif"}}) == [
        ("https://example.org/d.gif", "", "")]
    flood = {"attachment": [{"url": f"https://example.org/{n}.png"} for n in range(100)]}
    assert len(safe_remote_attachments(flood)) == MAX_ATTACHMENTS * 4


def test_enclosures_both_ways() -> None:
    note = {"id": "https://example.org/notes/1", "content": "<p>pic</p>",
            "attachment": [{"type": "Document", "mediaType": "image/png", "url": "https://example.org/m/1.png",
                            "name": "a dot"}]}
    entry = note_entry(note, "fred=example.org@ap.example.net", "Fred")
    links = [link.attrs for link in entry.find_all("link", ATOM_NS) if link.attrs.get("rel") == "enclosure"]
    assert links == [{"rel": "enclosure", "href": "https://example.org/m/1.png", "type": "image/png",
                      "title": "a dot"}]
    published = Element("entry", ATOM_NS)
    published.add("title", text="with a file")
    published.add("link", attrs={"rel": "enclosure", "href": "https://example.net/upload/s/x.png", "title": "x"})
    published.add("link", attrs={"rel": "alternate", "href": "https://example.net/elsewhere"})
    assert entry_post(published)["attachment"] == [{"url": "https://example.net/upload/s/x.png", "name": "x"}]
