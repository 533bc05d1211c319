"""Session feedback (rating 1-5 and a comment per participant); the accepting instructor's display name on
tutoring requests; questions asked anonymously to staff too.

Revision ID: 0002_feedback
Revises: 0001_initial
Create Date: 2026-12-01
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002_feedback'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('session_feedback',
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('name', sa.Text(), server_default='', nullable=False),
    sa.Column('rating', sa.Integer(), nullable=False),
    sa.Column('comment', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.CheckConstraint('rating >= 1 AND rating <= 5', name=op.f('ck_session_feedback_rating_range')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_feedback_session_id_sessions'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'identity', name=op.f('pk_session_feedback'))
    )
    with op.batch_alter_table('tutoring_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instructor_name', sa.Text(), nullable=True))
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hidden_from_staff', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.drop_column('hidden_from_staff')
    with op.batch_alter_table('tutoring_requests', schema=None) as batch_op:
        batch_op.drop_column('instructor_name')
    op.drop_table('session_feedback')
