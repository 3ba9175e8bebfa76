"""vgg-toolkit: the VGG networks of Simonyan & Zisserman (ICLR 2015) and the paper's protocols."""

from .errors import RegistryError, VggtkError, WeightsError
from .models.factory import create_model, list_models, prepare_model
from .host.manager import get_host, hookimpl
from .models.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "prepare_model", "load_weights", "save_weights", "get_host", "hookimpl",
    "VggtkError", "RegistryError", "WeightsError", "__version__",
]
