"""cluster ACME challenges shared by the nodes

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-03 13:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0036'
down_revision = '0035'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The HTTP-01 key authorisations of ACME orders in progress, answered by every cluster node.
    op.create_table('cluster_challenges',
    sa.Column('token', sa.String(length=255), nullable=False),
    sa.Column('key_authorization', sa.Text(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('token', name=op.f('pk_cluster_challenges'))
    )


def downgrade() -> None:
    op.drop_table('cluster_challenges')
