"""stable email and thread ids of messages, kept in expunge records

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01 16:46:10.227213
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


# Rows per batch of the thread-id backfill: bounded memory whatever the store's size.
BATCH = 2000


def upgrade() -> None:
    # Messages stored so far get the id JMAP computed from their place (e<UIDVALIDITY>-<UID>), so ids
    # clients cached stay valid; their thread id is computed from the stored header as at delivery.
    from peerage.mail.mailbox.objectid import thread_id

    with op.batch_alter_table('mail_expunged', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('thread_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('thread_id', sa.String(length=64), nullable=True))

    conn = op.get_bind()
    legacy = ("'e' || CAST((SELECT uidvalidity FROM mail_mailboxes WHERE mail_mailboxes.id = {t}.mailbox_id)"
              " AS VARCHAR) || '-' || CAST({t}.uid AS VARCHAR)")
    conn.execute(sa.text(f"UPDATE mail_messages SET email_id = {legacy.format(t='mail_messages')}"))
    conn.execute(sa.text(f"UPDATE mail_expunged SET email_id = {legacy.format(t='mail_expunged')}"))
    last = 0
    while True:
        rows = conn.execute(sa.text("SELECT id, email_id, header FROM mail_messages WHERE id > :last "
                                    "ORDER BY id LIMIT :batch"), {"last": last, "batch": BATCH}).all()
        if not rows:
            break
        conn.execute(sa.text("UPDATE mail_messages SET thread_id = :thread WHERE id = :id"),
                     [{"id": row[0], "thread": thread_id(bytes(row[2] or b""), row[1])} for row in rows])
        last = rows[-1][0]

    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.alter_column('email_id', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('thread_id', existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.drop_column('thread_id')
        batch_op.drop_column('email_id')
    with op.batch_alter_table('mail_expunged', schema=None) as batch_op:
        batch_op.drop_column('thread_id')
        batch_op.drop_column('email_id')
