"""Registers the paper's training and testing augmentations (implementations in ``augment_ops``)."""

from vgg_toolkit import hookimpl

from . import ops


@hookimpl
def vggtk_register_augmentations(register):
    register("rescale", ops.Rescale, aliases=["isotropic_rescale"], geometric=True,
             description="isotropic rescale to smallest side S, fixed or drawn from [smin, smax]")
    register("random_crop", ops.RandomCrop, geometric=True, description="one random size x size crop (224)")
    register("center_crop", ops.CenterCrop, aliases=["centre_crop"], geometric=True,
             description="the central size x size crop")
    register("random_flip", ops.RandomFlip, aliases=["hflip"], geometric=True,
             description="horizontal flip with probability p")
    register("color_shift", ops.ColorShift, aliases=["pca_lighting", "colour_shift"],
             description="Krizhevsky's PCA colour shift from the manifest's RGB statistics")
    register("subtract_mean", ops.SubtractMean, description="subtract the training set's mean RGB (float output)")
    register("channels", ops.Channels, description="greyscale to 3 channels, or RGB to 1")
    register("identity", ops.Identity, aliases=["dense"], geometric=True,
             description="leave the image whole (dense testing)")
