"""SIP registrations remember their flow: RFC 5626 instance and reg-id, and NAT.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 11:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sip_registrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instance', sa.String(length=255), server_default='', nullable=False))
        batch_op.add_column(sa.Column('reg_id', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('nat', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sip_registrations', schema=None) as batch_op:
        batch_op.drop_column('nat')
        batch_op.drop_column('reg_id')
        batch_op.drop_column('instance')
