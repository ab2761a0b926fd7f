"""What the ingest stores of a webhook body: the body with every access token cut out, and the token apart."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.ingest import REDACTED, redact, stored_body

TOKEN = "3f1c2e4a-7b8d-4e9f-a0b1-c2d3e4f5a6b7"


def test_a_rutter_shaped_body_is_stored_as_sent_with_the_token_cut_out() -> None:
    """The raw text is kept (key order, spacing) and only the token's value changes."""
    raw = f'{{"type": "ORDER", "code": "ORDER_CREATED", "access_token": "{TOKEN}", "order": {{"id": "o1"}}}}'
    text, token = stored_body(json.loads(raw), raw.encode())
    assert token == TOKEN
    assert text == raw.replace(TOKEN, REDACTED)


def test_a_body_without_a_token_is_stored_as_sent() -> None:
    """Nothing to cut: the stored text is the received text."""
    raw = '{"code":"JOB_COMPLETED","job":{"id":"j1"}}'
    assert stored_body(json.loads(raw), raw.encode()) == (raw, None)


def test_a_nested_or_escaped_token_is_redacted_everywhere() -> None:
    """Tokens under other keys, or a key spelled with a \\u escape, take the full walk and are all redacted."""
    nested = {"code": "X", "access_token": TOKEN, "job": {"request": {"access_token": "other-token"}}}
    text, token = stored_body(nested, json.dumps(nested).encode())
    assert token == TOKEN
    assert TOKEN not in text
    assert "other-token" not in text
    assert json.loads(text) == redact(nested)[0]
    escaped = '{"code": "X", "access\\u005ftoken": "' + TOKEN + '"}'
    text, token = stored_body(json.loads(escaped), escaped.encode())
    assert token == TOKEN
    assert TOKEN not in text


def test_the_token_is_cut_wherever_its_value_appears() -> None:
    """The same token quoted elsewhere in the body (a URL field, say) is cut too."""
    raw = f'{{"code":"X","access_token":"{TOKEN}","note":"{TOKEN}"}}'
    text, _ = stored_body(json.loads(raw), raw.encode())
    assert TOKEN not in text
    assert json.loads(text) == {"code": "X", "access_token": REDACTED, "note": REDACTED}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    token=st.text(min_size=1, max_size=12),
    with_token=st.booleans(),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_any_body_stored_parses_to_the_redacted_value_and_never_holds_the_token(
    body: dict[str, Any], token: str, with_token: bool, ensure_ascii: bool, indent: int | None
) -> None:
    """Whatever the body and however it was serialised, the stored text is valid JSON equal to the redacted body."""
    if with_token:
        body = {**body, "access_token": token}
    raw = json.dumps(body, ensure_ascii=ensure_ascii, indent=indent).encode()
    text, found = stored_body(body, raw)
    expected, expected_token = redact(body)
    assert json.loads(text) == expected
    assert found == expected_token
    if with_token and token != REDACTED:
        assert f'"access_token":"{token}"' not in text.replace(" ", "").replace("\n", "")
