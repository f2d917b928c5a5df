"""Representation metrics against a teacher, for any recipe.

- ``geometry_preservation``: Pearson correlation of the off-diagonal entries of the teacher's and
  the student's class-centre cosine-similarity matrices on the split (1.0 = same geometry); the
  number REFERENCES.md asks for to make seed 004's "geometry preservation" measurable.
- ``cka``: linear centred kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network
  Representations Revisited", arXiv:1905.00414) between the tapped student and teacher features.

Both are computed from moments summed batch by batch (:class:`Moments`), exactly as from the
whole split's features. The similarity matrices of the test split are also written to TensorBoard as images
(``geometry/student``, ``geometry/teacher``).
"""

from __future__ import annotations

import attrs
import torch

from kdlab import hookimpl
from kdlab.methods.feature_pairs import FeaturePairConfig, as_vector, feature_pair_requirements
from kdlab.methods.geometry import class_centres, off_diagonal, similarity_matrix

NAME = "feature_metrics"


@attrs.frozen(kw_only=True)
class FeatureMetricsConfig(FeaturePairConfig):
    images: bool = True


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def geometry_preservation(student_feats, teacher_feats, labels, num_classes: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    s, present = class_centres(as_vector(student_feats).double(), labels, num_classes)
    t, _ = class_centres(as_vector(teacher_feats).double(), labels, num_classes)
    s_sim, t_sim = similarity_matrix(s[present]), similarity_matrix(t[present])
    return pearson(off_diagonal(s_sim), off_diagonal(t_sim)), s_sim, t_sim


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) for centred (N, D) feature matrices."""
    x = as_vector(x).double()
    y = as_vector(y).double()
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.t() @ x).norm() ** 2 / ((x.t() @ x).norm() * (y.t() @ y).norm()).clamp(min=1e-12))


class Moments:
    """What both metrics need of a split, summed batch by batch (float64): per class, the sum of
    each model's features and the count; over all samples, the feature sums and the products
    X^T X, Y^T Y, Y^T X. Memory is O(C D + D^2) whatever the split's size."""

    def __init__(self):
        self.n = 0
        self.class_sums: list[torch.Tensor] | None = None
        self.counts: torch.Tensor | None = None
        self.sums: list[torch.Tensor] | None = None
        self.products: dict[str, torch.Tensor] = {}

    def add(self, s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        x, y = as_vector(s).double(), as_vector(t).double()
        onehot = torch.nn.functional.one_hot(labels, num_classes).double()
        parts = {"xx": x.t() @ x, "yy": y.t() @ y, "yx": y.t() @ x}
        if self.sums is None:
            self.class_sums, self.counts = [onehot.t() @ x, onehot.t() @ y], onehot.sum(0)
            self.sums, self.products = [x.sum(0), y.sum(0)], parts
        else:
            self.class_sums = [self.class_sums[0] + onehot.t() @ x, self.class_sums[1] + onehot.t() @ y]
            self.counts = self.counts + onehot.sum(0)
            self.sums = [self.sums[0] + x.sum(0), self.sums[1] + y.sum(0)]
            self.products = {k: self.products[k] + v for k, v in parts.items()}
        self.n += len(x)

    def geometry_preservation(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        present = self.counts > 0
        s, t = (c[present] / self.counts[present, None] for c in self.class_sums)
        s_sim, t_sim = similarity_matrix(s), similarity_matrix(t)
        return pearson(off_diagonal(s_sim), off_diagonal(t_sim)), s_sim, t_sim

    def linear_cka(self) -> float:
        """:func:`linear_cka` from the moments: Xc^T Xc = X^T X - n mx mx^T, and so on."""
        mx, my = (v / self.n for v in self.sums)
        xx = self.products["xx"] - self.n * torch.outer(mx, mx)
        yy = self.products["yy"] - self.n * torch.outer(my, my)
        yx = self.products["yx"] - self.n * torch.outer(my, mx)
        return float(yx.norm() ** 2 / (xx.norm() * yy.norm()).clamp(min=1e-12))


def _image(matrix: torch.Tensor, scale: int = 16) -> torch.Tensor:
    """(1, H, W) grey image of a similarity matrix in [-1, 1], each entry a scale x scale block."""
    img = ((matrix.float().cpu() + 1) / 2).clamp(0, 1)
    return img.repeat_interleave(scale, 0).repeat_interleave(scale, 1)[None]


class FeatureMetrics:
    def __init__(self, config):
        self.config = config
        self.matrices: tuple[torch.Tensor, torch.Tensor] | None = None
        self.moments = Moments()

    config_class = FeatureMetricsConfig

    @staticmethod
    def requires(config, stage):  # its teacher and both taps; it adds no loss term
        return feature_pair_requirements(config, stage, ())

    @hookimpl
    def kdlab_eval_start(self):
        self.moments = Moments()

    @hookimpl
    def kdlab_eval_batch(self, stage, batch, output, teacher_outputs):
        cfg = self.config
        self.moments.add(output.features[cfg.student], teacher_outputs[cfg.teacher_index].features[cfg.teacher],
                         batch.targets, stage.data.num_classes)

    @hookimpl
    def kdlab_eval_metrics(self, split):
        if not self.moments.n:
            return None
        gp, s_sim, t_sim = self.moments.geometry_preservation()
        if split == "test":
            self.matrices = (s_sim, t_sim)
        return {"geometry_preservation": gp, "cka": self.moments.linear_cka()}

    @hookimpl
    def kdlab_stage_summary(self, stage):
        if not self.config.images or self.matrices is None or not stage.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(stage.run_dir / "tb" / stage.name)) as writer:
            writer.add_image("geometry/student", _image(self.matrices[0]), stage.epoch)
            writer.add_image("geometry/teacher", _image(self.matrices[1]), stage.epoch)
