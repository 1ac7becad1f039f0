"""Package social is in charge of the account's social identity under its one address.

WebFinger (RFC 7033) and NodeInfo 2.1 make ``alice@example.org`` findable (``webfinger``); ActivityPub
serves her actor, inbox, outbox and collections (``activitypub``), signs and verifies HTTP Signatures
both as draft-cavage (Mastodon) and RFC 9421 (``signatures``), delivers through a durable queue
(``delivery``) and fetches remote documents safely (``fetch``). Keys are files, as DKIM keys are
(``keys``). The sans-I/O parts (JSON limits, activity shapes, Note building) are ``core``.

The service (``peerage.social.service.SocialService``) starts before the web service and registers its
routes through ``peerage.web.routes_for(host).add``. Only accounts that opted in are discoverable.
"""
