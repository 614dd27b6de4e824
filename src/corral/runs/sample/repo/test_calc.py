"""Run with `python3 test_calc.py` (no test framework needed)."""

from calc import add, scale


def test_add() -> None:
    assert add(2, 3) == 5, f"add(2, 3) is {add(2, 3)}, expected 5"


def test_scale() -> None:
    assert scale([1, 2], 3) == [3, 6]


if __name__ == "__main__":
    for test in (test_add, test_scale):
        test()
    print("all tests pass")
