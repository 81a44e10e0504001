"""The vision-language model: the open_clip backbone wrapper and GEM (generalised attention) patch features."""
