"""Datasets, samplers and loaders for training and evaluation."""

from unireplknet.data.datasets import CORRUPT_TARGET, DigitsDataset, ImageFolderDataset, drop_corrupt
from unireplknet.data.sampler import ResumableDistributedSampler

__all__ = ["CORRUPT_TARGET", "DigitsDataset", "ImageFolderDataset", "ResumableDistributedSampler",
           "drop_corrupt"]
