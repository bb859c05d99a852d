"""Phonemes -> visemes -> mouth parameters over time, with coarticulation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

MOUTH_PARAMS = ("opening", "width", "roundness", "teeth", "lip_contact")

# eSpeak NG's Kirshenbaum phoneme mnemonics map to ten viseme classes; each class has a target in
# the five mouth parameters above and a dominance (how firmly the mouth reaches it). Silence is a
# class of its own, so pauses close the mouth. Diphthongs get two targets, one per half of their interval.


class Viseme(StrEnum):
    REST = "rest"  # silence: lips together, relaxed
    CLOSED = "closed"  # p b m
    LABIODENTAL = "labiodental"  # f v: lower lip under the upper teeth
    DENTAL = "dental"  # th: tongue between the teeth
    OPEN = "open"  # a, A:
    MID = "mid"  # e, @, 3:
    SPREAD = "spread"  # i:, I
    ROUND = "round"  # u:, oU, O:, w
    SIBILANT = "sibilant"  # s z S Z tS dZ
    CONSONANT = "consonant"  # t d n l k g h r j: weak, shaped by the neighbours


@dataclass(frozen=True)
class Target:
    opening: float  # inner-lip gap, 0 closed .. 1 wide open (jaw drop follows)
    width: float  # 0 narrow (pursed) .. 1 spread
    roundness: float  # lip rounding / protrusion
    teeth: float  # how much of the teeth shows
    lip_contact: float  # lips pressed together
    dominance: float  # weight inside the phoneme's interval
    reach: float  # seconds: decay constant of the dominance outside the interval

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in MOUTH_PARAMS])


TARGETS: dict[Viseme, Target] = {
    Viseme.REST: Target(0.00, 0.45, 0.10, 0.00, 0.70, dominance=3.0, reach=0.05),
    Viseme.CLOSED: Target(0.00, 0.50, 0.10, 0.00, 1.00, dominance=8.0, reach=0.03),
    Viseme.LABIODENTAL: Target(0.12, 0.55, 0.00, 1.00, 0.30, dominance=5.0, reach=0.03),
    Viseme.DENTAL: Target(0.22, 0.55, 0.00, 0.80, 0.00, dominance=2.0, reach=0.04),
    Viseme.OPEN: Target(0.90, 0.62, 0.08, 0.45, 0.00, dominance=1.3, reach=0.06),
    Viseme.MID: Target(0.55, 0.62, 0.08, 0.40, 0.00, dominance=1.0, reach=0.06),
    Viseme.SPREAD: Target(0.30, 0.95, 0.00, 0.75, 0.00, dominance=1.2, reach=0.06),
    Viseme.ROUND: Target(0.38, 0.12, 0.95, 0.10, 0.00, dominance=1.6, reach=0.07),
    Viseme.SIBILANT: Target(0.12, 0.60, 0.30, 1.00, 0.00, dominance=1.5, reach=0.04),
    Viseme.CONSONANT: Target(0.28, 0.55, 0.10, 0.40, 0.00, dominance=0.35, reach=0.05),
}

# Kirshenbaum mnemonics as eSpeak NG's English voices emit them (stress marks stripped).
_SINGLE: dict[str, Viseme] = {}
for _symbols, _viseme in (
    ("p b m", Viseme.CLOSED),
    ("f v", Viseme.LABIODENTAL),
    ("T D", Viseme.DENTAL),
    ("a aa a# A: A V 0", Viseme.OPEN),
    ("E e @ @2 @5 3 3: @L e@ A@", Viseme.MID),
    ("i: i I I# I2 i@ i@3 j", Viseme.SPREAD),
    ("u: U O: O O2 O@ o@ U@ o w", Viseme.ROUND),
    ("s z S Z tS dZ", Viseme.SIBILANT),
    ("t d n l k g N h r r- R x ; t# t2 d# n- l/ z# ?", Viseme.CONSONANT),
):
    for _symbol in _symbols.split():
        _SINGLE[_symbol] = _viseme

# Diphthongs: two targets, one per half of the phoneme.
_DIPHTHONGS: dict[str, tuple[Viseme, Viseme]] = {
    "aI": (Viseme.OPEN, Viseme.SPREAD),
    "aI@": (Viseme.OPEN, Viseme.SPREAD),
    "aI3": (Viseme.OPEN, Viseme.SPREAD),
    "aU": (Viseme.OPEN, Viseme.ROUND),
    "eI": (Viseme.MID, Viseme.SPREAD),
    "OI": (Viseme.ROUND, Viseme.SPREAD),
    "oU": (Viseme.MID, Viseme.ROUND),
}

_VOWEL_START = {
    "a": Viseme.OPEN,
    "A": Viseme.OPEN,
    "V": Viseme.OPEN,
    "e": Viseme.MID,
    "E": Viseme.MID,
    "@": Viseme.MID,
    "3": Viseme.MID,
    "i": Viseme.SPREAD,
    "I": Viseme.SPREAD,
    "o": Viseme.ROUND,
    "O": Viseme.ROUND,
    "u": Viseme.ROUND,
    "U": Viseme.ROUND,
    "0": Viseme.MID,
}


def strip_stress(symbol: str) -> str:
    return symbol.lstrip("',%=")


def visemes_of(symbol: str) -> tuple[Viseme, ...]:
    """The viseme(s) of one eSpeak phoneme symbol; pauses ("_", "_:") are REST."""
    core = strip_stress(symbol)
    if not core or core.startswith("_"):
        return (Viseme.REST,)
    if core in _DIPHTHONGS:
        return _DIPHTHONGS[core]
    if core in _SINGLE:
        return (_SINGLE[core],)
    if core[0] in _VOWEL_START:  # unlisted vowel variants share their first letter's shape
        return (_VOWEL_START[core[0]],)
    return (Viseme.CONSONANT,)


@dataclass(frozen=True)
class Segment:
    """One viseme target held over [start, end) seconds."""

    viseme: Viseme
    start: float
    end: float


def segments(phonemes: Sequence[tuple[str, float, float]], duration: float) -> list[Segment]:
    """Viseme segments covering [0, duration): phonemes (symbol, start, end) plus REST in the gaps."""
    result: list[Segment] = []
    cursor = 0.0
    for symbol, start, end in sorted(phonemes, key=lambda p: p[1]):
        start, end = max(start, cursor), min(end, duration)
        if end <= start:
            continue
        if start > cursor + 1e-6:
            result.append(Segment(Viseme.REST, cursor, start))
        parts = visemes_of(symbol)
        edges = np.linspace(start, end, len(parts) + 1)
        result.extend(
            Segment(v, float(a), float(b)) for v, a, b in zip(parts, edges[:-1], edges[1:], strict=True)
        )
        cursor = end
    if cursor < duration - 1e-6:
        result.append(Segment(Viseme.REST, cursor, duration))
    return result


def mouth_track(segs: Sequence[Segment], times: np.ndarray, articulation: float = 1.0) -> np.ndarray:
    """Mouth parameters at `times` (seconds): (T, 5) in MOUTH_PARAMS order, values in [0, 1].

    The track at any time is the dominance-weighted mean of all targets, where a phoneme's dominance
    is full inside its own interval and decays exponentially outside it: the coarticulation model of
    Cohen and Massaro (1993), simplified. `articulation` scales how far a speaker opens the mouth (a
    per-speaker trait).
    """
    times = np.asarray(times, dtype=np.float64)
    numerator = np.zeros((len(times), len(MOUTH_PARAMS)))
    denominator = np.full(len(times), 1e-9)
    for seg in segs:
        target = TARGETS[seg.viseme]
        outside = np.maximum(seg.start - times, 0.0) + np.maximum(times - seg.end, 0.0)
        weight = target.dominance * np.exp(-outside / target.reach)
        numerator += weight[:, None] * target.vector()[None, :]
        denominator += weight
    track = numerator / denominator[:, None]
    track[:, 0] = np.clip(track[:, 0] * articulation, 0.0, 1.0)
    return np.clip(track, 0.0, 1.0)
