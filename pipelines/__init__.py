"""Batch jobs: thin steps that wire library calls; each reads and writes files so it can run alone."""
