"""A worker job kerasio does not ship: registered on import, run in a fresh worker that imports this module."""
from kerasio.process.jobs import job


@job("tests.add")
def add(a: int, b: int) -> int:
    return a + b
