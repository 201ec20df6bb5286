"""The backbones: the model table, the DINOv2 and DINOv3 ViTs, building them, reading their weights."""
