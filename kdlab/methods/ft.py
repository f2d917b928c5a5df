"""Factor transfer (Kim, Park, Kwak 2018, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS, arXiv:1802.04977).

A paraphraser (a convolutional autoencoder, rate k of the teacher's channels in its code) is
first trained to reconstruct one teacher feature map; its encoder's output is the teacher's
"factor". The student's map goes through a translator (the same encoder, with BatchNorm) that
trains with the student, and the normalised factors are matched:

    factor(F) = normalize(mean_c F^2)             (one vector per sample, as RepDistiller's code)
    loss = weight * mean |factor(translator(S)) - factor(paraphraser.encoder(T))|     (p = 1)

(the larger factor map average-pooled to the smaller's size first). Architecture, defaults and
the paraphraser's training as RepDistiller (models/util.py Paraphraser and Translator,
distiller_zoo/FT.py, helper/pretrain.py, scripts/run_cifar_distill.sh: k 0.5, weight 200, the
paraphraser trained for 30 epochs with SGD at lr 0.01, momentum 0.9, weight decay 5e-4 on the
reconstruction MSE, then frozen; kdlab's translator convolutions drop the bias that the BatchNorm after each
cancels; checked against it, values and gradients with both modules:
benchmarks/parity_peers.py). In kdlab the paraphraser is trained by this plugin at the start
of the stage (``paraphraser_epochs`` passes over the training data, the teacher's features only;
under ``--nproc`` its gradients are averaged over the processes, so every rank holds the same
one), then frozen; it is saved in the stage's checkpoints, so a resumed stage does not train it
again. Neither module is exported. Loss term ``ft``.
"""

from __future__ import annotations

import logging

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.feature_pairs import FeaturePairConfig, as_spatial, feature_pair_requirements, paired

NAME = "ft"
log = logging.getLogger("kdlab")


@attrs.frozen(kw_only=True)
class FTConfig(FeaturePairConfig):
    student: str = "feat"
    teacher: str = "feat"
    rate: float = field(default=0.5, validator=[v.gt(0), v.le(4)])  # the factor's channels / the teacher's
    p1: int = field(default=2, validator=v.ge(1))  # power of the factor's channel mean
    p2: int = field(default=1, validator=v.ge(1))  # 1: mean absolute difference, else mean of the p2-th power
    weight: float = field(default=200.0, validator=v.ge(0))
    paraphraser_epochs: int = field(default=30, validator=v.ge(0))
    paraphraser_lr: float = field(default=0.01, validator=v.gt(0))
    paraphraser_momentum: float = field(default=0.9, validator=[v.ge(0), v.lt(1)])
    paraphraser_weight_decay: float = field(default=5e-4, validator=v.ge(0))


def _encoder(cin: int, cout: int, bn: bool) -> nn.Sequential:
    # RepDistiller's convolutions all carry a bias; before a BatchNorm (the translator's) it is
    # cancelled by the normalisation, so kdlab leaves it out there: its gradient is rounding noise,
    # which Adam would turn into steps that differ between one process and several
    layers = []
    for a, b in ((cin, cin), (cin, cout), (cout, cout)):
        layers += [nn.Conv2d(a, b, 3, 1, 1, bias=not bn), nn.BatchNorm2d(b) if bn else nn.Identity(), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """RepDistiller's paraphraser (without BatchNorm, its default): encoder and decoder."""

    def __init__(self, channels: int, rate: float):
        super().__init__()
        factor = int(channels * rate)
        self.encoder = _encoder(channels, factor, bn=False)
        layers = []
        for a, b in ((factor, factor), (factor, channels), (channels, channels)):
            layers += [nn.ConvTranspose2d(a, b, 3, 1, 1), nn.Identity(), nn.LeakyReLU(0.1)]
        self.decoder = nn.Sequential(*layers)  # the Identity where RepDistiller's optional BatchNorm is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def translator(student_channels: int, teacher_channels: int, rate: float) -> nn.Sequential:
    """RepDistiller's translator: the paraphraser's encoder shape, with BatchNorm."""
    return _encoder(student_channels, int(teacher_channels * rate), bn=True)


def factor(f: torch.Tensor, p1: int = 2) -> torch.Tensor:
    return F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, p1: int = 2, p2: int = 1) -> torch.Tensor:
    hs, ht = factor_s.shape[2], factor_t.shape[2]
    if hs > ht:
        factor_s = F.adaptive_avg_pool2d(factor_s, (ht, ht))
    elif hs < ht:
        factor_t = F.adaptive_avg_pool2d(factor_t, (hs, hs))
    diff = factor(factor_s, p1) - factor(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


class FT:
    config_class = FTConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {NAME})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        s, t = (as_spatial(x) for x in paired(cfg, *probe))
        paraphraser = Paraphraser(t.shape[1], cfg.rate).requires_grad_(False)  # trained here, not by the stage
        return {NAME: nn.ModuleDict({"translator": translator(s.shape[1], t.shape[1], cfg.rate),
                                     "paraphraser": paraphraser})}

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        # epoch 0 only: a resumed stage (epoch > 0) has its trained paraphraser from the checkpoint
        if epoch == 0 and self.config.paraphraser_epochs:
            self._train_paraphraser(stage)
        stage.extra[NAME]["paraphraser"].train(False)

    def _train_paraphraser(self, stage) -> None:
        cfg = self.config
        paraphraser = stage.extra[NAME]["paraphraser"].train().requires_grad_(True)
        params = list(paraphraser.parameters())
        opt = torch.optim.SGD(params, lr=cfg.paraphraser_lr, momentum=cfg.paraphraser_momentum,
                              weight_decay=cfg.paraphraser_weight_decay)
        distributed = stage.world_size > 1 and torch.distributed.is_initialized()
        loss = torch.zeros(())
        for epoch in range(cfg.paraphraser_epochs):
            stage.data.train.set_epoch(epoch)
            for batch in stage.data.train:
                batch = batch.to(stage.device)
                n = int(batch.index.numel())  # under --nproc a rank's share of a step may be empty
                opt.zero_grad(set_to_none=True)
                if n:
                    with torch.no_grad():
                        outs = stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch)
                    target = as_spatial(outs[cfg.teacher_index].features[cfg.teacher]).float()
                    loss = F.mse_loss(paraphraser(target), target)
                    loss.backward()
                if distributed:  # every rank takes the same step: the sample-weighted mean gradient
                    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * n
                                      for p in params] + [torch.tensor([float(n)], device=stage.device)])
                    torch.distributed.all_reduce(flat)
                    offset = 0
                    for p in params:
                        p.grad = flat[offset:offset + p.numel()].view_as(p) / flat[-1]
                        offset += p.numel()
                elif not n:
                    continue
                opt.step()
            if stage.is_main:
                log.info("%s: paraphraser epoch %d/%d, reconstruction loss %.4g", NAME, epoch + 1,
                         cfg.paraphraser_epochs, loss.item())
        paraphraser.requires_grad_(False).train(False)
        stage.data.train.set_epoch(0)  # the stage's first epoch, as the loop set it

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s, t = paired(cfg, student_out, teacher_outs)
        modules = stage.extra[NAME]
        factor_s = modules["translator"](as_spatial(s).float())
        with torch.no_grad():
            factor_t = modules["paraphraser"].encoder(as_spatial(t).float())
        return {NAME: cfg.weight * ft_loss(factor_s, factor_t, cfg.p1, cfg.p2)}
