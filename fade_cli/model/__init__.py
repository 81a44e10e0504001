"""The models: the open_clip backbone wrapper with GEM patch features, the DINOv2 vision backbone, the weights fingerprint."""
