"""Telemetry: the bottom layer. Metric key names, their writers and readers' arithmetic, the
Redis client every layer shares, and the metrics reset. It imports no other part of the project.
"""
