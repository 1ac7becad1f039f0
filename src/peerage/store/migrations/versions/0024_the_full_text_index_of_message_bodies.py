"""the full-text index of message bodies

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01 16:59:27.096217
"""

from __future__ import annotations

from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not in the metadata: each engine gets its own kind of index (peerage.mail.mailbox.search), and
    # schema comparisons leave it out (peerage.store.schema.include_name). Messages already stored are
    # indexed the first time their owner searches.
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.create_index('ix_mail_messages_email_id', ['email_id'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE TABLE mail_fts (email_id VARCHAR(64) PRIMARY KEY, owner VARCHAR(64) NOT NULL, "
                   "document TSVECTOR NOT NULL)")
        op.execute("CREATE INDEX ix_mail_fts_document ON mail_fts USING GIN (document)")
        op.execute("CREATE INDEX ix_mail_fts_owner ON mail_fts (owner)")
    else:
        op.execute("CREATE VIRTUAL TABLE mail_fts USING fts5(email_id UNINDEXED, owner, body, "
                   "tokenize = 'unicode61 remove_diacritics 2')")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS mail_fts")
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_messages_email_id')
