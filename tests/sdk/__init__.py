"""Tests of the SDK package (conveyor) and its CLI."""
