"""Answer parsing (GSM8K strict/flexible, code) and Wilson intervals."""

from __future__ import annotations

import math

import pytest

from pipeline.core.errors import PipelineError
from pipeline.evaluation.answers import code_blocks, extract_code, gsm8k_flexible, gsm8k_strict, normalize_number
from pipeline.evaluation.stats import mean_std, proportion, wilson_interval


@pytest.mark.parametrize("text, flexible, strict", [
    ("So 12 + 7 = 19. The answer is 19.", "19", "19"),
    ("She pays $1,234.50 in total.\n#### 1,234.50", "1234.5", "1234.5"),
    ("The answer is $1,000, then 3 more people came.", "3", "1000"),
    ("The answer is: **42**", "42", "42"),
    ("It costs 18.00 dollars", "18", None),
    ("#### -5", "-5", "-5"),
    ("Write the final answer: The answer is \\(280\\).", "280", "280"),
    ("Therefore, the answer is \\(\\boxed{6}\\).", "6", "6"),
    ("The answer is that 3 boxes hold 12.", "12", None),
    ("no digits here", None, None),
])
def test_gsm8k_extraction(text, flexible, strict):
    assert gsm8k_flexible(text) == flexible
    assert gsm8k_strict(text) == strict


def test_number_normalisation_treats_formatting_alike():
    assert normalize_number("1,234") == normalize_number("$1234") == normalize_number("1234.00") == "1234"
    assert normalize_number("0.50") == "0.5"
    assert normalize_number("abc") is None


PROMPT = 'from typing import List\n\n\ndef helper(x):\n    return x\n\n\ndef f(xs: List[int]) -> int:\n    """Sum."""\n'


def test_code_rewrite_from_fenced_block_drops_model_tests_and_stub():
    answer = ("Here it is:\n```python\ndef f(xs):\n    pass\n```\nBetter:\n```python\n"
              "def f(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)\n\n"
              "print(f([1]))\nassert f([1, 2]) == 4\nif __name__ == '__main__':\n    input()\n```\nDone.")
    code = extract_code(answer, PROMPT, "f")
    assert code.mode == "rewrite"
    assert "return sum(helper(x)" in code.code and "from typing import List" in code.code
    assert "print(" not in code.code and "assert" not in code.code and "input()" not in code.code
    assert "pass" not in code.code
    ns: dict = {}
    exec(code.code, ns)
    assert ns["f"]([1, 2]) == 3


def test_code_completion_mode_appends_body_and_repairs_truncation():
    answer = "    return sum(xs)\n\n\nprint(f([1, 2]))\ndef broken(:"
    code = extract_code(answer, PROMPT, "f")
    assert code.mode == "completion"
    ns: dict = {}
    exec(code.code, ns)
    assert ns["f"]([1, 2]) == 3
    assert any("dropped" in n for n in code.notes)


def test_answer_cut_by_the_token_limit_is_still_a_rewrite():
    answer = "```python\nfrom typing import List\n\ndef f(xs):\n    total = sum(xs)\n    return total\n\n# and now some"
    code = extract_code(answer + " tests\nassert f([", PROMPT, "f")
    assert code.mode == "rewrite"
    ns: dict = {}
    exec(code.code, ns)
    assert ns["f"]([1, 2]) == 3


def test_unterminated_fence_and_language_filter():
    assert code_blocks("```bash\nls\n```\n```python\nx = 1\n") == ["x = 1\n"]
    assert code_blocks("```\ny = 2\n```") == ["y = 2\n"]


def test_wilson_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and math.isclose(high, 0.27753, abs_tol=1e-4)
    low, high = wilson_interval(5, 10)
    assert math.isclose(low, 0.23659, abs_tol=1e-4) and math.isclose(high, 0.76341, abs_tol=1e-4)
    low, high = wilson_interval(10, 10)
    assert math.isclose(low, 0.72247, abs_tol=1e-4) and high == 1.0
    # 81/263, worked by hand from the closed form with z = 1.96
    low, high = wilson_interval(81, 263)
    assert math.isclose(low, 0.25529, abs_tol=1e-4) and math.isclose(high, 0.36621, abs_tol=1e-4)


def test_wilson_rejects_empty_and_proportion_is_percent():
    with pytest.raises(PipelineError):
        wilson_interval(0, 0)
    p = proportion(3, 4, "acc")
    assert p["acc"] == 75.0 and p["acc_correct"] == 3 and p["acc_ci95_low"] < 75.0 < p["acc_ci95_high"]


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(s, 1.0)
