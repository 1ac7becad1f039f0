"""group chat members' offline delivery choice

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-01 20:03:50.109230
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the member has not chosen, the service's [muc] offline_delivery_default applies.
    with op.batch_alter_table('muc_affiliations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offline', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('muc_affiliations', schema=None) as batch_op:
        batch_op.drop_column('offline')
