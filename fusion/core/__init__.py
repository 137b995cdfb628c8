"""Plumbing every floor may use: latency statistics and rate-limited logging.

The lowest floor with `fusion.errors`: it imports nothing else of the project, so the runtime,
perception and the reports share one latency histogram and one way of logging a recurring
problem without importing each other.
"""
