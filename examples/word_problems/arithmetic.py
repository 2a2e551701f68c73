"""Column arithmetic written out digit by digit: the worked computations of the solutions.

A small model does not learn multi-digit arithmetic written the school way (``245 + 38 = 283``,
most significant digit first: the first digit depends on every carry) from a few million
tokens. Written column by column, from the ones up, every step is a one-digit fact plus a
carry, and the result is the last digits read backwards::

    add_steps(245, 38)  -> "5 + 8 + 0 = 13, 4 + 3 + 1 = 8, 2 + 0 + 0 = 2, so 245 + 38 = 283"
    sub_steps(623, 278) -> "13 - 8 - 0 = 5, 12 - 7 - 1 = 4, 6 - 2 - 1 = 3, so 623 - 278 = 345"
    mul_steps(7, 78)    -> "7 * 8 + 0 = 56, 7 * 7 + 5 = 54, so 7 * 78 = 546"
    div_steps(546, 7)   -> "54 / 7 = 7 r 5, 56 / 7 = 8 r 0, so 546 / 7 = 78"

Subtraction borrows by writing the top digit plus ten (``13 - 8``) and subtracting the borrow
in the next column (``- 1``); division is long division from the left (``r`` is the remainder).

``split_products`` rewrites each multiplication column as a times-table fact and then the carry's
addition (``7 * 7 + 5 = 54`` -> ``7 * 7 = 49, 49 + 5 = 54``): the fused form asks the model for
one of 810 three-operand facts in one go, and those facts were half of the word-problem AR
model's wrong answers on problems in training phrasings.
"""

from __future__ import annotations

import re

_PRODUCT_COLUMN = re.compile(r"\b(\d) \* (\d) \+ (\d) = (\d+)")


def _digits(n: int) -> list[int]:
    """Digits of ``n``, ones first."""
    return [int(c) for c in reversed(str(n))]


def add_steps(a: int, b: int) -> str:
    da, db = _digits(a), _digits(b)
    carry, steps = 0, []
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        steps.append(f"{x} + {y} + {carry} = {s}")
        carry = s // 10
    return ", ".join(steps) + f", so {a} + {b} = {a + b}"


def sub_steps(a: int, b: int) -> str:
    if not 0 <= b <= a:
        raise ValueError(f"sub_steps needs 0 <= b <= a, got {a} - {b}")
    da, db = _digits(a), _digits(b)
    borrow, steps = 0, []
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        top = x if x - y - borrow >= 0 else 10 + x
        steps.append(f"{top} - {y} - {borrow} = {top - y - borrow}")
        borrow = int(top >= 10)
    return ", ".join(steps) + f", so {a} - {b} = {a - b}"


def mul_steps(n: int, k: int) -> str:
    """``n`` (one digit) times ``k``."""
    if not 0 <= n <= 9:
        raise ValueError(f"mul_steps multiplies by one digit, got {n}")
    carry, steps = 0, []
    for d in _digits(k):
        p = n * d + carry
        steps.append(f"{n} * {d} + {carry} = {p}")
        carry = p // 10
    return ", ".join(steps) + f", so {n} * {k} = {n * k}"


def div_steps(total: int, n: int) -> str:
    """``total`` divided by ``n`` (one digit, dividing ``total`` exactly), by long division."""
    if not 1 <= n <= 9 or total % n:
        raise ValueError(f"div_steps divides exactly by one digit, got {total} / {n}")
    digits = [int(c) for c in str(total)]
    chunk, i = digits[0], 1
    while chunk < n and i < len(digits):
        chunk, i = chunk * 10 + digits[i], i + 1
    steps = []
    while True:
        q, r = divmod(chunk, n)
        steps.append(f"{chunk} / {n} = {q} r {r}")
        if i == len(digits):
            break
        chunk, i = r * 10 + digits[i], i + 1
    return ", ".join(steps) + f", so {total} / {n} = {total // n}"


def split_products(text: str) -> str:
    """``text`` with every fused multiplication column ``n * d + c = s`` written as ``n * d = p, p + c = s``."""
    def one(m: re.Match) -> str:
        n, d, c, total = (int(g) for g in m.groups())
        if n * d + c != total:
            raise ValueError(f"not a multiplication column: {m.group(0)!r}")
        return f"{n} * {d} = {n * d}, {n * d} + {c} = {total}"
    return _PRODUCT_COLUMN.sub(one, text)


STEPS = {"+": add_steps, "-": sub_steps, "*": mul_steps, "/": div_steps}


def steps(a: int, op: str, b: int) -> str:
    return STEPS[op](a, b)
