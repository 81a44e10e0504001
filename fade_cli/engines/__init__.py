"""Engines that run a method over many files: the local runner and the Ray Data engine."""
