"""Named limits of the group-chat service, each with the precedent it follows.

This module is in charge of numbers only; ``room`` and ``service`` apply them and answer with the
XEP-0045 (or RFC 6120 section 8.3.3) condition each names.
"""

from __future__ import annotations

#: Characters of a nickname. Prosody's mod_muc ``muc_max_nick_length`` defaults to 23; a longer one
#: is refused with ``not-acceptable`` (XEP-0045 section 7.2.4's condition for a nick the room refuses).
MAX_NICK_LENGTH = 23
#: Bytes of a room's local part: RFC 7622 section 3.3.1 allows 1023; ejabberd's ``max_room_id`` is
#: unlimited. Rooms are named by people, so a smaller bound keeps tables and disco lists sane.
MAX_ROOM_NAME_BYTES = 256
#: Messages kept for history on join by default, and the largest the room configuration may set:
#: Prosody's ``muc_room_default_history_length`` is 20 and ejabberd's ``history_size`` is 20;
#: Prosody's mod_mam_muc documents ``max_history_messages = 1000`` as its ceiling, ours is lower
#: because history is held in memory per room.
DEFAULT_HISTORY = 20
MAX_HISTORY = 100
#: Occupants of one room: ejabberd's ``max_users`` defaults to 200. Owners and admins may still
#: enter a full room (XEP-0045 section 7.2.10 suggests it; ejabberd does it). Over it:
#: ``service-unavailable``.
DEFAULT_MAX_OCCUPANTS = 200
#: The three per-account room limits below are the defaults of ``[muc] max_rooms_joined``,
#: ``max_rooms_owned`` and ``max_room_creations_per_hour``; on a cluster they count the rooms of
#: every node (peerage.cluster.muc).
#: Rooms one account occupies at once: ejabberd's ``max_user_conferences`` defaults to 100 (it
#: answers ``resource-constraint``, as we do).
MAX_ROOMS_JOINED_PER_USER = 100
#: Rooms one account may own (those it created, persistent or not): no stock server limits this;
#: we use ejabberd's per-user room count above. Over it: ``not-allowed`` (XEP-0045 section 10.1.1).
MAX_ROOMS_OWNED_PER_USER = 100
#: Rooms one account may create per hour: a flood of creations otherwise costs a table row each.
#: Over it: ``not-allowed`` with ``type='wait'`` semantics explained in the text.
MAX_ROOM_CREATIONS_PER_HOUR = 20
#: Seconds a new room stays locked waiting for its owner's configuration before it is destroyed:
#: Prosody's ``muc_room_lock_timeout`` is 300 (XEP-0045 section 10.1.1 locks new rooms).
ROOM_LOCK_TIMEOUT = 300.0
#: Per-occupant rate of messages (groupchat, private, invitations), a token bucket: Prosody's
#: mod_muc_limits uses ``muc_event_rate = 0.5`` per second with ``muc_burst_factor = 6`` (a burst of
#: 3). Over it: ``policy-violation`` of type ``wait``, mod_muc_limits's answer.
DEFAULT_MESSAGE_RATE = 0.5
DEFAULT_MESSAGE_BURST = 3.0
#: Characters and lines of a message body: mod_muc_limits's ``muc_max_char_count = 5664`` and
#: ``muc_max_line_count = 23``. Over them: ``policy-violation`` (modify).
MAX_BODY_CHARS = 5664
MAX_BODY_LINES = 23
#: Characters of a subject, room name, description and password: ejabberd's ``max_room_name``,
#: ``max_room_desc`` and ``max_password`` are unlimited; we bound them so a config form cannot
#: store megabytes (``not-acceptable``).
MAX_SUBJECT_CHARS = 1024
MAX_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 2048
MAX_PASSWORD_CHARS = 256
#: A moderator's reason for retracting a message (XEP-0425), bounded as the room description is.
MAX_REASON_CHARS = 2048
#: Items in the service's disco#items list: ejabberd's ``max_rooms_discoitems`` defaults to 100.
MAX_ROOMS_DISCO_ITEMS = 100
#: Messages one MAM query returns: Prosody's ``muc_max_archive_query_results`` is 50; a larger
#: ``<max/>`` is capped (XEP-0313 section 4.3.1 lets the server do that).
DEFAULT_ARCHIVE_PAGE = 50
MAX_ARCHIVE_PAGE = 100
#: Affiliation entries (owners, admins, members, outcasts) of one room: ejabberd and Prosody do not
#: bound them; 10000 keeps one room's row set loadable at start (``resource-constraint``).
MAX_AFFILIATIONS = 10000
#: Outstanding IQs proxied to occupants (XEP-0045 section 7.2.? vCard and other queries to room/nick):
#: a bounded map from the id we sent to the requester's address and id.
MAX_PROXIED_IQS = 1000
#: Absent members one room message is delivered to (offline delivery, for push): Prosody's
#: mod_muc_offline_delivery has no bound; 1000 keeps a message's cost within five full rooms' fan-out
#: (DEFAULT_MAX_OCCUPANTS each). Members past it, in affiliation order, get no copy.
MAX_OFFLINE_DELIVERIES = 1000
