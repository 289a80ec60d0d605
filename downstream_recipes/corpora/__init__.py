"""Small benchmark corpora in the real on-disk formats (LibriSpeech, Speech Commands, VoxCeleb1,
Fluent Speech Commands, HEAR), built offline from synthesizers and real recordings that Debian
packages ship, so that s3prl's and heareval's own loaders and runners can be used unmodified.

Entry points: `build.build_corpora(out, size, seed)` and `check.check_corpora(out)`; the CLI is
`usad corpora build|check` (commands.py).
"""
