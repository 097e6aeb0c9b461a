"""Adapters to tools SSL researchers already use; each needs its optional extra and is imported
only on request (``import siamssl`` never imports them)."""
