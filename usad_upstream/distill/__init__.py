"""Distilling a USAD student from frozen teachers: objective, data pipeline, trainer, CLI."""
