"""Anomaly-detection methods (FADE, FiLo, ALFA) and the parts they are built from."""
