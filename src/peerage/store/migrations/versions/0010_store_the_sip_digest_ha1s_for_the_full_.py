"""Store the SIP digest HA1s for the full address as digest username (NULL until the next password change).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 12:50:42.559518
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sip_ha1_full_md5', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('sip_ha1_full_sha256', sa.String(length=64), nullable=True))

    with op.batch_alter_table('app_passwords', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sip_ha1_full_md5', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('sip_ha1_full_sha256', sa.String(length=64), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('app_passwords', schema=None) as batch_op:
        batch_op.drop_column('sip_ha1_full_sha256')
        batch_op.drop_column('sip_ha1_full_md5')

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('sip_ha1_full_sha256')
        batch_op.drop_column('sip_ha1_full_md5')

