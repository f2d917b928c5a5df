import subprocess
import sys
import textwrap

import torch

from kdlab.models.crnn import CRNN, CRNNConfig
from kdlab.data.features import LogMel
from kdlab.speech.streaming import StreamingKWS, offline_window_probs, stream, window_steps


def _model(mode="carry"):
    torch.manual_seed(0)
    crnn = CRNN(CRNNConfig(hidden=16, attention=8), 40, 2).train(False)
    features = LogMel()
    return crnn, features, StreamingKWS(crnn, features, window_steps(crnn, features, 1.0), mode=mode).train(False)


def test_window_mode_equals_the_offline_model_on_the_last_second():
    crnn, features, detector = _model("window")
    audio = torch.randn(16000 * 3) * 0.1
    chunk = 1600
    probs = stream(detector, audio, chunk)
    window = detector.window  # conv steps in 1 s
    with torch.no_grad():
        for k in range(3, 31):
            steps = 1 + (features.frames(k * chunk) - 20) // 8  # conv steps available after chunk k
            first = max(0, steps - window)  # the window's first conv step, its first sample:
            start = first * 8 * 160
            end = start + ((min(steps, window) - 1) * 8 + 20 - 1) * 160 + 400
            offline = torch.softmax(crnn(features(audio[start:end]).unsqueeze(0)), 1)[0, 1]
            assert torch.allclose(probs[k - 1], offline, atol=1e-5), k


def test_carry_mode_matches_offline_gru_with_sliding_attention():
    crnn, features, detector = _model("carry")
    audio = torch.randn(16000 * 3) * 0.1
    chunk = 1600
    probs = stream(detector, audio, chunk)
    assert len(probs) == 30
    # a stream shorter than the window: the offline CRNN on the audio received so far
    with torch.no_grad():
        for k in (3, 6, 10):
            offline = torch.softmax(crnn(features(audio[: k * chunk]).unsqueeze(0)), 1)[0, 1]
            assert torch.allclose(probs[k - 1], offline, atol=1e-5), k
    # later: the offline GRU over the whole signal with the attention on the last `window` steps
    window = offline_window_probs(crnn, features, audio, detector.window)
    for k in range(3, 31):
        steps = 1 + (features.frames(k * chunk) - 20) // 8
        assert torch.allclose(probs[k - 1], window[steps - 1], atol=1e-5), k
    # the first chunks cover less than one conv kernel: no output yet
    assert probs[0] == 0


def test_chunk_size_does_not_change_the_probabilities():
    for mode in ("window", "carry"):
        _, _, detector = _model(mode)
        audio = torch.randn(16000 * 2) * 0.1
        a = stream(detector, audio, 1600)  # every 100 ms
        b = stream(detector, audio, 800)  # every 50 ms: every second value lines up
        assert torch.allclose(a, b[1::2], atol=1e-5), mode


def test_torchscript_export_runs_without_kdlab(tmp_path):
    _, _, detector = _model("window")
    path = tmp_path / "stream.pt"
    torch.jit.script(detector).save(str(path))
    audio = torch.randn(16000) * 0.1
    torch.save(audio, tmp_path / "audio.pt")
    expected = stream(detector, audio, 1600)
    code = textwrap.dedent(f"""
        import sys, torch
        sys.modules["kdlab"] = None  # importing kdlab would fail: the file must not need it
        m = torch.jit.load({str(path)!r})
        audio = torch.load({str(tmp_path / 'audio.pt')!r})
        state = m.initial_state()
        out = []
        for i in range(0, len(audio), 1600):
            p, state = m(audio[i:i + 1600], state)
            out.append(float(p))
        print(" ".join(f"{{p:.6f}}" for p in out))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = torch.tensor([float(x) for x in result.stdout.split()])
    assert torch.allclose(got, expected, atol=1e-5)
