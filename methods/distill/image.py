"""distill-image: trajectory matching with only images learned (texts stay the real initial embeddings)."""

from bench.registry import register
from bench.trajectory_api import TrajectoryMatching


@register("distill-image", "distillation", "trajectory matching, only images learned (texts stay the real initial embeddings)")
class DistillImage(TrajectoryMatching):
    learn_images = True
    learn_texts = False
    default_search = {k: v for k, v in TrajectoryMatching.default_search.items() if k != "lr_txt"}
