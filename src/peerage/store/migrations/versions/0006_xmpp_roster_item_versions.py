"""XMPP roster versioning per item (XEP-0237): item versions and removal records.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('xmpp_roster_removed',
    sa.Column('owner', sa.String(length=2047), nullable=False),
    sa.Column('contact', sa.String(length=2047), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('owner', 'contact', name=op.f('pk_xmpp_roster_removed'))
    )
    with op.batch_alter_table('xmpp_roster', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('xmpp_roster_version', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pruned', sa.Integer(), server_default='0', nullable=False))
    # Removals before this revision were not recorded: clients that synced before it get the full roster.
    op.execute("UPDATE xmpp_roster_version SET pruned = version")


def downgrade() -> None:
    with op.batch_alter_table('xmpp_roster_version', schema=None) as batch_op:
        batch_op.drop_column('pruned')
    with op.batch_alter_table('xmpp_roster', schema=None) as batch_op:
        batch_op.drop_column('version')
    op.drop_table('xmpp_roster_removed')
