"""espeak-ng through ctypes: speech synthesis and IPA phonemes from one engine.

The library and its voice data come from the ``espeakng-loader`` wheel (no system package, no
root). Written by hand because no maintained Python package exposes both espeak_Synth (audio)
and espeak_TextToPhonemes (IPA with a phoneme separator) without a system install; the binding
is the few C calls below. espeak-ng keeps global state, so one :class:`Espeak` per process.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from kdlab.engine.errors import KdlabError, missing_extra

AUDIO_OUTPUT_SYNCHRONOUS = 2
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
PHONEMES_IPA = 0x02
SEPARATOR = "_"

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_INSTANCE = None
_LOCK = threading.Lock()


def engine() -> Espeak:
    """The process-wide engine (espeak-ng cannot be initialised twice)."""
    global _INSTANCE
    with _LOCK:
        if _INSTANCE is None:
            _INSTANCE = Espeak()
        return _INSTANCE


class Espeak:
    def __init__(self):
        espeakng_loader = _loader()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise KdlabError(f"espeak-ng failed to initialise with data at {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept referenced: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self._voice = None

    def _collect(self, wav, n, _events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise KdlabError(f"espeak-ng has no voice '{voice}'")
            self._voice = voice

    def synth(self, text: str, voice: str, *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
              seed: int = 0) -> np.ndarray:
        """Float32 audio in [-1, 1] at :attr:`sample_rate` (22,050 Hz)."""
        self.set_voice(voice)
        self.lib.espeak_SetParameter(PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(PARAM_RANGE, int(pitch_range), 0)
        raw = text.encode("utf-8") + b"\0"
        # breathy and whispering voices add noise from espeak-ng's random generator, which is
        # seeded from the clock unless set: seeded per call, their samples are reproducible
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self._chunks = []
        self.lib.espeak_Synth(raw, len(raw), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio.astype(np.float32) / 32768.0

    def phonemes(self, text: str, voice: str) -> list[str]:
        """IPA phonemes of ``text``, stress and syllable marks removed, word boundaries dropped."""
        self.set_voice(voice)
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        mode = PHONEMES_IPA | (ord(SEPARATOR) << 8)
        out: list[str] = []
        while ptr.contents.value:
            chunk = self.lib.espeak_TextToPhonemes(ptr, CHARS_UTF8, mode)
            if chunk is None:
                break
            out.extend(split_ipa(chunk.decode("utf-8")))
        return out


def voice_variants(language: str) -> list[str]:
    """``language`` and every espeak-ng voice variant of it ("en", "en+f1", "en+m3", ...):
    speaker variety for the corpus generators."""
    espeakng_loader = _loader()
    variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return [language] + [f"{language}+{p.name}" for p in sorted(variants.iterdir()) if p.is_file()]


def word_lists():
    """wordfreq's ``top_n_list`` (the corpora's vocabularies), or an error naming the extra."""
    try:
        from wordfreq import top_n_list
    except ImportError as exc:
        raise missing_extra("speech", "wordfreq", "the corpus generators (kdlab data)") from exc
    return top_n_list


def _loader():
    """The espeakng-loader package (ships libespeak-ng and its data), or an error naming the extra."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise missing_extra("speech", "espeakng-loader", "speech synthesis (kdlab data)") from exc
    return espeakng_loader


STRESS = str.maketrans("", "", "ˈˌ.‿")


def split_ipa(ipa: str) -> list[str]:
    """'d_ˈu_m_a b_ɨ' -> ['d', 'u', 'm', 'a', 'b', 'ɨ']: separator- and space-split, stress removed."""
    return [p for word in ipa.split() for p in (s.translate(STRESS) for s in word.split(SEPARATOR)) if p]
