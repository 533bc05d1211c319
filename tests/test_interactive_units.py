"""Storage-free pieces of the interactive layer: PNG rendering, quiz assignment and bank parsing, rate limits."""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from hypothesis import given, settings
from hypothesis import strategies as st

from classroom.interactive.limits import Rate, RateLimiter
from classroom.interactive.quiz import QuizBankError, assign_questions, import_bank, load_bank
from classroom.interactive.whiteboard import encode_png, rasterize, render_png
from tests.fixtures.interactive import FakeClock

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as png:
        assert png.mode == "RGB"
        return np.asarray(png)


def test_render_png_draws_strokes_where_they_are():
    strokes = [
        {"tool": "line", "points": [[0.1, 0.5], [0.9, 0.5]], "color": "#ff0000", "width": 10},
        {"tool": "rectangle", "points": [[0.2, 0.2], [0.4, 0.8]], "color": "#0000ff", "width": 6},
        {"tool": "pen", "points": [[0.7, 0.1], [0.7, 0.3], [0.8, 0.3]], "color": "#00aa00", "width": 8},
        {"tool": "eraser", "points": [[0.5, 0.5]], "width": 40},
    ]
    img = decode_png(render_png(strokes, 200, 100))
    assert img.shape == (100, 200, 3)
    assert tuple(img[50, 30]) == (255, 0, 0)  # on the red line
    assert tuple(img[50, 100]) == (255, 255, 255)  # erased
    assert tuple(img[20, 40]) == (0, 0, 255)  # top edge of the rectangle
    assert tuple(img[30, 60]) == (255, 255, 255)  # inside the rectangle: outline only
    assert tuple(img[20, 140]) == (0, 170, 0)  # pen
    assert tuple(img[5, 5]) == (255, 255, 255)
    assert (img == rasterize(strokes, 200, 100)).all()


def test_text_strokes_are_drawn_as_glyphs():
    strokes = [{"tool": "text", "points": [[0.1, 0.1]], "text": "Hello IIII", "color": "#123456", "width": 10}]
    img = decode_png(render_png(strokes, 400, 200))
    ink = (img != 255).any(axis=2)
    ys, xs = np.nonzero(ink)
    assert len(xs) > 50
    assert xs.min() >= 38 and ys.min() >= 18  # the text starts at its point (0.1, 0.1)
    dark = img[ink]
    assert (np.abs(dark.astype(int) - (0x12, 0x34, 0x56)).sum(axis=1) < 30).any()  # solid glyph pixels in its color
    columns = ink[:, xs.min():xs.max() + 1].any(axis=0)
    assert not columns.all(), "glyphs have gaps between letters; a bar would not"
    assert (decode_png(render_png([{**strokes[0], "text": "   "}], 400, 200)) == 255).all()


def test_render_png_handles_empty_and_degenerate_boards():
    assert (decode_png(render_png([], 3, 2)) == 255).all()
    img = decode_png(render_png([{"tool": "pen", "points": [[1, 1]], "width": 200}], 10, 10))
    assert tuple(img[9, 9]) == (0, 0, 0)
    assert decode_png(render_png([], 0, 99999)).shape == (4096, 1, 3)
    assert (decode_png(encode_png(np.zeros((1, 1, 3), np.uint8))) == 0).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 25), st.integers(0, 2**32))
def test_assign_questions_spreads_as_evenly_as_possible(n_students, n_questions, seed):
    students = [f"s{i}" for i in range(n_students)]
    qids = [f"q{i}" for i in range(n_questions)]
    chosen = assign_questions(students, qids, random.Random(seed))
    assert sorted(chosen) == sorted(students)
    counts = Counter(chosen.values())
    low, high = n_students // n_questions, -(-n_students // n_questions)
    assert max(counts.values()) == high
    assert all(low <= counts.get(q, 0) <= high for q in qids)
    if n_students <= n_questions:
        assert len(set(chosen.values())) == n_students


def test_assign_questions_is_random():
    students = [f"s{i}" for i in range(10)]
    qids = [f"q{i}" for i in range(10)]
    outcomes = {tuple(sorted(assign_questions(students, qids, random.Random(seed)).items())) for seed in range(20)}
    assert len(outcomes) > 1


def test_load_bank_accepts_list_object_and_path(tmp_path):
    q = {"prompt": "2+2?", "choices": ["3", "4"], "answer": 1}
    assert load_bank(json.dumps([q])) == ("default", [q])
    assert load_bank({"bank": "math", "questions": [q]}) == ("math", [q])
    path = tmp_path / "bank.json"
    path.write_text(json.dumps({"bank": "file", "questions": [q, q]}))
    assert load_bank(str(path))[0] == "file" and len(load_bank(path)[1]) == 2


@pytest.mark.parametrize("bank,fragment", [
    ("not json", "cannot read quiz bank"),
    ("[1", "not valid JSON"),
    ("[]", "invalid at /"),
    ('[{"prompt": "p", "choices": ["a"], "answer": 0}]', "/0/choices"),
    ('[{"prompt": "p", "choices": ["a", "b"], "answer": 2}]', "/questions/0/answer"),
    ('{"questions": [{"prompt": "p", "choices": ["a", "b"]}]}', "'answer' is a required property"),
])
def test_load_bank_errors_name_the_problem(bank, fragment):
    with pytest.raises(QuizBankError) as err:
        load_bank(bank)
    assert fragment in str(err.value)


async def test_import_bank_stores_questions(store):
    from storage.interactive import InteractiveRepository

    result = await import_bank(store, {"bank": "units", "questions": [
        {"prompt": "p", "choices": ["a", "b"], "answer": 0, "explanation": "because"}]})
    assert result["count"] == 1 and result["bank"] == "units"
    (q,) = await InteractiveRepository(store).quiz_questions(bank="units")
    assert q["explanation"] == "because" and q["choices"] == ["a", "b"] and q["id"] == result["ids"][0]


def test_rate_limiter_token_bucket():
    clock = FakeClock()
    limiter = RateLimiter({"chat": Rate(5, 10)}, clock)
    assert sum(limiter.allow("a", "chat") for _ in range(20)) == 10
    assert limiter.allow("b", "chat")  # per identity
    clock.advance(0.2)
    assert limiter.allow("a", "chat") and not limiter.allow("a", "chat")
    clock.advance(100)
    assert sum(limiter.allow("a", "chat") for _ in range(20)) == 10  # capped at the burst
    assert limiter.allow("a", "unlimited")
