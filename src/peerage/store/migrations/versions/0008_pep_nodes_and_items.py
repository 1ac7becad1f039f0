"""PEP nodes and their persistent items (XEP-0163, XEP-0223).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 12:27:39.644968
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('xmpp_pep_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=2047), nullable=False),
    sa.Column('node', sa.String(length=1024), nullable=False),
    sa.Column('item_id', sa.String(length=1024), nullable=False),
    sa.Column('stamp', sa.Float(), nullable=False),
    sa.Column('xml', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_xmpp_pep_items'))
    )
    with op.batch_alter_table('xmpp_pep_items', schema=None) as batch_op:
        batch_op.create_index('ix_xmpp_pep_items_owner_node', ['owner', 'node', 'id'], unique=False)

    op.create_table('xmpp_pep_nodes',
    sa.Column('owner', sa.String(length=2047), nullable=False),
    sa.Column('node', sa.String(length=1024), nullable=False),
    sa.Column('access_model', sa.String(length=16), nullable=False),
    sa.Column('max_items', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('owner', 'node', name=op.f('pk_xmpp_pep_nodes'))
    )


def downgrade() -> None:
    op.drop_table('xmpp_pep_nodes')
    with op.batch_alter_table('xmpp_pep_items', schema=None) as batch_op:
        batch_op.drop_index('ix_xmpp_pep_items_owner_node')

    op.drop_table('xmpp_pep_items')
