"""mail list-view facts in a table of their own

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-01 23:12:21.550760
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0033'
down_revision = '0032'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The facts move out of the message rows (which SELECT and STORE walk), one row per email id; the
    # copies of a message have the same facts, so any one copy's is kept.
    op.create_table('mail_summaries',
    sa.Column('email_id', sa.String(length=64), nullable=False),
    sa.Column('summary', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('email_id', name=op.f('pk_mail_summaries'))
    )
    op.execute("INSERT INTO mail_summaries (email_id, summary) "
               "SELECT m.email_id, m.summary FROM mail_messages m WHERE m.summary IS NOT NULL AND m.id = "
               "(SELECT MIN(c.id) FROM mail_messages c WHERE c.email_id = m.email_id AND c.summary IS NOT NULL)")
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.drop_column('summary')


def downgrade() -> None:
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('summary', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE mail_messages SET summary = (SELECT s.summary FROM mail_summaries s "
               "WHERE s.email_id = mail_messages.email_id)")
    op.drop_table('mail_summaries')
