import numpy as np
import pytest

from kdlab.engine.errors import KdlabError
from kdlab.speech.espeak import engine, split_ipa


def test_split_ipa_removes_stress_and_separators():
    assert split_ipa("d_ˈu_m_a b_ɨ") == ["d", "u", "m", "a", "b", "ɨ"]
    assert split_ipa("ˌo_t‿_ˈe") == ["o", "t", "e"]


def test_russian_phonemes_and_audio():
    eng = engine()
    phones = eng.phonemes("дома", "ru")
    assert phones[0] == "d" and "m" in phones and not any("ˈ" in p for p in phones)
    audio = eng.synth("дома", "ru", rate=170, pitch=50)
    assert eng.sample_rate == 22050
    assert audio.dtype == np.float32 and 0.2 * 22050 < len(audio) < 2 * 22050
    assert 0.05 < np.abs(audio).max() <= 1.0
    # rate changes the duration
    fast = eng.synth("дома", "ru", rate=350, pitch=50)
    assert len(fast) < 0.8 * len(audio)


def test_unknown_voice_is_an_error():
    with pytest.raises(KdlabError, match="no voice 'xx-nonexistent'"):
        engine().synth("a", "xx-nonexistent")
