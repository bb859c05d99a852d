"""Speech with exact phoneme timing from eSpeak NG, loaded from the `espeakng-loader` wheel via ctypes."""

from __future__ import annotations

import ctypes
import os
import pickle
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synclip.errors import UserError

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class SpeechError(UserError):
    """eSpeak NG refused a voice, a parameter or a text."""


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice and its prosody settings."""

    name: str = "en-us"  # eSpeak voice name, optionally with a variant: "en-us+f3"
    rate: int = 175  # words per minute (80..450)
    pitch: int = 50  # 0..100
    pitch_range: int = 50  # 0..100, intonation
    volume: int = 100  # 0..200
    word_gap: int = 0  # extra pause between words, in units of 10 ms


@dataclass(frozen=True)
class Phoneme:
    """One phoneme in eSpeak's Kirshenbaum mnemonic (stress marks included, e.g. "'oU")."""

    symbol: str
    start: float  # seconds from the start of the utterance
    end: float


@dataclass(frozen=True)
class Word:
    text: str
    start: float


@dataclass(frozen=True)
class Utterance:
    samples: np.ndarray  # (N,) float32 in [-1, 1]
    sample_rate: int
    phonemes: tuple[Phoneme, ...]
    words: tuple[Word, ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class _Engine:
    """An eSpeak NG instance; only ever created in a forked child (see `synthesize_batch`).

    eSpeak NG reports PHONEME events (type 7) with the sample at which each phoneme starts, through
    the same synth callback that delivers the waveform.
    """

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, _INITIALIZE_PHONEME_EVENTS
        )
        if rate <= 0:
            raise SpeechError(f"eSpeak NG failed to initialise (returned {rate})")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: the C side holds a pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, count, events) -> int:
        if count > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.type, event.sample, event.audio_position, _symbol(event)))
            elif event.type == _EVENT_WORD:
                self._events.append((event.type, event.sample, event.text_position, str(event.length)))
            index += 1
        return 0

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        encoded = text.encode("utf-8") + b"\0"
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise SpeechError(f"eSpeak NG has no voice {voice.name!r}")
        for parameter, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_VOLUME, voice.volume),
            (_PARAM_WORDGAP, voice.word_gap),
        ):
            if self.lib.espeak_SetParameter(parameter, value, 0) != 0:
                raise SpeechError(f"eSpeak NG refused parameter {parameter} = {value}")
        self._chunks, self._events = [], []
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechError(f"eSpeak NG could not synthesise {text!r} (status {status})")
        chunks, events = self._chunks, self._events
        samples = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768.0
        return _utterance(samples, self.sample_rate, events, text)


def _symbol(event: _Event) -> str:
    return event.id.string.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _utterance(
    samples: np.ndarray, rate: int, events: list[tuple[int, int, int, str]], text: str
) -> Utterance:
    duration = len(samples) / rate
    starts = []
    words = []
    for kind, sample, position, payload in events:
        if kind == _EVENT_PHONEME:
            starts.append((sample / rate, payload))
        else:  # a word event: text_position is 1-based in characters, payload is its length
            begin = position - 1
            words.append(Word(text=text[begin : begin + int(payload)], start=sample / rate))
    phonemes = []
    for index, (start, symbol) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else duration
        if symbol and end > start:
            phonemes.append(Phoneme(symbol=symbol, start=start, end=min(end, duration)))
    return Utterance(samples=samples, sample_rate=rate, phonemes=tuple(phonemes), words=tuple(words))


def synthesize_batch(texts: list[str], voice: Voice | None = None) -> list[Utterance]:
    """Speak each text in turn with eSpeak NG, in a fresh child process; deterministic.

    Returns one Utterance per text: the waveform at eSpeak's native rate (22 050 Hz) and the
    phoneme and word timings.

    The library keeps global state that changes what it synthesises next (the same text twice in one
    process gives two different waveforms, and `espeak_Terminate` + `espeak_Initialize` do not reset
    it), so every call runs in a forked child of a process that never touched eSpeak itself: the same
    texts and voice always give the same samples, whatever ran before.
    """
    voice = voice or Voice()
    for text in texts:
        if not text.strip():
            raise SpeechError("nothing to say: a text is empty")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: synthesise, send the pickled result, never return into the caller's code
        code = 1
        try:
            os.close(read_end)
            try:
                engine = _Engine()
                result: tuple[str, object] = ("ok", [engine.synthesize(text, voice) for text in texts])
            except SpeechError as error:
                result = ("error", str(error))
            with os.fdopen(write_end, "wb") as sink:
                pickle.dump(result, sink)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    if not data or os.waitstatus_to_exitcode(status) != 0:
        raise SpeechError(f"the eSpeak NG process failed (exit status {os.waitstatus_to_exitcode(status)})")
    kind, payload = pickle.loads(data)
    if kind == "error":
        raise SpeechError(payload)
    return payload


def synthesize(text: str, voice: Voice | None = None) -> Utterance:
    """Speak one text; see `synthesize_batch`."""
    return synthesize_batch([text], voice)[0]
