"""The shell's statement splitting (no Spark): a ';' ends a statement unless quoted or commented."""
import pytest

from deepcrate.query.sql_shell import StatementBuffer


@pytest.mark.parametrize("lines, statements, pending", [
    (["SELECT 1;"], ["SELECT 1"], False),
    (["SELECT", "  1", ";"], ["SELECT\n  1"], False),
    (["SELECT 1; SELECT 2;"], ["SELECT 1", "SELECT 2"], False),
    (["SELECT 'a;b', \"c;d\", `e;f`;"], ["SELECT 'a;b', \"c;d\", `e;f`"], False),
    (["SELECT 1 -- not; yet", "+ 1;"], ["SELECT 1 -- not; yet\n+ 1"], False),
    (["SELECT /* a; b */ 1;"], ["SELECT /* a; b */ 1"], False),
    (["SELECT 1; -- trailing; comment"], ["SELECT 1"], False),
    (["SELECT 'it''s;';"], ["SELECT 'it''s;'"], False),
    (["SELECT 1"], [], True),
    (["SELECT '; still quoted", "';"], ["SELECT '; still quoted\n'"], False),
    ([";;", "  ;"], [], False),
])
def test_statements_end_at_a_semicolon_outside_quotes_and_comments(lines, statements, pending):
    buffer = StatementBuffer()
    found = [s for line in lines for s in buffer.feed(line)]
    assert found == statements and buffer.pending == pending
