"""The plugins that register kdlab's own model architectures and data sets.

They use the same hooks a third-party package uses (``kdlab_register_models``,
``kdlab_register_datasets``) and are declared as entry points in ``pyproject.toml``; the models
(:mod:`kdlab.models`) and data sets (:mod:`kdlab.data`) themselves know nothing of plugins.
Adding an architecture or a data set to kdlab is one line here after writing its module.
"""

from __future__ import annotations

from kdlab.data import phonemes, speech_commands, text, vision
from kdlab.engine.hookspecs import hookimpl
from kdlab.models import cifar, cnn, conformer_ctc, conv_lm, crnn, resnet, transformer_lm, vit, wav2vec2_ctc


class Models:
    """Image classifiers: the compact CNN family, torchvision ResNets, a small ViT."""

    default_enabled = True

    @hookimpl
    def kdlab_register_models(self, models):
        models.add("cnn", cnn.CompactCNNConfig, cnn.build)
        models.add("resnet18", resnet.ResNetConfig, resnet.build_resnet18)
        models.add("resnet50", resnet.ResNetConfig, resnet.build_resnet50)
        models.add("vit", vit.ViTConfig, vit.build)
        models.add("cifar_resnet", cifar.CifarResNetConfig, cifar.build_cifar_resnet)
        models.add("wrn", cifar.WRNConfig, cifar.build_wrn)
        models.add("vgg_bn", cifar.VGGConfig, cifar.build_vgg)
        for name in cifar.TABLE:  # resnet8x4, wrn_40_2, vgg13, ... as the distillation tables name them
            models.add(name, cifar.TableModelConfig, cifar.table_builder(name))


class CRNNModels:
    """Seed 001's keyword-spotting CRNN."""

    default_enabled = True

    @hookimpl
    def kdlab_register_models(self, models):
        models.add("crnn", crnn.CRNNConfig, crnn.build)


class SpeechModels:
    """Seed 000's CTC models: the wav2vec2 teacher and the Conformer student."""

    default_enabled = True

    @hookimpl
    def kdlab_register_models(self, models):
        models.add("wav2vec2_ctc", wav2vec2_ctc.Wav2Vec2Config, wav2vec2_ctc.build)
        models.add("conformer_ctc", conformer_ctc.ConformerConfig, conformer_ctc.build)


class Datasets:
    """Image data: bundled digits, and MNIST / CIFAR from local files."""

    default_enabled = True

    @hookimpl
    def kdlab_register_datasets(self, datasets):
        datasets.add("digits", vision.DigitsConfig, vision.build_digits)
        for name in ("mnist", "cifar10", "cifar100"):
            datasets.add(name, vision.TorchvisionConfig, vision.builder(name))


class SpeechCommands:
    """Keyword spotting in the Speech Commands layout."""

    default_enabled = True

    @hookimpl
    def kdlab_register_datasets(self, datasets):
        datasets.add("speech_commands", speech_commands.SpeechCommandsConfig, speech_commands.build)


class Phonemes:
    """Phoneme recognition from a manifest."""

    default_enabled = True

    @hookimpl
    def kdlab_register_datasets(self, datasets):
        datasets.add("phonemes", phonemes.PhonemesConfig, phonemes.build)


class LanguageModels:
    """Seed 003's language models: a transformer (Hugging Face) and a gated convolutional LM."""

    default_enabled = True

    @hookimpl
    def kdlab_register_models(self, models):
        models.add("transformer_lm", transformer_lm.TransformerLMConfig, transformer_lm.build)
        models.add("conv_lm", conv_lm.ConvLMConfig, conv_lm.build)


class Text:
    """Dialogues and plain text for language models. The run keeps the tokeniser it trained or
    loaded, beside the exported models (``RUN_DIR/tokenizer.json``)."""

    default_enabled = True

    @hookimpl
    def kdlab_register_datasets(self, datasets):
        datasets.add("text", text.TextConfig, text.build)

    @hookimpl
    def kdlab_stage_start(self, stage):
        data = stage.data.extra.get("text")
        if data is not None and stage.is_main:
            (stage.run_dir / "tokenizer.json").write_text(data.tokenizer.to_str(), encoding="utf-8")
