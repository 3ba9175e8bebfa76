"""The VGG networks of Table 1 (Simonyan & Zisserman, ICLR 2015).

Module names are chosen so nobody counts indices: ``features.block3.conv2``, ``classifier.fc6``.
The classifier keeps its weights in Linear shape and can run them as convolutions
(FC1 -> kxk conv, FC2/FC3 -> 1x1 convs), so switching form never touches the state_dict.

Weights also read and write in torchvision's and timm's layouts and in the layout of the authors' Caffe
release (``conv1_1`` ... ``fc8``, what ``vggtk convert X.caffemodel`` reads); ``ceil_pool=True`` gives
Caffe's pooling, which rounds the output size up.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vgg_toolkit import BatchSlicedDropout, ModelInfo, VggtkError, WeightsError

# (kernel, channels) per conv, "M" per 2x2 max-pool.
_A = [(3, 64), "M", (3, 128), "M", (3, 256), (3, 256), "M", (3, 512), (3, 512), "M", (3, 512), (3, 512), "M"]
_B = [(3, 64), (3, 64), "M", (3, 128), (3, 128), "M", (3, 256), (3, 256), "M",
      (3, 512), (3, 512), "M", (3, 512), (3, 512), "M"]


def _stack(widths: Sequence[int], repeats: Sequence[int]) -> list:
    layers: list = []
    for c, n in zip(widths, repeats):
        layers += [(3, c)] * n + ["M"]
    return layers


CONFIGS: dict[str, list] = {
    "A": _A,
    "B": _B,
    "C": [(3, 64), (3, 64), "M", (3, 128), (3, 128), "M", (3, 256), (3, 256), (1, 256), "M",
          (3, 512), (3, 512), (1, 512), "M", (3, 512), (3, 512), (1, 512), "M"],
    "D": _stack([64, 128, 256, 512, 512], [2, 2, 3, 3, 3]),
    "E": _stack([64, 128, 256, 512, 512], [2, 2, 4, 4, 4]),
}

# Krizhevsky et al. 2012, as the paper uses it in A-LRN.
LRN_ARGS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
INITS = ("paper", "glorot", "kaiming")
BLOCK_TAPS = tuple(f"block{i}" for i in range(1, 6))
LAYOUTS = ("vggtk", "torchvision", "timm", "caffe")


def paper_taps(config: str) -> tuple[str, ...]:
    """The paper's and the Caffe release's layer names for a configuration: ``convB_K`` (the conv's
    output, before its ReLU), ``reluB_K``, ``poolB`` (= ``blockB``), for block B and its K-th conv."""
    names, block, k = [], 1, 0
    for item in CONFIGS[config]:
        if item == "M":
            names.append(f"pool{block}")
            block, k = block + 1, 0
        else:
            k += 1
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
    return tuple(names)


def taps_of(config: str) -> tuple[str, ...]:
    return BLOCK_TAPS + paper_taps(config) + ("fc6", "fc7", "logits")


class Classifier(nn.Module):
    """FC6, FC7, FC8 with ReLU and dropout; Linear form by default, fully-convolutional on demand."""

    def __init__(self, in_channels: int, kernel: int, fc_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.in_channels, self.kernel = in_channels, kernel
        self.fc6 = nn.Linear(in_channels * kernel * kernel, fc_dim)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = BatchSlicedDropout(dropout)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = BatchSlicedDropout(dropout)
        self.fc8 = nn.Linear(fc_dim, num_classes)
        self.fully_conv = False

    def _fc(self, layer: nn.Linear, x: torch.Tensor, first: bool) -> torch.Tensor:
        if not self.fully_conv:
            return layer(x)
        if first:
            weight = rearrange(layer.weight, "o (c kh kw) -> o c kh kw", c=self.in_channels, kh=self.kernel)
        else:
            weight = rearrange(layer.weight, "o i -> o i 1 1")
        return F.conv2d(x, weight, layer.bias)

    def forward(self, x: torch.Tensor, taps: dict | None = None, wanted: frozenset = frozenset()) -> torch.Tensor:
        if not self.fully_conv:
            if tuple(x.shape[-2:]) != (self.kernel, self.kernel):
                raise VggtkError(
                    f"the Linear classifier needs a {self.kernel}x{self.kernel} feature map (input "
                    f"{32 * self.kernel}x{32 * self.kernel}) but got {tuple(x.shape[-2:])}; "
                    "call model.to_fully_conv() to run on larger images"
                )
            x = x.flatten(1)
        x = self.relu6(self._fc(self.fc6, x, first=True))
        if taps is not None and "fc6" in wanted:
            taps["fc6"] = x.clone()  # the in-place ReLU/dropout that follow must not alter the tap
        x = self.drop6(x)
        x = self.relu7(self._fc(self.fc7, x, first=False))
        if taps is not None and "fc7" in wanted:
            taps["fc7"] = x.clone()
        x = self.drop7(x)
        return self._fc(self.fc8, x, first=False)


class VGG(nn.Module):
    """A VGG network: fully-convolutional on demand, with feature taps, torchvision and timm weight
    layouts, and a warm start from a shallower configuration (the paper's A -> deeper).

    Args:
        config: one of A, B, C, D, E (Table 1).
        num_classes: size of the last layer.
        in_chans: input channels (3 for RGB, 1 for greyscale).
        width: multiplier on every conv's channel count (1.0 = the paper).
        fc_dim: width of FC6 and FC7 (4096 in the paper).
        input_size: training input size, a multiple of 32; FC6 sees an (input_size/32)^2 map.
        batch_norm: BatchNorm after every conv (not in the paper).
        ceil_pool: pools round their output size up, as Caffe's do (the authors' released nets): a
            side that is not a multiple of 32 loses no rows, so dense evaluation sees the whole image.
        lrn: local response normalisation after the first conv (config A-LRN).
        dropout: dropout probability on FC6 and FC7.
        init: "paper" (weights ~ N(0, init_std^2), biases 0. The paper says "variance 1e-2"; its
            authors trained with a Caffe-based framework and follow Krizhevsky et al., whose stated
            init and Caffe's are a standard deviation of 0.01, and He et al. (2015) quote VGG's as
            std 0.01; a literal variance of 1e-2 (std 0.1) gives logits of order 1e7 at init and cannot
            train. So init_std defaults to 0.01.), "glorot" (Glorot & Bengio uniform, biases 0; the
            init the paper recommends after submission for training from scratch) or
            "kaiming" (He normal, fan-in; for training deep configs or narrow nets from scratch).
    """

    weight_layouts = LAYOUTS
    output_stride = 32  # five 2x2 max-pools
    finetune_scopes = ("all", "fc")

    def __init__(self, config: str = "D", num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 fc_dim: int = 4096, input_size: int = 224, batch_norm: bool = False, lrn: bool = False,
                 dropout: float = 0.5, init: str = "paper", init_std: float = 0.01, ceil_pool: bool = False):
        super().__init__()
        if config not in CONFIGS:
            raise VggtkError(f"unknown VGG config {config!r}; known: {', '.join(CONFIGS)}")
        if input_size < 32 or input_size % 32:
            raise VggtkError(f"input_size must be a positive multiple of 32 (five 2x2 pools), got {input_size}")
        if init not in INITS:
            raise VggtkError(f"unknown init {init!r}; known: {', '.join(INITS)}")
        for name, value, bad in (("width", width, width <= 0), ("num_classes", num_classes, num_classes < 1),
                                 ("in_chans", in_chans, in_chans < 1), ("fc_dim", fc_dim, fc_dim < 1)):
            if bad:
                raise VggtkError(f"{name} must be positive, got {value}")
        self.config, self.batch_norm, self.lrn, self.input_size = config, batch_norm, lrn, input_size
        self.pools_round_up = ceil_pool
        self.feature_taps = taps_of(config)
        blocks: list[tuple[str, nn.Module]] = []
        layers: list[tuple[str, nn.Module]] = []
        channels = in_chans
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(("pool", nn.MaxPool2d(2, 2, ceil_mode=ceil_pool)))
                blocks.append((f"block{len(blocks) + 1}", nn.Sequential(OrderedDict(layers))))
                layers = []
                continue
            k, c = item
            c = max(1, int(round(c * width)))
            i = sum(1 for name, _ in layers if name.startswith("conv")) + 1
            layers.append((f"conv{i}", nn.Conv2d(channels, c, k, padding=k // 2)))
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(c)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
            if lrn and not blocks and i == 1:
                layers.append(("lrn", nn.LocalResponseNorm(**LRN_ARGS)))
            channels = c
        self.features = nn.Sequential(OrderedDict(blocks))
        self.classifier = Classifier(channels, input_size // 32, fc_dim, num_classes, dropout)
        self.num_classes = num_classes
        self.reset_parameters(init, init_std)

    def reset_parameters(self, init: str = "paper", init_std: float = 0.01) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "paper":
                    nn.init.normal_(m.weight, 0.0, init_std)
                elif init == "glorot":
                    nn.init.xavier_uniform_(m.weight)
                else:  # He et al.: keeps activations at unit scale through every ReLU layer at any width
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "kaiming":  # logits start near zero, so the first steps are not spent unlearning noise
            nn.init.normal_(self.classifier.fc8.weight, 0.0, 0.01)

    # --- forms of the classifier -------------------------------------------------------------
    def to_fully_conv(self) -> "VGG":
        """Run FC layers as convolutions (dense evaluation); the weights are not touched."""
        self.classifier.fully_conv = True
        return self

    def to_linear(self) -> "VGG":
        self.classifier.fully_conv = False
        return self

    @property
    def fully_conv(self) -> bool:
        return self.classifier.fully_conv

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] = ("fc7",)) -> dict[str, torch.Tensor]:
        """Outputs at named points: ``block1``..``block5`` (after each pool, also ``pool1``..``pool5``),
        the paper's ``convB_K`` (before the ReLU) and ``reluB_K``, ``fc6``, ``fc7`` (after ReLU, before
        dropout) and ``logits``. Asked only for conv-trunk taps, it stops after the last one requested;
        any FC tap runs the whole classifier."""
        wanted = frozenset(taps)
        unknown = sorted(wanted - set(self.feature_taps))
        if unknown:
            raise VggtkError(f"unknown feature tap(s) {', '.join(unknown)}; known: {', '.join(self.feature_taps)}")
        out: dict[str, torch.Tensor] = {}
        for bname, block in self.features.named_children():
            b = bname[len("block"):]
            layers = list(block.named_children())
            for i, (lname, layer) in enumerate(layers):
                x = layer(x)
                tap = f"pool{b}" if lname == "pool" else f"{lname[:4]}{b}_{lname[4:]}"
                if tap not in wanted:
                    continue
                if lname.startswith("conv"):
                    after = layers[i + 1][1] if i + 1 < len(layers) else None
                    if not isinstance(after, (nn.ReLU, nn.BatchNorm2d)):
                        raise VggtkError(f"tap {tap} is the conv's output before its ReLU, which a fused conv+ReLU "
                                         f"kernel does not produce: tap relu{b}_{lname[4:]}, or run with "
                                         "--conv-backend torch")
                    out[tap] = x.clone()  # the in-place ReLU that follows must not alter the tap
                else:
                    out[tap] = x
                if wanted <= out.keys():  # the rest of the block (its pool) may need more pixels than are left
                    return out
            if bname in wanted:
                out[bname] = x
            if wanted <= out.keys():
                return out
        logits = self.classifier(x, taps=out, wanted=wanted)
        if "logits" in wanted:
            out["logits"] = logits
        return out

    # --- facts ---------------------------------------------------------------------------------
    def receptive_field(self) -> int:
        """Receptive field, in input pixels, of one unit of the last pool (block5)."""
        field, jump = 1, 1
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                field += (m.kernel_size[0] - 1) * jump
            elif isinstance(m, nn.MaxPool2d):
                field += (m.kernel_size - 1) * jump
                jump *= m.stride
        return field

    def finetune_parameters(self, scope: str):
        """``all``: every parameter; ``fc``: FC6, FC7 and the last layer (the paper's "fine-tuning of the
        fully-connected layers only", Table 8)."""
        return self.parameters() if scope == "all" else self.classifier.parameters()

    # --- starting from a trained net --------------------------------------------------------
    def warm_start(self, tensors, source: ModelInfo) -> list[str]:
        """The paper's initialisation of a deeper net from a trained A (Sec. 3.1): the first four conv
        layers and the three FC layers, each into the layer of the same name (block1.conv1, block2.conv1,
        block3.conv1, block3.conv2, fc6, fc7, fc8); the rest keeps its random init. Returns the layers copied."""
        convs = [k[: -len(".weight")] for k, t in tensors.items() if k.startswith("features.") and t.ndim == 4]
        fcs = [k[: -len(".weight")] for k in tensors if k.startswith("classifier.") and k.endswith(".weight")]
        layers = set(convs[:4] + fcs)
        taken = {k: t for k, t in tensors.items() if k.rsplit(".", 1)[0] in layers}
        ours = self.state_dict()
        problems = [f"{k}: missing here" if k not in ours else f"{k}: {tuple(t.shape)} vs {tuple(ours[k].shape)}"
                    for k, t in taken.items() if k not in ours or ours[k].shape != t.shape]
        if problems:
            raise WeightsError("; ".join(problems[:3]))
        self.load_state_dict(taken, strict=False)
        return sorted(layers)

    # --- foreign weight layouts ----------------------------------------------------------------
    def _key_map(self, layout: str) -> list[tuple[str, str, str]]:
        """(our key, foreign key, how the tensor changes) for every state_dict entry."""
        if layout not in LAYOUTS:
            raise WeightsError(f"unknown weight layout {layout!r}; known: {', '.join(LAYOUTS)}")
        ours = self.state_dict()
        if layout == "vggtk":
            return [(k, k, "same") for k in ours]
        if layout == "caffe" and self.batch_norm:
            raise WeightsError("the Caffe layout has no BatchNorm layers")
        rows: list[tuple[str, str, str]] = []
        index = 0  # position in a flat torchvision-style nn.Sequential
        for bname, block in self.features.named_children():
            for lname, _ in block.named_children():
                prefix = f"features.{bname}.{lname}."
                for key in ours:
                    if not key.startswith(prefix):
                        continue
                    if layout != "caffe":
                        rows.append((key, f"features.{index}.{key[len(prefix):]}", "same"))
                    else:  # the release's layer names: convB_K, no BatchNorm there
                        rows.append((key, f"conv{bname[5:]}_{lname[4:]}.{key[len(prefix):]}", "same"))
                index += 1
        if layout == "caffe":
            fcs = {fc: (fc, "same") for fc in ("fc6", "fc7", "fc8")}
        elif layout == "torchvision":
            fcs = {"fc6": ("classifier.0", "same"), "fc7": ("classifier.3", "same"), "fc8": ("classifier.6", "same")}
        else:
            fcs = {"fc6": ("pre_logits.fc1", "fc6_conv"), "fc7": ("pre_logits.fc2", "fc_1x1"),
                   "fc8": ("head.fc", "same")}
        for fc, (foreign, how) in fcs.items():
            rows.append((f"classifier.{fc}.weight", f"{foreign}.weight", how))
            rows.append((f"classifier.{fc}.bias", f"{foreign}.bias", "same"))
        return rows

    def _to_foreign(self, t: torch.Tensor, how: str) -> torch.Tensor:
        if how == "fc6_conv":
            k = self.classifier.kernel
            return rearrange(t, "o (c kh kw) -> o c kh kw", kh=k, kw=k)
        if how == "fc_1x1":
            return rearrange(t, "o i -> o i 1 1")
        return t

    @staticmethod
    def _from_foreign(t: torch.Tensor, how: str) -> torch.Tensor:
        return rearrange(t, "o c kh kw -> o (c kh kw)") if how in ("fc6_conv", "fc_1x1") else t

    def export_state_dict(self, layout: str = "vggtk") -> dict[str, torch.Tensor]:
        ours = self.state_dict()
        return {foreign: self._to_foreign(ours[key], how).contiguous() for key, foreign, how in self._key_map(layout)}

    def import_state_dict(self, tensors: dict[str, torch.Tensor], layout: str = "auto") -> str:
        """Load weights saved in any layout; returns the layout found. Checks every name and shape first
        and names the first tensors that do not fit, so nothing is half-loaded."""
        if layout == "auto":
            layout = detect_layout(tensors)
        self.load_state_dict(self.from_layout(tensors, layout), strict=False)
        return layout

    def from_layout(self, tensors: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
        """``tensors`` of ``layout`` renamed and reshaped into this net's own state_dict (views, no copies),
        after checking every name and shape; works on a net built on the meta device."""
        ours = self.state_dict()
        converted: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        for key, foreign, how in self._key_map(layout):
            if foreign not in tensors:
                if key.endswith("num_batches_tracked"):
                    continue
                problems.append(f"missing {foreign}")
                continue
            t = self._from_foreign(tensors[foreign], how)
            if t.shape != ours[key].shape:
                problems.append(f"{foreign}: file has {tuple(tensors[foreign].shape)}, model needs "
                                f"{tuple(self._to_foreign(ours[key], how).shape)}")
            converted[key] = t
        expected = {foreign for _, foreign, _ in self._key_map(layout)}
        problems += [f"unexpected {k}" for k in sorted(set(tensors) - expected)]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise WeightsError(f"weights ({layout} layout) do not fit this {type(self).__name__}-{self.config}: "
                               + "; ".join(problems[:3]) + more)
        return converted



def detect_layout(keys: Iterable[str]) -> str:
    """Which of the four layouts a set of tensor names is in."""
    keys = set(keys)
    if any(k.startswith("features.block") or k.startswith("classifier.fc") for k in keys):
        return "vggtk"
    if "pre_logits.fc1.weight" in keys or "head.fc.weight" in keys:
        return "timm"
    if "classifier.0.weight" in keys or any(k.startswith("features.0.") for k in keys):
        return "torchvision"
    if "conv1_1.weight" in keys:
        return "caffe"
    raise WeightsError("the tensors match no known layout (vggtk, torchvision, timm, caffe)")
