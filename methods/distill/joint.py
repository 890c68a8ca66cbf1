"""distill-joint: trajectory matching with images and text vectors both learned."""

from bench.registry import register
from bench.trajectory_api import TrajectoryMatching


@register("distill-joint", "distillation", "trajectory matching, images and text vectors both learned")
class DistillJoint(TrajectoryMatching):
    learn_images = True
    learn_texts = True
