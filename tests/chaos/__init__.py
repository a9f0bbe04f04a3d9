"""Fault suite: the whole pipeline under broker, Redis, process, disk and clock faults.

The short version runs in ``make test``; ``make chaos`` runs it with ``CHAOS_SCALE`` (more calls,
more repetitions, longer outages).
"""
