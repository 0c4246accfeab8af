import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piserver.agents.dotenv import DotenvProblem, load_dotenv, parse_dotenv

SECRET = "sk-live-SECRETVALUE-42"


def parsed(text):
    variables, problems = parse_dotenv(text)
    assert problems == []
    return variables


def test_plain_assignments():
    assert parsed("A=1\nB=two\n") == {"A": "1", "B": "two"}


def test_export_prefix():
    assert parsed("export A=1\nexport\tB=2\n") == {"A": "1", "B": "2"}


def test_a_key_named_export():
    assert parsed("export=1\n") == {"export": "1"}


def test_whitespace_around_key_and_equals():
    assert parsed("  A  =  spaced value  \n\tB\t=\t2\n") == {"A": "spaced value", "B": "2"}


def test_empty_values():
    assert parsed("A=\nB=\"\"\nC=''\nD= # only a comment\n") == {
        "A": "",
        "B": "",
        "C": "",
        "D": "",
    }


def test_blank_and_comment_lines():
    text = "\n# a comment\n   # an indented comment\n\nA=1\n   \n"
    assert parsed(text) == {"A": "1"}


def test_inline_comment_after_unquoted_value():
    assert parsed("A=value # comment\nB=value\t# tab comment\n") == {"A": "value", "B": "value"}


def test_hash_without_preceding_whitespace_is_part_of_the_value():
    assert parsed("A=abc#def\nB=#notcomment\n") == {"A": "abc#def", "B": "#notcomment"}


def test_equals_in_value_is_kept():
    assert parsed("URL=https://x.test/?a=b&c=d\n") == {"URL": "https://x.test/?a=b&c=d"}


def test_double_quotes_with_escapes():
    variables = parsed(r'A="line1\nline2"' + "\n" + r'B="say \"hi\" \\ done"' + "\n")
    assert variables == {"A": "line1\nline2", "B": 'say "hi" \\ done'}


def test_other_backslashes_in_double_quotes_are_kept():
    assert parsed(r'A="C:\temp\x"') == {"A": r"C:\temp\x"}


def test_double_quotes_keep_hash_and_spaces():
    assert parsed('A="  has # hash  " # comment\n') == {"A": "  has # hash  "}


def test_single_quotes_are_literal():
    assert parsed(r"A='no \n escape \"here\"'") == {"A": r"no \n escape \"here\""}


def test_single_quotes_keep_double_quotes_and_hash():
    assert parsed("A='a \"b\" # c'  # comment") == {"A": 'a "b" # c'}


def test_crlf_line_endings():
    assert parsed('A=1\r\nB="two"\r\n# c\r\n\r\nC=3') == {"A": "1", "B": "two", "C": "3"}


def test_bom_is_ignored():
    assert parsed("\ufeffA=1\n") == {"A": "1"}


def test_last_assignment_wins():
    assert parsed("A=1\nA=2\n") == {"A": "2"}


def test_no_variable_expansion():
    assert parsed("A=$HOME\nB=${A}\n") == {"A": "$HOME", "B": "${A}"}


def test_no_trailing_newline():
    assert parsed("A=1") == {"A": "1"}


def test_unicode_values():
    assert parsed("A=héllo wörld ✓\n") == {"A": "héllo wörld ✓"}


@pytest.mark.parametrize(
    ("line", "reason_part"),
    [
        (SECRET, "no '='"),
        (f"export {SECRET}", "no '='"),
        (f"1KEY={SECRET}", "invalid key"),
        (f"MY-KEY={SECRET}", "invalid key"),
        (f"={SECRET}", "invalid key"),
        (f"A B={SECRET}", "invalid key"),
        (f"{SECRET} ={SECRET}", "invalid key"),
        (f'A="{SECRET}', "unterminated double quote"),
        (f'A="{SECRET}\\"', "unterminated double quote"),
        (f"A='{SECRET}", "unterminated single quote"),
        (f'A="{SECRET}"trailing', "after the closing quote"),
        (f"A='{SECRET}' trailing", "after the closing quote"),
        (f"A={SECRET}\0", "NUL"),
        (f"A={SECRET}\udcff", "not valid UTF-8"),
    ],
)
def test_malformed_lines_report_line_number_without_the_value(line, reason_part):
    text = f"# first\nGOOD=1\n{line}\nAFTER=2\n"
    variables, problems = parse_dotenv(text)
    assert variables == {"GOOD": "1", "AFTER": "2"}
    assert len(problems) == 1
    problem = problems[0]
    assert problem.line == 3
    assert reason_part in problem.reason
    assert SECRET not in problem.reason
    assert SECRET not in str(problem)
    assert SECRET not in repr(problem)
    assert str(problem).startswith("line 3: ")


def test_line_numbers_count_crlf_lines_and_skip_nothing():
    variables, problems = parse_dotenv("A=1\r\nbad\r\n\r\nB='x\r\nC=3\r\n")
    assert variables == {"A": "1", "C": "3"}
    assert [problem.line for problem in problems] == [2, 4]


def test_load_missing_file(tmp_path):
    assert load_dotenv(tmp_path / ".env") == ({}, [])


def test_load_file_with_private_mode(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfexport A='1'\r\nB=2 # c\r\n")
    os.chmod(path, 0o600)
    assert load_dotenv(path) == ({"A": "1", "B": "2"}, [])


def test_load_file_with_loose_mode_warns_and_still_loads(tmp_path):
    path = tmp_path / ".env"
    path.write_text(f"A={SECRET}\n")
    os.chmod(path, 0o644)
    variables, problems = load_dotenv(str(path))
    assert variables == {"A": SECRET}
    assert problems == [
        DotenvProblem(line=None, reason="file mode 0644 is looser than 0600 (run chmod 600 on it)")
    ]
    assert str(problems[0]) == problems[0].reason


def test_load_invalid_utf8_skips_only_that_line(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\nB=caf\xe9 " + SECRET.encode() + b"\nC=3\n")
    os.chmod(path, 0o600)
    variables, problems = load_dotenv(path)
    assert variables == {"A": "1", "C": "3"}
    assert problems == [DotenvProblem(line=2, reason="not valid UTF-8")]


def test_load_unreadable_path_raises(tmp_path):
    with pytest.raises(OSError):
        load_dotenv(tmp_path)


@given(st.text())
def test_any_text_parses_without_raising_and_problems_never_quote_it(text):
    variables, problems = parse_dotenv(text)
    line_count = len(text.split("\n"))
    for problem in problems:
        assert 1 <= problem.line <= line_count
        # A reason is fixed text, apart from the (valid) key of a value with a NUL.
        assert problem.reason in _FIXED_REASONS or problem.reason.endswith(
            "contains a NUL character"
        )
    for key in variables:
        assert key.isascii() and (key[0].isalpha() or key[0] == "_")


_FIXED_REASONS = {
    "not valid UTF-8",
    "expected KEY=VALUE, found no '='",
    "invalid key name (must match [A-Za-z_][A-Za-z0-9_]*)",
    "unterminated double quote",
    "unterminated single quote",
    "unexpected text after the closing quote",
}
