"""The schema of the first release with migrations (main at fc5df1f), table by table.

That release and the ones before it created tables straight from the metadata, so a database made by
them already has some or all of these tables: each is created only when missing, and the database then
continues along the chain like any other.

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-01 11:12:27.212308
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if 'accounts' not in existing:
        op.create_table('accounts',
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('domain', sa.String(length=253), nullable=False),
        sa.Column('local', sa.String(length=64), nullable=False),
        sa.Column('scram_salt', sa.LargeBinary(), nullable=False),
        sa.Column('scram_iterations', sa.Integer(), nullable=False),
        sa.Column('scram_sha1_stored_key', sa.LargeBinary(), nullable=False),
        sa.Column('scram_sha1_server_key', sa.LargeBinary(), nullable=False),
        sa.Column('scram_sha256_stored_key', sa.LargeBinary(), nullable=False),
        sa.Column('scram_sha256_server_key', sa.LargeBinary(), nullable=False),
        sa.Column('sip_ha1_md5', sa.String(length=32), nullable=False),
        sa.Column('sip_ha1_sha256', sa.String(length=64), nullable=False),
        sa.Column('argon2', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint('address', name=op.f('pk_accounts'))
        )
        with op.batch_alter_table('accounts', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_accounts_domain'), ['domain'], unique=False)

    if 'mail_bodies' not in existing:
        op.create_table('mail_bodies',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('body', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_mail_bodies'))
        )
    if 'mail_mailboxes' not in existing:
        op.create_table('mail_mailboxes',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('owner', sa.String(length=320), nullable=False),
        sa.Column('name', sa.String(length=1024), nullable=False),
        sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
        sa.Column('uidnext', sa.BigInteger(), nullable=False),
        sa.Column('highestmodseq', sa.BigInteger(), nullable=False),
        sa.Column('special_use', sa.String(length=32), nullable=True),
        sa.Column('subscribed', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_mailboxes')),
        sa.UniqueConstraint('owner', 'name', name='uq_mail_mailboxes_owner_name')
        )
    if 'mail_queue' not in existing:
        op.create_table('mail_queue',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('message_file', sa.String(length=64), nullable=False),
        sa.Column('mail_from', sa.String(length=320), nullable=False),
        sa.Column('recipient', sa.String(length=320), nullable=False),
        sa.Column('recipient_domain', sa.String(length=255), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('smtputf8', sa.Boolean(), nullable=False),
        sa.Column('queued_at', sa.BigInteger(), nullable=False),
        sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=False),
        sa.Column('delay_notice_sent', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_queue'))
        )
        with op.batch_alter_table('mail_queue', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_mail_queue_message_file'), ['message_file'], unique=False)
            batch_op.create_index('ix_mail_queue_next_attempt', ['next_attempt_at'], unique=False)

    if 'mail_uidvalidity' not in existing:
        op.create_table('mail_uidvalidity',
        sa.Column('owner', sa.String(length=320), nullable=False),
        sa.Column('last', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_mail_uidvalidity'))
        )
    if 'schema_version' not in existing:
        op.create_table('schema_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_schema_version'))
        )
    if 'server_secrets' not in existing:
        op.create_table('server_secrets',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('value', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_server_secrets'))
        )
    if 'sip_registrations' not in existing:
        op.create_table('sip_registrations',
        sa.Column('aor', sa.String(length=1024), nullable=False),
        sa.Column('contact', sa.String(length=1024), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.Column('q', sa.Float(), nullable=False),
        sa.Column('call_id', sa.String(length=255), nullable=False),
        sa.Column('cseq', sa.Integer(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('received', sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint('aor', 'contact', name=op.f('pk_sip_registrations'))
        )
    if 'xmpp_archive' not in existing:
        op.create_table('xmpp_archive',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('archive_id', sa.String(length=64), nullable=False),
        sa.Column('with_jid', sa.String(length=2047), nullable=False),
        sa.Column('stamp', sa.Float(), nullable=False),
        sa.Column('stanza', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_xmpp_archive')),
        sa.UniqueConstraint('archive_id', name=op.f('uq_xmpp_archive_archive_id'))
        )
        with op.batch_alter_table('xmpp_archive', schema=None) as batch_op:
            batch_op.create_index('ix_xmpp_archive_owner_id', ['owner', 'id'], unique=False)
            batch_op.create_index('ix_xmpp_archive_owner_with', ['owner', 'with_jid'], unique=False)

    if 'xmpp_blocklist' not in existing:
        op.create_table('xmpp_blocklist',
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('jid', sa.String(length=3071), nullable=False),
        sa.PrimaryKeyConstraint('owner', 'jid', name=op.f('pk_xmpp_blocklist'))
        )
    if 'xmpp_offline' not in existing:
        op.create_table('xmpp_offline',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('stamp', sa.Float(), nullable=False),
        sa.Column('stanza', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_xmpp_offline'))
        )
        with op.batch_alter_table('xmpp_offline', schema=None) as batch_op:
            batch_op.create_index('ix_xmpp_offline_owner_id', ['owner', 'id'], unique=False)

    if 'xmpp_private' not in existing:
        op.create_table('xmpp_private',
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('namespace', sa.String(length=1024), nullable=False),
        sa.Column('xml', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('owner', 'namespace', name=op.f('pk_xmpp_private'))
        )
    if 'xmpp_roster' not in existing:
        op.create_table('xmpp_roster',
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('contact', sa.String(length=2047), nullable=False),
        sa.Column('name', sa.String(length=1024), nullable=True),
        sa.Column('subscription', sa.String(length=8), nullable=False),
        sa.Column('ask', sa.Boolean(), nullable=False),
        sa.Column('approved', sa.Boolean(), nullable=False),
        sa.Column('groups', sa.Text(), nullable=False),
        sa.Column('hidden', sa.Boolean(), nullable=False),
        sa.Column('pending_in', sa.Boolean(), nullable=False),
        sa.Column('pending_stanza', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('owner', 'contact', name=op.f('pk_xmpp_roster'))
        )
    if 'xmpp_roster_version' not in existing:
        op.create_table('xmpp_roster_version',
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_xmpp_roster_version'))
        )
    if 'xmpp_vcard' not in existing:
        op.create_table('xmpp_vcard',
        sa.Column('owner', sa.String(length=2047), nullable=False),
        sa.Column('xml', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_xmpp_vcard'))
        )
    if 'mail_expunged' not in existing:
        op.create_table('mail_expunged',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=False),
        sa.Column('uid', sa.BigInteger(), nullable=False),
        sa.Column('modseq', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mail_mailboxes.id'], name=op.f('fk_mail_expunged_mailbox_id_mail_mailboxes'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_expunged'))
        )
        with op.batch_alter_table('mail_expunged', schema=None) as batch_op:
            batch_op.create_index('ix_mail_expunged_mailbox_modseq', ['mailbox_id', 'modseq'], unique=False)

    if 'mail_messages' not in existing:
        op.create_table('mail_messages',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('mailbox_id', sa.Integer(), nullable=False),
        sa.Column('uid', sa.BigInteger(), nullable=False),
        sa.Column('modseq', sa.BigInteger(), nullable=False),
        sa.Column('flags', sa.Text(), nullable=False),
        sa.Column('internal_date', sa.BigInteger(), nullable=False),
        sa.Column('internal_zone', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('blob', sa.String(length=64), nullable=False),
        sa.Column('header', sa.LargeBinary(), nullable=False),
        sa.Column('plain', sa.Boolean(), nullable=False),
        sa.Column('structure', sa.LargeBinary(), nullable=True),
        sa.Column('basic_structure', sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(['mailbox_id'], ['mail_mailboxes.id'], name=op.f('fk_mail_messages_mailbox_id_mail_mailboxes'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_messages')),
        sa.UniqueConstraint('mailbox_id', 'uid', name='uq_mail_messages_mailbox_uid')
        )
        with op.batch_alter_table('mail_messages', schema=None) as batch_op:
            batch_op.create_index('ix_mail_messages_mailbox_modseq', ['mailbox_id', 'modseq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_messages_mailbox_modseq')

    op.drop_table('mail_messages')
    with op.batch_alter_table('mail_expunged', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_expunged_mailbox_modseq')

    op.drop_table('mail_expunged')
    op.drop_table('xmpp_vcard')
    op.drop_table('xmpp_roster_version')
    op.drop_table('xmpp_roster')
    op.drop_table('xmpp_private')
    with op.batch_alter_table('xmpp_offline', schema=None) as batch_op:
        batch_op.drop_index('ix_xmpp_offline_owner_id')

    op.drop_table('xmpp_offline')
    op.drop_table('xmpp_blocklist')
    with op.batch_alter_table('xmpp_archive', schema=None) as batch_op:
        batch_op.drop_index('ix_xmpp_archive_owner_with')
        batch_op.drop_index('ix_xmpp_archive_owner_id')

    op.drop_table('xmpp_archive')
    op.drop_table('sip_registrations')
    op.drop_table('server_secrets')
    op.drop_table('schema_version')
    op.drop_table('mail_uidvalidity')
    with op.batch_alter_table('mail_queue', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_queue_next_attempt')
        batch_op.drop_index(batch_op.f('ix_mail_queue_message_file'))

    op.drop_table('mail_queue')
    op.drop_table('mail_mailboxes')
    op.drop_table('mail_bodies')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_domain'))

    op.drop_table('accounts')
