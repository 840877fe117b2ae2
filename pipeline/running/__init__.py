"""Driving runs: the stages of a run, where they run, the run directory, and the checks before a run."""
