"""The two hand-written files of an exported snapshot (`usad export --hf`): the transformers
config and model classes. They are copied, never imported from here: their relative imports
name the bundled modules (`.usad_model`, ...) that usad_upstream/release/bundle.py generates
from our own source beside them in the snapshot.
"""
