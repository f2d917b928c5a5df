"""Streaming keyword detection with a trained CRNN: audio arrives in chunks (100 ms by default),
and each chunk yields the keyword probability.

State kept between chunks, and nothing more: the audio samples not yet covered by a full STFT
window and the log-mel frames not yet covered by a full conv kernel (the receptive field), then,
by ``mode``:

* ``"window"`` (the default): the conv outputs of the last ``window`` steps (1 s). Each chunk
  runs the GRU from a zero state over them, so each probability is exactly the offline CRNN's on
  the last second of audio (the matching window), the input the model was trained on; log-mel
  and convolutions are computed once per sample, not once per window.
* ``"carry"``: the GRU hidden state is carried from chunk to chunk and the attention pools the
  last ``window`` GRU outputs: the cheapest (one GRU step per conv step), equal to
  :func:`offline_window_probs` (one GRU over the whole signal), but the GRU then runs far longer
  than the 1-second clips it was trained on, and its outputs drift (BENCHMARKS.md shows both).

Because the log-mel frames are computed without centre padding, the streamed frames and conv
steps are exactly those of the whole signal. While the stream is shorter than the window, both
modes equal the offline CRNN on the audio received so far.

:class:`StreamingKWS` is TorchScript-compatible: ``kdlab kws-stream --export FILE`` saves it, and
``torch.jit.load(FILE)`` runs it without kdlab installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from kdlab.engine.errors import KdlabError, missing_extra
from kdlab.data.features import LOG_FLOOR, LogMel
from kdlab.models.crnn import CRNN, CRNNConfig


class StreamingKWS(nn.Module):
    def __init__(self, crnn: CRNN, features: LogMel, window_steps: int, keyword: int = 1, mode: str = "window"):
        super().__init__()
        self.mel = features.mel
        self.n_fft, self.hop = features.n_fft, features.hop
        self.n_mels = int(features.mel.n_mels)
        self.conv, self.gru, self.attention, self.head = crnn.conv, crnn.gru, crnn.attention, crnn.head
        self.kernel_t, self.stride_t = crnn.config.kernel[1], crnn.config.stride[1]
        self.layers, self.hidden = crnn.config.gru_layers, crnn.config.hidden
        self.window, self.keyword = window_steps, keyword
        self.log_floor = LOG_FLOOR
        if mode not in ("window", "carry"):
            raise KdlabError(f"streaming mode must be 'window' or 'carry', got '{mode}'")
        self.carry = mode == "carry"
        self.conv_dim = crnn.gru.input_size

    @torch.jit.export
    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pending audio, pending log-mel frames, GRU state, last GRU outputs ("carry") or last
        conv outputs ("window"))."""
        return (torch.zeros(0), torch.zeros(self.n_mels, 0), torch.zeros(self.layers, 1, self.hidden),
                torch.zeros(0, self.hidden if self.carry else self.conv_dim))

    def forward(self, chunk: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        audio_buf, mel_buf, h, outputs = state
        audio = torch.cat([audio_buf, chunk])
        frames = 0 if audio.shape[0] < self.n_fft else 1 + (audio.shape[0] - self.n_fft) // self.hop
        if frames > 0:
            new = torch.log(self.mel(audio[: (frames - 1) * self.hop + self.n_fft]) + self.log_floor)
            mel_buf = torch.cat([mel_buf, new], dim=1)
            audio = audio[frames * self.hop :]
        steps = 0 if mel_buf.shape[1] < self.kernel_t else 1 + (mel_buf.shape[1] - self.kernel_t) // self.stride_t
        if steps > 0:
            x = self.conv(mel_buf[:, : (steps - 1) * self.stride_t + self.kernel_t].unsqueeze(0).unsqueeze(0))
            x = x.flatten(1, 2).transpose(1, 2)
            if self.carry:
                out, h = self.gru(x, h)
                outputs = torch.cat([outputs, out[0]])[-self.window :]
            else:
                outputs = torch.cat([outputs, x[0]])[-self.window :]
            mel_buf = mel_buf[:, steps * self.stride_t :]
        if outputs.shape[0] == 0:
            return torch.zeros(()), (audio, mel_buf, h, outputs)
        if self.carry:
            pooled = self.attention(outputs.unsqueeze(0))
        else:
            out, _ = self.gru(outputs.unsqueeze(0))
            pooled = self.attention(out)
        prob = torch.softmax(self.head(pooled), dim=1)[0, self.keyword]
        return prob, (audio, mel_buf, h, outputs)


def window_steps(crnn: CRNN, features: LogMel, seconds: float, sample_rate: int = 16000) -> int:
    frames = features.frames(int(round(seconds * sample_rate)))
    k, s = crnn.config.kernel[1], crnn.config.stride[1]
    if frames < k:
        raise KdlabError(f"--window-s {seconds}: shorter than the model's receptive field ({k} frames)")
    return 1 + (frames - k) // s


def offline_window_probs(crnn: CRNN, features: LogMel, audio: torch.Tensor, window: int) -> torch.Tensor:
    """Keyword probability after each GRU step, pooling the last ``window`` outputs of a GRU run
    over the whole signal: the offline computation the streaming detector reproduces."""
    with torch.no_grad():
        out, _ = crnn.gru(crnn.features(features(audio).unsqueeze(0)))
        probs = [torch.softmax(crnn.head(crnn.attention(out[:, max(0, t + 1 - window) : t + 1])), 1)[0, 1]
                 for t in range(out.shape[1])]
    return torch.stack(probs)


def load_crnn(path: str | Path) -> CRNN:
    from kdlab.engine.checkpoint import load_model_file, load_weights
    from kdlab.engine.recipe import structure_stored

    data = load_model_file(path)
    if data["arch"] != "crnn":
        raise KdlabError(f"{path}: a '{data['arch']}' model; kws-stream needs a crnn")
    model = CRNN(structure_stored(data["config"], CRNNConfig, path), data["input_shape"][0], data["num_classes"])
    load_weights(model, {k: v.float() for k, v in data["state_dict"].items()}, str(path))
    return model.train(False)


def stream(detector: nn.Module, audio: torch.Tensor, chunk: int) -> torch.Tensor:
    state = detector.initial_state()
    probs = []
    with torch.inference_mode():
        for start in range(0, len(audio), chunk):
            prob, state = detector(audio[start : start + chunk], state)
            probs.append(float(prob))
    return torch.tensor(probs)


def cli(args) -> int:
    from kdlab.data.audio import read_audio

    crnn = load_crnn(args.model)
    features = LogMel(16000, crnn.n_mels)
    detector = StreamingKWS(crnn, features, window_steps(crnn, features, args.window_s), mode=args.mode).train(False)
    audio = torch.from_numpy(read_audio(args.audio, 16000))
    chunk = int(16000 * args.chunk_ms / 1000)
    if chunk < 1:
        raise KdlabError("--chunk-ms must be at least 1")
    if args.export:
        torch.jit.script(detector).save(args.export)
        print(f"streaming detector saved as TorchScript: {args.export}", file=sys.stderr)
    probs = stream(detector, audio, chunk)
    times = (torch.arange(len(probs)) + 1) * chunk / 16000
    print("time_s\tprob")
    for t, p in zip(times.tolist(), probs.tolist()):
        print(f"{t:.2f}\t{p:.4f}{'  <- keyword' if p >= args.threshold else ''}")
    hits = times[probs >= args.threshold]
    print(f"detections (p >= {args.threshold}): " + (", ".join(f"{t:.1f} s" for t in hits.tolist()) or "none"),
          file=sys.stderr)
    png = Path(args.plot) if args.plot else Path(args.audio).with_suffix(".kws.png")
    if args.plot or has_matplotlib():  # the default plot is skipped without the plots extra
        _plot(times, probs, args.threshold, png)
        print(f"plot: {png}", file=sys.stderr)
    else:
        print("plot: skipped (pip install 'kdlab[plots]' to draw one)", file=sys.stderr)
    return 0


def has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _plot(times: torch.Tensor, probs: torch.Tensor, threshold: float, path: Path) -> None:
    if not has_matplotlib():
        raise missing_extra("plots", "matplotlib", "kws-stream --plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.plot(times.numpy(), probs.numpy(), lw=1.2)
    ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="time (s)", ylabel="keyword probability", ylim=(-0.02, 1.02))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
