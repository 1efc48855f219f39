"""The shipped configs (package data of the wheel): demo.yaml, experiment configs."""
