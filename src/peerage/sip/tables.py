"""Database tables of the SIP service: the location service (registrations).

This module is in charge of declaring the SIP tables against the shared ``peerage.store.schema``
metadata.  One row per binding (address of record, contact), RFC 3261 §10.3, so registrations
survive a restart.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text
from sqlalchemy import false as sa_false

from peerage.store.schema import metadata

# RFC 3261 does not bound URI length; 1024 covers real contacts with parameters (Kamailio's
# usrloc contact column is 512 characters).
URI_LENGTH = 1024

sip_registrations = Table(
    "sip_registrations",
    metadata,
    Column("aor", String(URI_LENGTH), primary_key=True),  # sip:user@domain
    Column("contact", String(URI_LENGTH), primary_key=True),
    Column("expires_at", Float, nullable=False),  # Unix time
    Column("q", Float, nullable=False, default=1.0),
    Column("call_id", String(255), nullable=False),
    Column("cseq", Integer, nullable=False),
    # Path header values (RFC 3327), newline-separated, used as a Route set towards the contact
    Column("path", Text, nullable=False, default=""),
    # where the REGISTER came from: "TRANSPORT host port" (RFC 3581 / NAT traversal)
    Column("received", String(255), nullable=False, default=""),
    # RFC 5626 outbound: the instance URN and reg-id of a flow-bound binding ("" and 0 without)
    Column("instance", String(255), nullable=False, default="", server_default=""),
    Column("reg_id", Integer, nullable=False, default=0, server_default="0"),
    # reached at ``received`` instead of the contact URI (a UA behind NAT)
    Column("nat", Boolean, nullable=False, default=False, server_default=sa_false()),
    # the cluster node holding the flow the REGISTER came on ("" for a single server; peerage.cluster)
    Column("node", String(64), nullable=False, default="", server_default=""),
    # which credential authorised the REGISTER: "password", "app", "web:<web session hash>" (a web SIP
    # token), "" when not recorded; what must end when that credential ends (registrar.credentials_ended)
    Column("auth", String(80), nullable=False, default="", server_default=""),
)
