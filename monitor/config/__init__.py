"""The site config: the validated, frozen model and its YAML loader, and the durations, sizes and time windows it
is written in.
"""
