"""Drop schema_version: Alembic's alembic_version table records the revision now.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 11:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table('schema_version')


def downgrade() -> None:
    op.create_table('schema_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schema_version'))
    )
    op.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")
