"""Classic ImageNet networks for vggtk: AlexNet, ZFNet, GoogLeNet and ResNet-18/34/50, each with a
small-input stem below 64 px, a fully-convolutional form and feature taps. Loaded by vggtk through the
``vggtk`` entry-point group, like any plugin; this module holds its hook implementations."""

from functools import partial

import vgg_toolkit as vt

from . import alexnet
from .googlenet import GoogLeNet
from .options import small_image_defaults
from .resnet import ResNet


@vt.hookimpl
def vggtk_register_architectures(register):
    register("alexnet", alexnet.alexnet, description="Krizhevsky et al. 2012, one tower", input_size=227,
             defaults=alexnet.training_defaults)
    register("zfnet", alexnet.zfnet, description="Zeiler & Fergus 2013", input_size=224,
             defaults=alexnet.training_defaults)
    register("googlenet", GoogLeNet, aliases=("inception-v1",), input_size=224, defaults=small_image_defaults,
             description="Szegedy et al. 2014, with its two auxiliary classifiers")
    for depth in (18, 34, 50):
        register(f"resnet{depth}", partial(ResNet, depth), description=f"He et al. 2016, {depth} layers",
                 input_size=224, defaults=small_image_defaults)
