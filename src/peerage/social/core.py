"""The sans-I/O core of the social service: bounded JSON, addressing, and building Notes.

This module is in charge of what can be decided without the network or the database: parsing an
inbound body within the size and depth limits, reading ids and audiences out of ActivityStreams 2.0
documents, and turning a user's text into a Note the way Mastodon renders one (mentions as h-card
links with a Mention tag, hashtags as links with a Hashtag tag, a content warning as ``summary`` with
``sensitive``), so that Mastodon, Fedify and bovine display it as their own users' posts.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
SECURITY_CONTEXT = "https://w3id.org/security/v1"
PUBLIC = "https://www.w3.org/ns/activitystreams#Public"
PUBLIC_ALIASES = frozenset({PUBLIC, "as:Public", "Public"})
AP_MEDIA_TYPE = "application/activity+json"
LD_MEDIA_TYPE = 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
# Mastodon's own extensions, so its parser maps our terms (toot:, schema:PropertyValue, movedTo).
MASTODON_CONTEXT = {
    "toot": "http://joinmastodon.org/ns#",
    "schema": "http://schema.org#",
    "PropertyValue": "schema:PropertyValue",
    "value": "schema:value",
    "discoverable": "toot:discoverable",
    "featured": {"@id": "toot:featured", "@type": "@id"},
    "manuallyApprovesFollowers": "as:manuallyApprovesFollowers",
    "sensitive": "as:sensitive",
    "Hashtag": "as:Hashtag",
    "movedTo": {"@id": "as:movedTo", "@type": "@id"},
    "alsoKnownAs": {"@id": "as:alsoKnownAs", "@type": "@id"},
}
CONTEXT = [AS_CONTEXT, SECURITY_CONTEXT, MASTODON_CONTEXT]

# The text of one post: Mastodon's default limit is 500 characters, Misskey's 3000, Pleroma's 5000;
# we take Pleroma's so that a post from any of them can be answered at the same length.
MAX_POST_LENGTH = 5000
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
MENTION = re.compile(r"(?<![\w/@])@([a-zA-Z0-9_.+-]+)@([a-zA-Z0-9.-]+\.[a-zA-Z0-9-]+)")
HASHTAG = re.compile(r"(?<![\w/#&])#(\w{1,64})")


class DocumentError(ValueError):
    """The body is not an ActivityStreams document we accept (answer 400, or 413 when too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects, counted without recursion (strings skipped)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_document(body: bytes, *, max_size: int, max_depth: int) -> dict[str, Any]:
    if len(body) > max_size:
        raise DocumentError(f"the body is larger than {max_size} bytes", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError("the body is not UTF-8") from None
    if json_depth(text) > max_depth:
        raise DocumentError(f"the JSON nests deeper than {max_depth} levels")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise DocumentError("the body is not JSON") from None
    if not isinstance(document, dict):
        raise DocumentError("the body is not a JSON object")
    return document


def id_of(value: Any) -> str:
    """The id of a reference: a string, or an object's "id" (ActivityStreams §3: either may appear)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return ""


def ids(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [i for i in (id_of(item) for item in items) if i]


def audience(document: dict[str, Any]) -> set[str]:
    """Everyone a document is addressed to (to, cc, bto, bcc, audience)."""
    found: set[str] = set()
    for field in ("to", "cc", "bto", "bcc", "audience"):
        found.update(ids(document.get(field)))
    return found


def is_public(document: dict[str, Any]) -> bool:
    return bool(audience(document) & PUBLIC_ALIASES)


def host_of(url: str) -> str:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "").lower()


def domain_blocked(host: str, blocked: Iterable[str]) -> bool:
    """A blocked domain also blocks its subdomains (Mastodon's DomainBlock works the same)."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in blocked)


@dataclass(frozen=True)
class Mention:
    handle: str  # user@domain
    actor: str  # their actor id
    profile: str  # the page to link to (their actor's url, or the actor id)


def find_mentions(text: str) -> list[str]:
    """The user@domain handles mentioned as @user@domain, in order, once each."""
    seen: dict[str, None] = {}
    for match in MENTION.finditer(text):
        seen.setdefault(f"{match.group(1)}@{match.group(2)}".lower())
    return list(seen)


def render_note(text: str, mentions: list[Mention], base: str) -> tuple[str, list[dict[str, Any]]]:
    """HTML content and the tag list for `text`: escaped, paragraphs, mentions and hashtags linked.

    `base` is https://DOMAIN, for the hashtag pages (/tags/NAME), as Mastodon links them.
    """
    by_handle = {m.handle: m for m in mentions}
    tags: list[dict[str, Any]] = []
    tagged: set[str] = set()

    def inline(line: str) -> str:
        out, pos = [], 0
        tokens = sorted([(m.start(), m.end(), "mention", m) for m in MENTION.finditer(line)]
                        + [(m.start(), m.end(), "tag", m) for m in HASHTAG.finditer(line)],
                        key=lambda t: t[0])
        for start, end, kind, match in tokens:
            if start < pos:
                continue
            out.append(html.escape(line[pos:start]))
            if kind == "mention":
                handle = f"{match.group(1)}@{match.group(2)}".lower()
                mention = by_handle.get(handle)
                if mention is None:
                    out.append(html.escape(match.group()))
                else:
                    out.append(f'<span class="h-card"><a href="{html.escape(mention.profile)}" class="u-url mention">'
                               f"@<span>{html.escape(match.group(1))}</span></a></span>")
                    if handle not in tagged:
                        tagged.add(handle)
                        tags.append({"type": "Mention", "href": mention.actor, "name": f"@{handle}"})
            else:
                name = match.group(1)
                href = f"{base}/tags/{name.lower()}"
                out.append(f'<a href="{html.escape(href)}" class="mention hashtag" rel="tag">'
                           f"#<span>{html.escape(name)}</span></a>")
                if "#" + name.lower() not in tagged:
                    tagged.add("#" + name.lower())
                    tags.append({"type": "Hashtag", "href": href, "name": "#" + name.lower()})
            pos = end
        out.append(html.escape(line[pos:]))
        return "".join(out)

    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    content = "".join("<p>" + "<br>".join(inline(line) for line in p.split("\n")) + "</p>" for p in paragraphs)
    return content, tags


def plain_text(content: str) -> str:
    """A Note's HTML content as plain text (for XMPP bodies and notifications)."""
    text = re.sub(r"(?i)<br\s*/?>", "\n", content)
    text = re.sub(r"(?i)</p>\s*<p>", "\n\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
