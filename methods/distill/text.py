"""distill-text: trajectory matching with only text vectors learned (images stay real)."""

from bench.registry import register
from bench.trajectory_api import TrajectoryMatching


@register("distill-text", "distillation", "trajectory matching, only text vectors learned (images stay real)")
class DistillText(TrajectoryMatching):
    learn_images = False
    learn_texts = True
    default_search = {k: v for k, v in TrajectoryMatching.default_search.items() if k != "lr_img"}
