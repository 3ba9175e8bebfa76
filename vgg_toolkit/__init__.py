"""vgg-toolkit: the VGG networks of Simonyan & Zisserman (ICLR 2015) and the paper's protocols.

This module is the public API: what the built-in plugins use, and all a third-party plugin needs.

    import vgg_toolkit as vt

    model = vt.create_model("vgg-d", num_classes=10, in_chans=1, width=0.25, input_size=32)
    trained = vt.load_trained("runs/train/best", device="cpu")
    for batch in vt.read_split("shards/fashion-mnist", "test"): ...
    result = vt.run_evaluation([trained], vt.get_evaluator("dense"), batches)
"""

from .cli.options import with_plugin_options
from .contract.boxes import CORRECT_IOU, area as box_area, decode as decode_boxes, encode as encode_boxes, iou, main_box
from .contract.data import DataFacts
from .contract.evaluator import DescribedEvaluator, ScaledEvaluator
from .contract.preprocess import PREPROCESS_HELP, Preprocessing, parse_preprocess
from .contract.model import (FeatureTaps, FinetuneScopes, FullyConvolutional, ModelInfo, ReceptiveField, WarmStart,
                             WeightLayouts, find_model_info, model_info, set_model_info)
from .contract.options import OptionSpec
from .contract.scale import TrainScale, parse_test_scales
from .contract.task import AuxiliaryOutputs, BoxTargets, EvalRequest, Head, task_loss
from .data.batched import BatchGeometry
from .data.bundled import resolve_data
from .data.draws import normals, normals_batch, uniforms
from .data.decode import IMAGE_SUFFIXES, LazyImage, add_offset, crop, hflip, image_channels, image_size, read_image, resize
from .data.errors import DataError, check_policy
from .data.loader import make_loader, normalize_on_device, read_split
from .data.shards.manifest import Manifest
from .errors import RegistryError, VggtkError, WeightsError
from .evaluation.geometry import (boxes_from_center_view, center_crop, center_trim, center_view, dense_input, center_view_boxes, crop_at, grid_positions, rescale, rescaled_size,
                                  test_scales_for)
from .evaluation.metrics import topk_errors, topk_misses
from .evaluation.on_shards import check_fits_data, class_columns, evaluate_on_shards, feeds_for, input_preprocessing
from .evaluation.report import print_results, write_json
from .evaluation.runner import EvalResult, Feed, check_same_classes, ensemble_posteriors, get_evaluator, run_evaluation
from .host.manager import get_host, hookimpl
from .models.factory import create_model, list_models, prepare_model
from .models.forms import model_form, require_fully_conv
from .models.layers import BatchSlicedDropout
from .models.stats import model_stats
from .losses import LPIPS, VGGFeatures, gram, perceptual_loss, read_heads as read_lpips_heads, style_loss
from .models.catalogue import find_entry as find_weights
from .models.imagenet import class_label, imagenet_classes
from .models.trained import initialise_from, load_trained, weights_digest
from .models.weights import load_weights, read_model_info, save_safetensors, save_weights
from .runtime.console import one_line, plain, print_table
from .runtime.devices import mixed_precision, pick_device
from .runtime.files import atomic_file, check_output_file, mark, png_mark, save_json, save_png, write_text
from .version import __version__

__all__ = [
    # plugins
    "hookimpl", "get_host", "OptionSpec", "Head", "BoxTargets", "AuxiliaryOutputs", "task_loss", "EvalRequest", "DataFacts", "with_plugin_options",
    # errors
    "VggtkError", "RegistryError", "WeightsError", "DataError", "check_policy",
    # models
    "create_model", "list_models", "prepare_model", "load_trained", "initialise_from", "load_weights",
    "find_weights", "class_label", "imagenet_classes", "weights_digest",
    "save_weights", "read_model_info", "save_safetensors", "model_stats", "model_form", "require_fully_conv",
    "BatchSlicedDropout", "ModelInfo", "Preprocessing", "parse_preprocess", "PREPROCESS_HELP", "model_info", "find_model_info", "set_model_info",
    "FullyConvolutional", "FeatureTaps", "WeightLayouts", "WarmStart", "ReceptiveField", "FinetuneScopes",
    # VGG as a loss
    "VGGFeatures", "perceptual_loss", "style_loss", "gram", "LPIPS", "read_lpips_heads",
    # boxes
    "CORRECT_IOU", "box_area", "encode_boxes", "decode_boxes", "iou", "main_box",
    # scales and test-time geometry
    "TrainScale", "parse_test_scales", "rescale", "rescaled_size", "grid_positions", "crop_at", "center_crop", "center_trim", "dense_input", "center_view", "center_view_boxes", "boxes_from_center_view", "test_scales_for",
    # data
    "Manifest", "resolve_data", "read_split", "make_loader", "normalize_on_device",
    "BatchGeometry", "uniforms", "normals", "normals_batch", "LazyImage", "resize", "crop", "hflip", "add_offset", "image_size", "image_channels", "read_image", "IMAGE_SUFFIXES",
    # evaluation
    "get_evaluator", "run_evaluation", "evaluate_on_shards", "ensemble_posteriors", "EvalResult",
    "check_fits_data", "check_same_classes", "input_preprocessing", "class_columns", "feeds_for", "Feed", "print_results", "write_json", "topk_errors", "topk_misses",
    "DescribedEvaluator", "ScaledEvaluator",
    # devices, files, output
    "pick_device", "mixed_precision", "atomic_file", "write_text", "save_json", "save_png", "mark", "png_mark",
    "check_output_file", "plain", "one_line", "print_table",
    "__version__",
]
