"""Pieces self-supervised objectives share: EMA teachers and their schedules."""
