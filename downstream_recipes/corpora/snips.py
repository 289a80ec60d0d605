"""Audio SNIPS-format corpus for SF (s3prl ctc recipe, corpus `snips`, character-slot text).

  <root>/{train,valid,test}/<Speaker>-snips-<split>-<n>.wav
  <root>/all.iob.snips.txt   "<utt> BOS W1 .. Wn EOS<TAB>O T1 .. Tn <Intent>" (Ti: slot name or O)
  <root>/all-trans.txt       "<utt> W1 .. Wn" (plain transcripts)
  <root>/slots.txt           "O" then one slot name per line
  <root>/character.txt       the character vocabulary of s3prl's ctc recipe (space, A-Z, ')

The real Audio SNIPS is synthetic too: the SNIPS NLU text spoken by 16 Amazon Polly voices. Here
the text comes from templates of the seven SNIPS intents with SNIPS's slot names, spoken by our
voices; the voices take the Polly names of SUPERB's speaker lists (8 train, 4 valid, 4 test,
configs/sf.yaml), so the recipe's speaker selection works unchanged.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from . import audio, sources
from .common import Size, audio_stats, fmt_hours, pmap, table, write_datasheet

# SUPERB's speaker lists (s3prl snips.yaml): the Polly voices of the real Audio SNIPS.
SPEAKERS = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "valid": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
CHARACTERS = [" "] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + ["'"]

VALUES: dict[str, tuple[str, ...]] = {
    "artist": ("norah jones", "miles davis", "the beatles", "adele", "bob marley", "nina simone", "elton john", "taylor swift", "johnny cash", "aretha franklin"),
    "music_item": ("song", "track", "album", "tune", "record"),
    "playlist": ("road trip", "dinner jazz", "morning coffee", "workout mix", "rainy day", "chill hits", "sunday classics", "party anthems"),
    "playlist_owner": ("my", "our"),
    "service": ("spotify", "deezer", "pandora", "youtube", "soundcloud"),
    "genre": ("jazz", "blues", "reggae", "soul", "folk", "techno", "country", "punk"),
    "year": ("nineteen ninety", "two thousand ten", "the sixties", "the eighties"),
    "city": ("boston", "chicago", "denver", "seattle", "paris", "london", "madrid", "tokyo", "oslo", "dublin"),
    "state": ("texas", "ohio", "oregon", "florida", "nevada", "vermont"),
    "country": ("france", "canada", "spain", "japan", "norway", "mexico"),
    "timeRange": ("tomorrow", "tonight", "this weekend", "next monday", "at noon", "in two hours", "this evening"),
    "condition_description": ("rain", "snow", "fog", "sunshine", "wind"),
    "condition_temperature": ("cold", "warm", "hot", "freezing", "chilly"),
    "party_size_number": ("two", "three", "four", "five", "six", "eight"),
    "restaurant_type": ("restaurant", "bistro", "diner", "tavern", "steakhouse", "pizzeria"),
    "cuisine": ("italian", "thai", "mexican", "indian", "greek", "korean"),
    "served_dish": ("pasta", "sushi", "burgers", "dumplings", "tacos", "curry"),
    "spatial_relation": ("near", "close to", "far from", "around"),
    "rating_value": ("one", "two", "three", "four", "five"),
    "best_rating": ("five", "six", "ten"),
    "rating_unit": ("stars", "points"),
    "object_select": ("this", "the current", "that"),
    "object_type": ("book", "novel", "textbook", "album", "saga", "essay"),
    "object_name": ("the silent river", "winter garden", "the last harbor", "paper moon", "the glass forest", "northern lights"),
    "movie_name": ("the long road", "midnight train", "blue horizon", "the quiet hour", "summer storm"),
    "movie_type": ("animated movies", "films", "documentaries", "comedies"),
    "location_name": ("regal cinemas", "the grand theater", "city cinema", "the plaza movie house"),
}
# (intent, template): {slot} is filled from VALUES; everything else is O.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("AddToPlaylist", "add this {music_item} by {artist} to {playlist_owner} {playlist} playlist"),
    ("AddToPlaylist", "put {artist} on the {playlist} list"),
    ("AddToPlaylist", "please add a {music_item} to {playlist_owner} playlist {playlist}"),
    ("BookRestaurant", "book a table for {party_size_number} at a {restaurant_type} in {city} {timeRange}"),
    ("BookRestaurant", "i need a reservation for {party_size_number} people at a {cuisine} {restaurant_type} {spatial_relation} {city}"),
    ("BookRestaurant", "find me a {restaurant_type} that serves {served_dish} in {state}"),
    ("GetWeather", "what will the weather be in {city} {timeRange}"),
    ("GetWeather", "will there be {condition_description} in {country} {timeRange}"),
    ("GetWeather", "is it going to be {condition_temperature} in {state} {timeRange}"),
    ("PlayMusic", "play some {genre} from {year}"),
    ("PlayMusic", "play {artist} on {service}"),
    ("PlayMusic", "i want to hear a {music_item} by {artist}"),
    ("RateBook", "rate {object_select} {object_type} {rating_value} out of {best_rating}"),
    ("RateBook", "give {object_name} {rating_value} {rating_unit}"),
    ("RateBook", "i would give {object_select} {object_type} a {rating_value} out of {best_rating} {rating_unit}"),
    ("SearchCreativeWork", "find the {object_type} called {object_name}"),
    ("SearchCreativeWork", "i am looking for the {object_type} {object_name}"),
    ("SearchCreativeWork", "can you search for {object_name}"),
    ("SearchScreeningEvent", "when is {movie_name} playing at {location_name}"),
    ("SearchScreeningEvent", "show me the schedule for {movie_type} {spatial_relation} {location_name}"),
    ("SearchScreeningEvent", "what {movie_type} are showing {timeRange}"),
)


def fill(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """Upper-case words and their tags (slot name or O) of one filled template."""
    words, tags = [], []
    for token in template.split():
        slot = re.fullmatch(r"\{(\w+)\}", token)
        if slot:
            value = rng.choice(VALUES[slot.group(1)]).upper().split()
            words += value
            tags += [slot.group(1)] * len(value)
        else:
            words.append(token.upper())
            tags.append("O")
    return words, tags


def plan(cast: "dict[str, tuple[str, sources.Voice]]", n_utts: int, rng: random.Random) -> list[tuple]:
    """(utt id, split, voice, words, tags, intent) for every voice; a sentence used in one split
    is never drawn for another (a voice gets fewer utterances when the templates run out)."""
    seen: dict[str, str] = {}  # sentence -> split
    jobs = []
    for k, (name, (split, voice)) in enumerate(cast.items()):
        made, tries = 0, 0
        while made < n_utts and tries < 50 * n_utts:
            tries += 1
            # training voices cycle through the templates, the others draw them at random
            intent, template = TEMPLATES[(made + 7 * k + tries) % len(TEMPLATES)] if split == "train" else rng.choice(TEMPLATES)
            words, tags = fill(template, rng)
            if seen.setdefault(" ".join(words), split) != split:
                continue
            jobs.append((f"{name}-snips-{split}-{made}", split, voice, words, tags, intent))
            made += 1
    return jobs


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"snips-{seed}")
    voices = sources.voice_pool(seed + 6)
    counts = dict(zip(SPEAKERS, size.sf_voices))
    cast: dict[str, tuple[str, sources.Voice]] = {}
    cursor = 0
    for split, names in SPEAKERS.items():
        for name in names[: counts[split]]:
            cast[name] = (split, voices[cursor])
            cursor += 1
    jobs = plan(cast, size.sf_utts, rng)

    def render(job: tuple) -> np.ndarray:
        return audio.normalize(job[2].speak(" ".join(job[3]).lower()))

    for job, wav in zip(jobs, pmap(render, jobs, "snips")):
        audio.write(root / job[1] / f"{job[0]}.wav", wav)
    (root / "all.iob.snips.txt").write_text("".join(
        f"{utt} BOS {' '.join(words)} EOS\tO {' '.join(tags)} {intent}\n" for utt, _, _, words, tags, intent in jobs))
    (root / "all-trans.txt").write_text("".join(f"{utt} {' '.join(words)}\n" for utt, _, _, words, _, _ in jobs))
    (root / "slots.txt").write_text("\n".join(["O", *sorted(VALUES)]))
    (root / "character.txt").write_text("\n".join(CHARACTERS))
    _datasheet(root, cast, jobs)


def _datasheet(root: Path, cast: dict, jobs: list) -> None:
    stats = []
    for split in SPEAKERS:
        mine = [j for j in jobs if j[1] == split]
        _, hours = audio_stats(root / split / f"{j[0]}.wav" for j in mine)
        stats.append((split, len(mine), len({j[0].split('-')[0] for j in mine}), fmt_hours(hours)))
    intents = Counter(j[5] for j in jobs)
    write_datasheet(root / "README.md", "Audio SNIPS-format corpus (SF)", {
        "Contents": table(("split", "utterances", "speakers", "duration"), stats)
        + f"\n\n{len(TEMPLATES)} templates over the 7 SNIPS intents ({', '.join(f'{k} {v}' for k, v in sorted(intents.items()))}); "
        f"{len(VALUES)} slot types, SNIPS's own names.",
        "Speakers": "Our voices under the Polly names SUPERB's lists select (s3prl snips.yaml); the real "
        "Audio SNIPS is Amazon Polly speech, this one espeak-ng / flite.\n\n"
        + table(("name", "split", "voice"), [(n, s, v.name) for n, (s, v) in cast.items()]),
        "How it was made": (
            "Each utterance fills one template with random slot values (VALUES in snips.py: artists, cities, "
            "times, dishes, ...); training voices cycle through the templates, valid/test voices draw them at "
            "random; a sentence never occurs in two splits. Every word is tagged with its slot name or O, the "
            "BOS/EOS-framed IOB format s3prl's character-slot encoder reads (it writes B-slot and E-slot tokens "
            "around each slot value)."
        ),
        "Splits": "Speakers are disjoint across train/valid/test (SUPERB's speaker split); texts too.",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite")),
    })
