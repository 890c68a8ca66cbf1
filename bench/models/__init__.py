"""Models: the student (an image tower and a text head on frozen caption vectors, one
projection each), its towers (ConvNet, HF ViT, LoRA, timm), the contrastive losses, pretraining."""
