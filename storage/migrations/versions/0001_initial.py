"""Initial schema: every table Stoa v0.1 uses (JSON columns are TEXT).

Revision ID: 0001_initial
Revises: 
Create Date: 2026-11-22
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('revoked_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_api_keys'))
    )
    op.create_table('chat_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('sender_name', sa.Text(), server_default='', nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='user', nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('reply_to', sa.Integer(), nullable=True),
    sa.Column('pinned', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('edited_at', sa.Double(), nullable=True),
    sa.Column('deleted_at', sa.Double(), nullable=True),
    sa.Column('deleted_by', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages'))
    )
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_messages_session_id_id'), ['session_id', 'id'], unique=False)

    op.create_table('engagement',
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('chat_messages', sa.Integer(), server_default='0', nullable=False),
    sa.Column('questions', sa.Integer(), server_default='0', nullable=False),
    sa.Column('votes', sa.Integer(), server_default='0', nullable=False),
    sa.Column('hand_raises', sa.Integer(), server_default='0', nullable=False),
    sa.Column('reactions', sa.Integer(), server_default='0', nullable=False),
    sa.Column('strokes', sa.Integer(), server_default='0', nullable=False),
    sa.Column('quiz_answers', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('session_id', 'identity', name=op.f('pk_engagement'))
    )
    op.create_table('hand_raises',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('name', sa.Text(), server_default='', nullable=False),
    sa.Column('raised_at', sa.Double(), nullable=False),
    sa.Column('lowered_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hand_raises'))
    )
    with op.batch_alter_table('hand_raises', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hand_raises_session_id'), ['session_id'], unique=False)

    op.create_table('polls',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('creator', sa.String(length=255), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('options', sa.Text(), nullable=False),
    sa.Column('multiple', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('anonymous', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('show_results', sa.String(length=16), server_default='live', nullable=False),
    sa.Column('duration_s', sa.Double(), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('opened_at', sa.Double(), nullable=True),
    sa.Column('closed_at', sa.Double(), nullable=True),
    sa.Column('results', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_polls'))
    )
    with op.batch_alter_table('polls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_polls_session_id'), ['session_id'], unique=False)

    op.create_table('presence_intervals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('name', sa.Text(), server_default='', nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('joined_at', sa.Double(), nullable=False),
    sa.Column('left_at', sa.Double(), nullable=True),
    sa.Column('connections', sa.Integer(), server_default='1', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_presence_intervals'))
    )
    with op.batch_alter_table('presence_intervals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_presence_intervals_session_id_identity'), ['session_id', 'identity'], unique=False)

    op.create_table('questions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('asker', sa.String(length=255), nullable=False),
    sa.Column('asker_name', sa.Text(), server_default='', nullable=False),
    sa.Column('anonymous', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='open', nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('answered_live', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('featured', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('answered_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_questions'))
    )
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_questions_session_id'), ['session_id'], unique=False)

    op.create_table('quiz_questions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('bank', sa.String(length=128), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('choices', sa.Text(), nullable=False),
    sa.Column('answer', sa.Integer(), nullable=False),
    sa.Column('explanation', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quiz_questions'))
    )
    with op.batch_alter_table('quiz_questions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quiz_questions_bank'), ['bank'], unique=False)

    op.create_table('quiz_rounds',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('started_by', sa.String(length=255), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=False),
    sa.Column('duration_s', sa.Double(), nullable=True),
    sa.Column('closed_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quiz_rounds'))
    )
    with op.batch_alter_table('quiz_rounds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quiz_rounds_session_id'), ['session_id'], unique=False)

    op.create_table('recordings',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=True),
    sa.Column('room', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=False),
    sa.Column('ended_at', sa.Double(), nullable=True),
    sa.Column('duration_s', sa.Double(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('directory', sa.Text(), nullable=True),
    sa.Column('manifest_path', sa.Text(), nullable=True),
    sa.Column('files', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('composite_path', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recordings'))
    )
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recordings_room'), ['room'], unique=False)
        batch_op.create_index(batch_op.f('ix_recordings_session_id'), ['session_id'], unique=False)

    op.create_table('session_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('ts', sa.Double(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=True),
    sa.Column('payload', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_session_events'))
    )
    with op.batch_alter_table('session_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_session_events_session_id_ts'), ['session_id', 'ts'], unique=False)

    op.create_table('sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('room', sa.String(length=128), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('type', sa.String(length=20), nullable=False),
    sa.Column('instructor', sa.String(length=255), nullable=False),
    sa.Column('scheduled_start', sa.Double(), nullable=True),
    sa.Column('scheduled_end', sa.Double(), nullable=True),
    sa.Column('capacity', sa.Integer(), nullable=True),
    sa.Column('password_hash', sa.Text(), nullable=True),
    sa.Column('features', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('actual_start', sa.Double(), nullable=True),
    sa.Column('actual_end', sa.Double(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions')),
    sa.UniqueConstraint('room', name=op.f('uq_sessions_room'))
    )
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sessions_instructor'), ['instructor'], unique=False)
        batch_op.create_index(batch_op.f('ix_sessions_status'), ['status'], unique=False)

    op.create_table('webhooks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('events', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks'))
    )
    op.create_table('whiteboard_clears',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('cleared_at', sa.Double(), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_whiteboard_clears'))
    )
    with op.batch_alter_table('whiteboard_clears', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_whiteboard_clears_session_id'), ['session_id'], unique=False)

    op.create_table('whiteboard_strokes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('author', sa.String(length=255), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('undone', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_whiteboard_strokes'))
    )
    with op.batch_alter_table('whiteboard_strokes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_whiteboard_strokes_session_id_id'), ['session_id', 'id'], unique=False)

    op.create_table('admissions',
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('counted', sa.Boolean(), nullable=False),
    sa.Column('admitted_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_admissions_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'identity', name=op.f('pk_admissions'))
    )
    op.create_table('bans',
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('by', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_bans_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'identity', name=op.f('pk_bans'))
    )
    op.create_table('poll_votes',
    sa.Column('poll_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('choices', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['poll_id'], ['polls.id'], name=op.f('fk_poll_votes_poll_id_polls'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('poll_id', 'identity', name=op.f('pk_poll_votes'))
    )
    op.create_table('question_votes',
    sa.Column('question_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['question_id'], ['questions.id'], name=op.f('fk_question_votes_question_id_questions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('question_id', 'identity', name=op.f('pk_question_votes'))
    )
    op.create_table('quiz_assignments',
    sa.Column('round_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('question_id', sa.String(length=32), nullable=False),
    sa.Column('answer', sa.Integer(), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=True),
    sa.Column('answered_at', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['question_id'], ['quiz_questions.id'], name=op.f('fk_quiz_assignments_question_id_quiz_questions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['round_id'], ['quiz_rounds.id'], name=op.f('fk_quiz_assignments_round_id_quiz_rounds'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('round_id', 'identity', name=op.f('pk_quiz_assignments'))
    )
    op.create_table('recording_views',
    sa.Column('recording_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('last_position', sa.Double(), server_default='0', nullable=False),
    sa.Column('seconds_watched', sa.Double(), server_default='0', nullable=False),
    sa.Column('completed', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_recording_views_recording_id_recordings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('recording_id', 'identity', name=op.f('pk_recording_views'))
    )
    op.create_table('session_roles',
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('identity', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_session_roles_session_id_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'identity', name=op.f('pk_session_roles'))
    )
    op.create_table('tutoring_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('student', sa.String(length=255), nullable=False),
    sa.Column('student_name', sa.Text(), server_default='', nullable=False),
    sa.Column('course_ref', sa.Text(), nullable=True),
    sa.Column('lesson_ref', sa.Text(), nullable=True),
    sa.Column('note', sa.Text(), server_default='', nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('instructor', sa.String(length=255), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('session_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('expires_at', sa.Double(), nullable=False),
    sa.Column('accepted_at', sa.Double(), nullable=True),
    sa.Column('ended_at', sa.Double(), nullable=True),
    sa.Column('ended_by', sa.String(length=255), nullable=True),
    sa.Column('duration_s', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_tutoring_requests_session_id_sessions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tutoring_requests'))
    )
    with op.batch_alter_table('tutoring_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tutoring_requests_instructor'), ['instructor'], unique=False)
        batch_op.create_index(batch_op.f('ix_tutoring_requests_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_tutoring_requests_student'), ['student'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('webhook_id', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.Double(), nullable=True),
    sa.Column('delivered_at', sa.Double(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], name=op.f('fk_webhook_deliveries_webhook_id_webhooks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'), ['next_attempt_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_next_attempt_at'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('tutoring_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tutoring_requests_student'))
        batch_op.drop_index(batch_op.f('ix_tutoring_requests_status'))
        batch_op.drop_index(batch_op.f('ix_tutoring_requests_instructor'))

    op.drop_table('tutoring_requests')
    op.drop_table('session_roles')
    op.drop_table('recording_views')
    op.drop_table('quiz_assignments')
    op.drop_table('question_votes')
    op.drop_table('poll_votes')
    op.drop_table('bans')
    op.drop_table('admissions')
    with op.batch_alter_table('whiteboard_strokes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_whiteboard_strokes_session_id_id'))

    op.drop_table('whiteboard_strokes')
    with op.batch_alter_table('whiteboard_clears', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_whiteboard_clears_session_id'))

    op.drop_table('whiteboard_clears')
    op.drop_table('webhooks')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sessions_status'))
        batch_op.drop_index(batch_op.f('ix_sessions_instructor'))

    op.drop_table('sessions')
    with op.batch_alter_table('session_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_session_events_session_id_ts'))

    op.drop_table('session_events')
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recordings_session_id'))
        batch_op.drop_index(batch_op.f('ix_recordings_room'))

    op.drop_table('recordings')
    with op.batch_alter_table('quiz_rounds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quiz_rounds_session_id'))

    op.drop_table('quiz_rounds')
    with op.batch_alter_table('quiz_questions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quiz_questions_bank'))

    op.drop_table('quiz_questions')
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_questions_session_id'))

    op.drop_table('questions')
    with op.batch_alter_table('presence_intervals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_presence_intervals_session_id_identity'))

    op.drop_table('presence_intervals')
    with op.batch_alter_table('polls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_polls_session_id'))

    op.drop_table('polls')
    with op.batch_alter_table('hand_raises', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hand_raises_session_id'))

    op.drop_table('hand_raises')
    op.drop_table('engagement')
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_messages_session_id_id'))

    op.drop_table('chat_messages')
    op.drop_table('api_keys')
