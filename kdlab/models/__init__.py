"""Model architectures: plain ``nn.Module``s and the frozen attrs classes of their recipe tables.

Nothing here knows about pluggy, plugins or the training loop: every model is usable on its own.
Each module defines its config class and a ``build(config, data)`` function, where ``data`` is
anything with ``num_classes``, ``input_shape`` (one sample, no batch dimension) and ``classes``
(a :class:`kdlab.DataBundle`). ``kdlab/builtins.py`` registers them under their ``arch`` names.

==================  ========================  ==========================================
arch                module                    what
==================  ========================  ==========================================
``cnn``             :mod:`.cnn`               compact CNN family of seed 000
``resnet18/50``     :mod:`.resnet`            torchvision ResNets (optional CIFAR stem)
``vit``             :mod:`.vit`               torchvision VisionTransformer
``crnn``            :mod:`.crnn`              keyword-spotting CRNN of seed 001
``wav2vec2_ctc``    :mod:`.wav2vec2_ctc`      CTC teacher on raw audio (seed 000)
``conformer_ctc``   :mod:`.conformer_ctc`     CTC student on log-mel (seed 000)
==================  ========================  ==========================================
"""
