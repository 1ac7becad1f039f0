"""what deleted mailboxes held for change logs

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-01 17:48:05.671357
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_deleted_mailboxes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', sa.BigInteger(), nullable=False),
    sa.Column('log', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_deleted_mailboxes'))
    )
    with op.batch_alter_table('mail_deleted_mailboxes', schema=None) as batch_op:
        batch_op.create_index('ix_mail_deleted_mailboxes_owner', ['owner', 'uidvalidity'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mail_deleted_mailboxes', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_deleted_mailboxes_owner')

    op.drop_table('mail_deleted_mailboxes')
