"""``kdlab transcribe MODEL AUDIO...``: phonemes of audio files with an exported CTC model
(``models/<stage>.pt`` of a phoneme-recognition run: a wav2vec2 teacher or a Conformer student).

Audio of any rate and format soundfile reads is resampled to 16 kHz; a Conformer gets the same
log-mel features as in training (80 bands, 25 ms / 10 ms, normalised per utterance). Decoding is
greedy, or beam search with ``--beam N`` (flashlight-text).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdlab.engine.errors import KdlabError


def load_ctc_model(path: str | Path):
    from kdlab.engine.checkpoint import load_model_file
    from kdlab.engine.recipe import CONVERTER
    from kdlab.engine.types import DataBundle
    from kdlab.engine.types import ModelSpec
    from kdlab.plugins.speech_models import ConformerConfig, SpeechModels, Wav2Vec2Config, Wav2Vec2CTC, wav2vec2_from_scratch

    data = load_model_file(path)
    classes = tuple(data.get("classes") or ())
    if data["arch"] not in ("wav2vec2_ctc", "conformer_ctc"):
        raise KdlabError(f"{path}: a '{data['arch']}' model; transcribe needs wav2vec2_ctc or conformer_ctc")
    if len(classes) != data["num_classes"]:
        raise KdlabError(f"{path}: the file does not name its phonemes (exported before kdlab stored them)")
    cls = Wav2Vec2Config if data["arch"] == "wav2vec2_ctc" else ConformerConfig
    config = CONVERTER.structure(data["config"], cls)
    if data["arch"] == "wav2vec2_ctc":
        # the weights below replace everything, a Hugging Face source directory is not needed
        if config.hf_dir:
            raise KdlabError(f"{path}: a Hugging Face teacher; transcribe with it through its own tools, or with a student")
        model = Wav2Vec2CTC(wav2vec2_from_scratch(config, data["num_classes"]))
    else:
        bundle = DataBundle(train=None, val=None, test=None, num_classes=data["num_classes"],
                            input_shape=tuple(data["input_shape"]), classes=classes)
        model = SpeechModels().kdlab_build_model(spec=ModelSpec(arch=data["arch"], config=config), data=bundle)
    model.load_state_dict(data["state_dict"])
    return model.train(False), classes


def transcribe(model, classes: tuple[str, ...], files: list[str], beam: int = 0) -> list[str]:
    from kdlab.plugins.per import beam_decode, greedy_decode
    from kdlab.plugins.phonemes import load_wave
    from kdlab.plugins.speech_models import ConformerCTC
    from kdlab.speech.features import LogMel

    features = LogMel(16000, getattr(model, "n_mels", 80))
    out = []
    for f in files:
        if not Path(f).is_file():
            raise KdlabError(f"{f}: no such audio file")
        try:
            wave = torch.from_numpy(load_wave(Path(f), 16000))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise KdlabError(f"{f}: unreadable or empty audio ({exc})") from exc
        with torch.inference_mode():
            if isinstance(model, ConformerCTC):
                if len(wave) < features.n_fft:
                    raise KdlabError(f"{f}: shorter than one 25 ms frame")
                mel = features(wave).T
                mel = (mel - mel.mean(0)) / (mel.std(0) + 1e-5)
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
