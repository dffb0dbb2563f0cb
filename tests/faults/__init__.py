"""The fault-injection suite: see docs/reliability.md for the scenarios each test proves."""
