"""A STAND-IN for the official USAD release's Python files (no release can be downloaded here).

These files are never imported as part of this package: `usad_upstream.release.fixtures`
copies them into a snapshot directory beside a config.json and random weights, in the release's
layout (modeling_usad.py -> usad_model.py -> usad_modules.py, `model.`-prefixed keys, no padding
mask), so that the resolver, the release backend, `usad convert` and the benchmarks can be
tested against code that is NOT ours. They are our own reading of /work/shared/RELEASED.md and of
the public openspeech / sooftware "conformer" code base the release's config field names come
from; every line marked GUESS is not known about the real release. The model card's
`load_audio(path)` is left out: nothing here calls the release's.

USAD 2.0's files are not known at all: `fixtures.write_standin_snapshot(..., generation=2)`
writes these same files under other names with model_type "usad2" and a 25 Hz config, a
different layout for the resolver to detect from config.json alone.
"""
