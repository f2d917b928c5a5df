"""Data sets and loaders.

Every data set is a config class plus a ``build(config, seed) -> DataBundle`` function, registered
under its ``[data] dataset`` name in ``kdlab/builtins.py``. Loaders follow the ``Loader`` protocol
of :mod:`kdlab.engine.types` (iterable over ``Batch``, sized, ``set_epoch``, ``shard``); the
shared bookkeeping (epoch, this rank's share of each global batch, the per-epoch shuffle seed)
is in :mod:`.loader`.

=====================  ==========================  =======================================
dataset                module                      what
=====================  ==========================  =======================================
``digits``             :mod:`.vision`              scikit-learn's 8x8 digits (bundled)
``mnist``/``cifar*``   :mod:`.vision`              torchvision's readers, local files
``speech_commands``    :mod:`.speech_commands`     keyword spotting (seed 001)
``phonemes``           :mod:`.phonemes`            CTC phoneme recognition (seed 000)
=====================  ==========================  =======================================

Speech building blocks shared by training and inference (``kdlab transcribe``, ``kws-stream``):
:mod:`.audio` (the one audio reader), :mod:`.features` (log-mel, per-utterance normalisation,
SpecAugment), :mod:`.manifest` (the phoneme corpus format).
"""
