"""Telemetry: the bottom layer. Metric key names, their writers and readers' arithmetic, the
Redis client every layer shares, the metrics reset, and the garbage collector's settings of a loaded
process (collector.py). It imports no other part of the project.
"""
