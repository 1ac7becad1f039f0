"""XEP-0012 last activity of each account.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:44:51.388453
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('xmpp_last_activity',
    sa.Column('owner', sa.String(length=2047), nullable=False),
    sa.Column('stamp', sa.Float(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('owner', name=op.f('pk_xmpp_last_activity'))
    )


def downgrade() -> None:
    op.drop_table('xmpp_last_activity')
