"""list-view header facts kept with each message

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01 17:30:05.646907
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Messages already stored get theirs the first time JMAP reads them (peerage.mail.jmap.index).
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('summary', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mail_messages', schema=None) as batch_op:
        batch_op.drop_column('summary')
