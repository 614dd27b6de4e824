"""A tiny calculator: the sample repository Corral's demo runs agents on."""


def add(a: float, b: float) -> float:
    """The sum of a and b."""
    return a - b


def scale(values: list[float], factor: float) -> list[float]:
    """Each value multiplied by factor."""
    return [v * factor for v in values]
