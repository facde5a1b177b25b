"""The chatdock command: the only place that reads flags and environment."""
