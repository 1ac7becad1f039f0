"""Data forms of the group-chat service (XEP-0004): room configuration, room info, voice requests.

This module is in charge of the room configuration (``RoomConfig``), its ``muc#roomconfig`` form
(XEP-0045 section 10.2, field names from the XEP's registry) and the reading of a submitted one,
the ``muc#roominfo`` extension of disco#info (section 6.4), and the ``muc#request`` voice-request
form (section 8.6). It knows nothing of occupants or I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from peerage.xmpp.muc import limits
from peerage.xmpp.stream import Element

DATA_NS = "jabber:x:data"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
REQUEST = "http://jabber.org/protocol/muc#request"

WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")


class FormError(ValueError):
    """A submitted form the room cannot accept (XEP-0045 section 10.2: ``not-acceptable``)."""


@dataclass
class RoomConfig:
    """One room's configuration; defaults are Prosody mod_muc's (``muc_room_default_*``)."""

    name: str = ""
    description: str = ""
    language: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password: str = ""
    #: 'moderators' (semi-anonymous, Prosody's default) or 'anyone' (non-anonymous)
    whois: str = "moderators"
    #: participants may change the subject (Prosody's muc_room_default_change_subject = false)
    change_subject: bool = False
    #: members may invite in a members-only room (Prosody's allow_member_invites = false)
    allow_invites: bool = False
    allow_pm: str = "anyone"
    max_users: int = limits.DEFAULT_MAX_OCCUPANTS
    history_length: int = limits.DEFAULT_HISTORY
    archiving: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoomConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def _field(form: Element, var: str, kind: str, label: str, values: list[str],
           options: tuple[tuple[str, str], ...] = ()) -> None:
    field = form.add("field", attrs={"var": var, "type": kind, "label": label})
    for value, option_label in options:
        field.add("option", attrs={"label": option_label}).add("value", text=value)
    for value in values:
        field.add("value", text=value)


def _bool(value: bool) -> str:
    return "1" if value else "0"


def config_form(config: RoomConfig, owners: list[str], admins: list[str], max_users_ceiling: int) -> Element:
    form = Element("x", DATA_NS, {"type": "form"})
    form.add("title", text="Room configuration")
    _field(form, "FORM_TYPE", "hidden", "", [ROOMCONFIG])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.name])
    _field(form, "muc#roomconfig_roomdesc", "text-single", "Description", [config.description])
    _field(form, "muc#roomconfig_lang", "text-single", "Language", [config.language])
    _field(form, "muc#roomconfig_persistentroom", "boolean", "Persistent (kept when empty)",
           [_bool(config.persistent)])
    _field(form, "muc#roomconfig_publicroom", "boolean", "Listed in the directory", [_bool(config.public)])
    _field(form, "muc#roomconfig_membersonly", "boolean", "Members only", [_bool(config.members_only)])
    _field(form, "muc#roomconfig_moderatedroom", "boolean", "Moderated (visitors need voice)",
           [_bool(config.moderated)])
    _field(form, "muc#roomconfig_passwordprotectedroom", "boolean", "Password protected",
           [_bool(bool(config.password))])
    _field(form, "muc#roomconfig_roomsecret", "text-private", "Password", [config.password])
    _field(form, "muc#roomconfig_whois", "list-single", "Who may see real addresses", [config.whois],
           (("moderators", "Moderators only"), ("anyone", "Anyone")))
    _field(form, "muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
           [_bool(config.change_subject)])
    _field(form, "muc#roomconfig_allowinvites", "boolean", "Members may invite", [_bool(config.allow_invites)])
    _field(form, "muc#roomconfig_allowpm", "list-single", "Who may send private messages", [config.allow_pm],
           tuple((v, v.capitalize()) for v in ALLOW_PM))
    _field(form, "muc#roomconfig_maxusers", "text-single", f"Maximum occupants (up to {max_users_ceiling})",
           [str(config.max_users)])
    _field(form, "muc#roomconfig_historylength", "text-single",
           f"Messages of history on join (up to {limits.MAX_HISTORY})", [str(config.history_length)])
    _field(form, "muc#roomconfig_enablearchiving", "boolean", "Archive messages (XEP-0313)",
           [_bool(config.archiving)])
    _field(form, "muc#roomconfig_roomowners", "jid-multi", "Owners", owners)
    _field(form, "muc#roomconfig_roomadmins", "jid-multi", "Admins", admins)
    return form


def submitted_values(form: Element) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for field in form.find_all("field", DATA_NS):
        var = field.attrs.get("var", "")
        values[var] = [v.text for v in field.find_all("value", DATA_NS)]
    return values


def _parse_bool(values: list[str], var: str) -> bool:
    if len(values) != 1 or values[0] not in ("0", "1", "true", "false"):
        raise FormError(f"{var} must be a boolean")
    return values[0] in ("1", "true")


def _parse_int(values: list[str], var: str, low: int, high: int) -> int:
    try:
        number = int(values[0]) if values else -1
    except ValueError:
        raise FormError(f"{var} must be a number") from None
    if not low <= number <= high:
        raise FormError(f"{var} must be between {low} and {high}")
    return number


def _text(values: list[str], var: str, longest: int) -> str:
    text = values[0] if values else ""
    if len(text) > longest:
        raise FormError(f"{var} is longer than {longest} characters")
    return text


def apply_config(config: RoomConfig, form: Element, max_users_ceiling: int) -> tuple[RoomConfig, list[str] | None,
                                                                                    list[str] | None]:
    """A new configuration from a submitted form (fields left out keep their value); also the
    owner and admin lists when the form gives them. Raises ``FormError``."""
    values = submitted_values(form)
    form_type = values.get("FORM_TYPE")
    if form_type and form_type != [ROOMCONFIG]:
        raise FormError("not a muc#roomconfig form")
    new = RoomConfig(**asdict(config))
    texts = {"muc#roomconfig_roomname": ("name", limits.MAX_NAME_CHARS),
             "muc#roomconfig_roomdesc": ("description", limits.MAX_DESCRIPTION_CHARS),
             "muc#roomconfig_lang": ("language", 64),
             "muc#roomconfig_roomsecret": ("password", limits.MAX_PASSWORD_CHARS)}
    booleans = {"muc#roomconfig_persistentroom": "persistent", "muc#roomconfig_publicroom": "public",
                "muc#roomconfig_membersonly": "members_only", "muc#roomconfig_moderatedroom": "moderated",
                "muc#roomconfig_changesubject": "change_subject", "muc#roomconfig_allowinvites": "allow_invites",
                "muc#roomconfig_enablearchiving": "archiving",
                # the older name of the archiving switch (XEP-0045's registry)
                "muc#roomconfig_enablelogging": "archiving"}
    for var, (attr, longest) in texts.items():
        if var in values:
            setattr(new, attr, _text(values[var], var, longest))
    for var, attr in booleans.items():
        if var in values:
            setattr(new, attr, _parse_bool(values[var], var))
    if "muc#roomconfig_passwordprotectedroom" in values:
        if not _parse_bool(values["muc#roomconfig_passwordprotectedroom"], "passwordprotectedroom"):
            new.password = ""
        elif not new.password:
            raise FormError("a password-protected room needs muc#roomconfig_roomsecret")
    if "muc#roomconfig_whois" in values:
        whois = (values["muc#roomconfig_whois"] or [""])[0]
        if whois not in WHOIS:
            raise FormError("muc#roomconfig_whois is 'moderators' or 'anyone'")
        new.whois = whois
    if "muc#roomconfig_allowpm" in values:
        allow = (values["muc#roomconfig_allowpm"] or [""])[0]
        if allow not in ALLOW_PM:
            raise FormError("muc#roomconfig_allowpm is one of " + ", ".join(ALLOW_PM))
        new.allow_pm = allow
    if "muc#roomconfig_maxusers" in values:
        new.max_users = _parse_int(values["muc#roomconfig_maxusers"], "maxusers", 1, max_users_ceiling)
    if "muc#roomconfig_historylength" in values:
        new.history_length = _parse_int(values["muc#roomconfig_historylength"], "historylength", 0,
                                        limits.MAX_HISTORY)
    owners = values.get("muc#roomconfig_roomowners")
    admins = values.get("muc#roomconfig_roomadmins")
    return new, owners, admins


def room_info_form(config: RoomConfig, subject: str, occupants: int) -> Element:
    form = Element("x", DATA_NS, {"type": "result"})
    _field(form, "FORM_TYPE", "hidden", "", [ROOMINFO])
    _field(form, "muc#roominfo_description", "text-single", "Description", [config.description])
    _field(form, "muc#roominfo_subject", "text-single", "Subject", [subject])
    _field(form, "muc#roominfo_occupants", "text-single", "Occupants", [str(occupants)])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.name])
    if config.language:
        _field(form, "muc#roominfo_lang", "text-single", "Language", [config.language])
    _field(form, "muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
           [_bool(config.change_subject)])
    return form


def voice_request_form(nick: str, jid: str) -> Element:
    """What moderators receive for a visitor's voice request (XEP-0045 section 8.6)."""
    form = Element("x", DATA_NS, {"type": "form"})
    form.add("title", text="Voice request")
    form.add("instructions", text=f"Grant {nick} voice in this room?")
    _field(form, "FORM_TYPE", "hidden", "", [REQUEST])
    _field(form, "muc#role", "list-single", "Requested role", ["participant"])
    _field(form, "muc#jid", "jid-single", "User ID", [jid])
    _field(form, "muc#roomnick", "text-single", "Nickname", [nick])
    _field(form, "muc#request_allow", "boolean", "Grant voice?", ["false"])
    return form
