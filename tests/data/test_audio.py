"""The audio reader: resampling, clear errors, and a warning for a file cut off mid-way."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from kdlab import KdlabError
from kdlab.data.audio import read_audio


def _clip(path, seconds=1.0, rate=16000):
    soundfile.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32),
                    rate, subtype="PCM_16")
    return path


def test_a_truncated_wav_is_read_with_a_warning_or_refused(tmp_path, caplog):
    path = _clip(tmp_path / "a.wav")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="kdlab"):
        wave = read_audio(path, 16000)
    assert 7900 < len(wave) < 8100
    assert "a.wav: truncated: the header declares 32000 bytes of audio, the file holds" in caplog.text
    with pytest.raises(KdlabError, match="a.wav: truncated"):
        read_audio(path, 16000, truncated="error")


def test_a_whole_file_reads_without_a_warning(tmp_path, caplog):
    path = _clip(tmp_path / "a.wav")
    with caplog.at_level("WARNING", logger="kdlab"):
        assert len(read_audio(path, 16000)) == 16000
    assert "truncated" not in caplog.text


def test_other_rates_are_resampled_or_refused(tmp_path):
    path = _clip(tmp_path / "b.wav", rate=22050)
    assert abs(len(read_audio(path, 16000, resample_to_rate=True)) - 16000) <= 1
    with pytest.raises(KdlabError, match="sample rate 22050 Hz, expected 16000 Hz"):
        read_audio(path, 16000)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_nan_or_infinite_sample_is_refused_naming_the_file(tmp_path, value):
    wave = np.zeros(16000, np.float32)
    wave[8000] = value
    soundfile.write(tmp_path / "f.wav", wave, 16000, subtype="FLOAT")
    assert not np.isfinite(soundfile.read(tmp_path / "f.wav")[0]).all()  # the format keeps it
    with pytest.raises(KdlabError, match=r"f.wav: 1 samples are NaN or infinite \(the first at 0.500 s\)"):
        read_audio(tmp_path / "f.wav", 16000)
