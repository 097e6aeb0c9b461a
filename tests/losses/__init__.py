"""Tests of :mod:`siamssl.losses` (a package so that ``test_<family>.py`` names cannot collide with
test modules of the same basename elsewhere under ``tests/``)."""
