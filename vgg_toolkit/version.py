"""The version of vgg-toolkit."""

__version__ = "0.1.0"
