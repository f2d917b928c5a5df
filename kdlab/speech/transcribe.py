"""``kdlab transcribe MODEL AUDIO...``: phonemes of audio files with an exported CTC model
(``models/<stage>.pt`` of a phoneme-recognition run: a wav2vec2 teacher or a Conformer student).

Audio of any rate and format soundfile reads is resampled to 16 kHz; a Conformer gets the same
log-mel features as in training (80 bands, 25 ms / 10 ms, normalised per utterance). Decoding is
greedy, or beam search with ``--beam N`` (flashlight-text).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from kdlab.engine.errors import KdlabError


def load_ctc_model(path: str | Path):
    from kdlab.engine.checkpoint import load_model_file, load_weights
    from kdlab.engine.recipe import structure_stored
    from kdlab.models import conformer_ctc, wav2vec2_ctc

    data = load_model_file(path)
    classes = tuple(data.get("classes") or ())
    modules = {"wav2vec2_ctc": (wav2vec2_ctc, wav2vec2_ctc.Wav2Vec2Config),
               "conformer_ctc": (conformer_ctc, conformer_ctc.ConformerConfig)}
    if data["arch"] not in modules:
        raise KdlabError(f"{path}: a '{data['arch']}' model; transcribe needs wav2vec2_ctc or conformer_ctc")
    if len(classes) != data["num_classes"]:
        raise KdlabError(f"{path}: the file does not name its phonemes (exported before kdlab stored them)")
    module, cls = modules[data["arch"]]
    config = structure_stored(data["config"], cls, path)
    # the weights below replace everything, a Hugging Face source directory is not needed
    if getattr(config, "hf_dir", None):
        raise KdlabError(f"{path}: a Hugging Face teacher; transcribe with it through its own tools, or with a student")
    shape = _Shape(num_classes=data["num_classes"], input_shape=tuple(data["input_shape"]), classes=classes)
    model = module.build(config, shape)
    load_weights(model, data["state_dict"], str(path))
    return model.train(False), classes


@attrs.frozen(kw_only=True)
class _Shape:
    """What a model builder reads of the data (``DataBundle`` without loaders)."""

    num_classes: int
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]


def transcribe(model, classes: tuple[str, ...], files: list[str], beam: int = 0) -> list[str]:
    from kdlab.data.audio import read_audio
    from kdlab.data.features import LogMel, utterance_features
    from kdlab.models.conformer_ctc import ConformerCTC
    from kdlab.speech.ctc_decoding import beam_decode, greedy_decode, require_beam_search

    if beam:
        require_beam_search("transcribe --beam")
    features = LogMel(16000, getattr(model, "n_mels", 80))
    out = []
    for f in files:
        if not Path(f).is_file():
            raise KdlabError(f"{f}: no such audio file")
        wave = torch.from_numpy(read_audio(Path(f), 16000, resample_to_rate=True))  # its errors name f
        with torch.inference_mode():
            if isinstance(model, ConformerCTC):
                if len(wave) < features.n_fft:
                    raise KdlabError(f"{f}: shorter than one 25 ms frame")
                mel = utterance_features(wave, features)  # the same features the model trained on
                logits, lengths = model(mel.unsqueeze(0), torch.tensor([mel.shape[0]]))
            else:
                logits, lengths = model(wave.unsqueeze(0), torch.tensor([len(wave)]))
        ids = beam_decode(logits, lengths, beam)[0] if beam else greedy_decode(logits, lengths)[0]
        out.append(" ".join(classes[i] for i in ids))
    return out


def cli(args) -> int:
    model, classes = load_ctc_model(args.model)
    for f, phones in zip(args.audio, transcribe(model, classes, args.audio, args.beam)):
        print(f"{f}\t{phones}")
    return 0
