"""Every command, given bad input, as a careless user or an attacker would: each case must end with exit
status 2 and one line on stderr naming the file or option, no traceback, and no file of the user's
changed. The table grows with every fix (README: "What bad input gets")."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import vgg_toolkit as vt
from pretrained_refs import torchvision_state
from realdata import fashion_sample
from vgg_toolkit.cli import main
from vgg_toolkit.models.weights import save_safetensors
from vgg_toolkit.runtime.files import save_json

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rewrite_weights(src: Path, dst: Path, tensors=None, metadata=None):
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors(data) if tensors else data, str(dst), metadata=metadata(meta) if metadata else meta)


@pytest.fixture(scope="module")
def world(shards, trained, tmp_path_factory):
    """The bad inputs, made once: damaged shards and checkpoints, and a folder of the user's own files."""
    w = tmp_path_factory.mktemp("bad")
    user = w / "user"
    user.mkdir()
    (user / "notes.txt").write_text("the user's notes")
    (user / "train-set-2019-backup.tar.gz").write_bytes(b"the user's archive")
    (user / "eval.json").write_text('{"mine": true}')
    (user / "notes.caffemodel").write_text("the user's notes, under a Caffe model's name")
    (w / "nan-prep.json").write_text('{"family": "custom", "channel_order": "RGB", "pixel_range": 1, '
                                     '"mean": [0.5, NaN, 0.5], "std": [1, 1, 1]}')
    # Image folders: one with a zero-byte PNG, one with a truncated one, one of a single class.
    images, labels = fashion_sample(40)
    for name in ("empty", "cut", "oneclass"):
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = w / name / ("only" if name == "oneclass" else f"c{label % 3}")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{i:03d}.png")
    first, second = sorted((w / "cut").rglob("*.png"))[:2]
    (first.parent.parent.parent / "empty" / first.parent.name / "zero.png").write_bytes(b"")
    whole = first.read_bytes()
    (first.parent / "half.png").write_bytes(whole[: len(whole) // 2])
    (w / "notimage").mkdir()
    for folder in sorted((w / "oneclass").parent.glob("cut/c*")):
        shutil.copytree(folder, w / "notimage" / folder.name)
    (w / "notimage" / first.parent.name / "half.png").unlink()
    (w / "notimage" / first.parent.name / "readme.png").write_text("not an image at all")
    # A CSV list whose box lies outside its 32x32 image.
    (w / "boxes.csv").write_text(f"path,label,boxes\n{first},a,\"[[2, 2, 100, 100]]\"\n"
                                 f"{second},b,\"[[20, 20, 2, 2]]\"\n")
    # Image lists that mean other labels than they would be written as, or are no lists.
    png, png2 = str(first), str(second)
    for name, body in {
        "catdog.json": {"classes": "catdog", "samples": [{"path": png, "label": "c"}]},
        "mixed.json": [{"path": png, "label": 0}, {"path": png2, "label": "cat"}],
        "nulllabel.json": [{"path": png, "label": None}],
        "ints.json": [1, 2],
        "intpath.json": [{"path": 5, "label": 0}],
        "wordbox.json": [{"path": png, "label": 0, "boxes": [[0, 0, "a", 5]]}],
        "morelabels.json": [{"path": png, "label": 0, "boxes": [[0, 0, 5, 5]], "box_labels": [0, 0]}],
        "boxlabel.json": {"classes": ["a", "b"], "samples": [{"path": png, "label": "a", "boxes": [[1, 1, 9, 9]],
                                                              "box_labels": [7]}]},
    }.items():
        (w / name).write_text(json.dumps(body))

    # Manifests that cannot be right, one whose channels its (greyscale) images contradict, one with no val.
    def nan_mean(m):
        m["stats"]["mean_rgb"][0] = float("nan")

    def no_val(m):
        m["splits"].pop("val")
    for name, edit in {"dupclass": lambda m: m["classes"].__setitem__(1, m["classes"][0]),
                       "negcount": lambda m: m["splits"]["train"]["shards"][0].update(samples=-1),
                       "nanmean": nan_mean, "nosplits": lambda m: m.update(splits={}),
                       "chan2": lambda m: m.update(channels=2), "chan3": lambda m: m.update(channels=3),
                       "noval": no_val}.items():
        shutil.copytree(shards, w / name)
        manifest = json.loads((w / name / "manifest.json").read_text())
        edit(manifest)
        (w / name / "manifest.json").write_text(json.dumps(manifest))
    # Shards: a text label; a manifest that under-counts a shard.
    for name in ("textcls", "undercount", "cutshard"):
        shutil.copytree(shards, w / name)
    first_shard = sorted((w / "cutshard").glob("train-*"))[0]
    first_shard.write_bytes(first_shard.read_bytes()[:2000])
    _rewrite_first_label(w / "textcls", b"cat")
    manifest = json.loads((w / "undercount" / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["samples"] -= 5
    manifest["splits"]["val"]["samples"] -= 5
    (w / "undercount" / "manifest.json").write_text(json.dumps(manifest))
    # Checkpoints: crafted and damaged copies of the tiny trained run's best one.
    best = trained[0] / "best"
    weights = best / "model.safetensors"

    def variant(name, **how):
        path = w / name
        shutil.copytree(best, path)
        rewrite_weights(weights, path / "model.safetensors", **how)
        return path

    def wide(meta):
        info = json.loads(meta["vggtk_model"])
        info["options"]["width"] = 64  # a record that would allocate ~10 GB if built before checking shapes
        return {**meta, "vggtk_model": json.dumps(info)}

    variant("huge", metadata=wide)

    def far(meta):
        info = json.loads(meta["vggtk_model"])
        info["options"]["input_size"] = info["input_size"] = 32 * 10 ** 8  # FC6 of 10^18 weights: no storage holds it
        return {**meta, "vggtk_model": json.dumps(info)}

    variant("farsize", metadata=far)
    variant("badjson", metadata=lambda meta: {**meta, "vggtk_model": "{not json"})
    variant("int8", tensors=lambda t: {k: v.to(torch.int8) for k, v in t.items()})
    variant("nan", tensors=lambda t: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                      for k, v in t.items()})
    run = w / "run"
    shutil.copytree(trained[0], run)
    ckpt = sorted(run.glob("ckpt-*"))[-1]
    (ckpt / "state.json").write_text("{}")
    run2 = w / "run2"
    shutil.copytree(trained[0], run2)
    (sorted(run2.glob("ckpt-*"))[-1] / "optimizer.safetensors").write_bytes(b"garbage")
    (w / "bad.toml").write_text('lr = "fast"\n')
    (w / "typo.toml").write_text('[model]\nwidht = 0.5\n')
    (w / "features").mkdir()
    (w / "features" / "val.safetensors").write_text("the user's file, where a features file would go")
    # vggtk's own files of other kinds, which no report may replace: a checkpoint, a shard set's manifest,
    # a run's configuration and plot, evaluation results, features.
    shutil.copytree(best, user / "ckpt")
    (user / "set").mkdir()
    shutil.copy(shards / "manifest.json", user / "set" / "manifest.json")
    (user / "run").mkdir()
    for name in ("config.json", "metrics.png"):
        shutil.copy(trained[0] / name, user / "run" / name)
    save_json(user / "results.json", {"results": []}, "evaluation results")
    (user / "feat").mkdir()
    shutil.copy(weights, user / "feat" / "val.safetensors")
    save_safetensors({"features": torch.zeros(2, 3)}, user / "features.safetensors", {}, kind="features")
    Image.fromarray(images[0][0].numpy()).save(w / "photo.png")
    # Weights written elsewhere, damaged or crafted: a BatchNorm net with a negative variance, float8 values,
    # a key that is not a name, a sparse tensor, a 3 MB file whose last layer is a stride-0 view of 2^30 rows.
    bn = vt.create_model("vgg-a", num_classes=3, in_chans=1, width=1 / 16, fc_dim=16, input_size=32, batch_norm=True)
    state = bn.export_state_dict("torchvision")
    state["features.1.running_var"][0] = -1.0
    torch.save(state, w / "negvar.pth")
    plain = vt.create_model("vgg-a", num_classes=3, in_chans=1, width=1 / 16, fc_dim=16, input_size=32)
    tv = plain.export_state_dict("torchvision")
    torch.save({**tv, "features.0.weight": tv["features.0.weight"].to(torch.float8_e4m3fn)}, w / "fp8.pth")
    torch.save({**tv, 7: torch.zeros(1)}, w / "intkey.pth")
    torch.save({**tv, "features.0.bias": tv["features.0.bias"].to_sparse()}, w / "sparse.pth")
    torch.save({**tv, "classifier.6.weight": torch.zeros(1, 16).expand(1 << 30, 16),
                "classifier.6.bias": torch.zeros(1).expand(1 << 30)}, w / "bomb.pth")
    (w / "tinystd.json").write_text('{"family": "custom", "channel_order": "RGB", "pixel_range": 1, '
                                    '"mean": [0, 0, 0], "std": [1e-40, 1, 1]}')
    (w / "bigint.json").write_text('{"family": "custom", "channel_order": "RGB", "pixel_range": 1' + "0" * 400 +
                                   ', "mean": [0, 0, 0], "std": [1, 1, 1]}')
    (w / "deep.json").write_text("[" * 100000 + "]" * 100000)
    torch.save(torchvision_state(seed=3, classes=3), w / "tv-rgb.pth")
    # Localisation nets that do not fit the data: a PCR net of other classes, an RGB SCR net for greyscale.
    for head, outputs, classes in (("pcr", 28, [f"other{i}" for i in range(7)]), ("scr", 4, ["a", "b", "c"])):
        loc = vt.create_model("vgg-a", num_classes=outputs, in_chans=3, width=1 / 16, fc_dim=16, input_size=64)
        vt.set_model_info(loc, vt.model_info(loc).trained_on(classes, vt.TrainScale(72, 72), [100.0] * 3, head=head))
        vt.save_weights(loc, w / f"{head}-misfit.safetensors")
    return w, user


def _rewrite_first_label(folder: Path, label: bytes):
    import io
    import tarfile

    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    path = folder / entry["name"]
    with tarfile.open(path, "r:*") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_cls = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".cls"))
    members[first_cls] = (members[first_cls][0], label)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# (case id, arguments with {w}, {user}, {shards}, {run}, {repo} to fill, what the one line must name)
CASES = [
    # shards create
    ("create into a folder of the user's", ["shards", "create", "{w}/cut", "{user}"], "--into-nonempty"),
    ("create from a zero-byte image", ["shards", "create", "{w}/empty", "{w}/o1"], "zero.png"),
    ("create from a truncated image", ["shards", "create", "{w}/cut", "{w}/o2"], "half.png"),
    ("create from a text file named .png", ["shards", "create", "{w}/notimage", "{w}/o3"], "readme.png"),
    ("create with negative shard size", ["shards", "create", "{w}/cut", "{w}/o4", "--samples-per-shard", "-5"],
     "--samples-per-shard"),
    ("create with an unknown source option", ["shards", "create", "fashion-mnist", "{w}/o5", "--source-option",
                                              "nosuch=3"], "nosuch"),
    ("create with a negative split size", ["shards", "create", "fashion-mnist", "{w}/o6", "--source-option",
                                           "train=-10"], "train"),
    ("create with NaN split fractions", ["shards", "create", "{w}/cut", "{w}/o7", "--splits", "train=nan,val=1"],
     "--splits"),
    ("create with a box outside its image", ["shards", "create", "{w}/boxes.csv", "{w}/o8", "--splits", "train=1"],
     "outside the 32x32 image"),
    ("create with seed -1", ["shards", "create", "{w}/cut", "{w}/o18", "--seed", "-1"], "--seed: must be at least 0"),
    ("create with a bad error policy", ["shards", "create", "{w}/cut", "{w}/o9", "--on-error", "ignore"],
     "--on-error"),
    ("create from a list whose classes are one string", ["shards", "create", "{w}/catdog.json", "{w}/o10"],
     "catdog.json: \"classes\" must be a list of class names"),
    ("create from a list mixing indices and names", ["shards", "create", "{w}/mixed.json", "{w}/o11"],
     "mixed.json:1: label 'cat' is a class name"),
    ("create from a list with a null label", ["shards", "create", "{w}/nulllabel.json", "{w}/o12"],
     "nulllabel.json:0: label None is neither"),
    ("create from a list of numbers", ["shards", "create", "{w}/ints.json", "{w}/o13"],
     "ints.json:0: an entry is an object"),
    ("create from a list with a number for a path", ["shards", "create", "{w}/intpath.json", "{w}/o14"],
     "intpath.json:0: path 5 is not a file name"),
    ("create from a list with a word in a box", ["shards", "create", "{w}/wordbox.json", "{w}/o15"],
     "wordbox.json:0: box 0 holds 'a'"),
    ("create from a list with more box labels than boxes", ["shards", "create", "{w}/morelabels.json", "{w}/o16"],
     "morelabels.json:0: 2 box labels for 1 boxes"),
    ("create with a box label outside the classes", ["shards", "create", "{w}/boxlabel.json", "{w}/o17", "--splits",
                                                     "train=1"], "box label 7 out of range for 2 classes"),
    ("verify a manifest naming a class twice", ["shards", "verify", "{w}/dupclass"], "is listed 2 times"),
    ("inspect a manifest naming a class twice", ["shards", "inspect", "{w}/dupclass", "--sheet", "{w}/s.png"],
     "dupclass/manifest.json: unreadable manifest (classes:"),
    ("verify a manifest with a negative sample count", ["shards", "verify", "{w}/negcount"],
     "splits.train: samples is -1"),
    ("verify a manifest with a NaN mean", ["shards", "verify", "{w}/nanmean"], "stats: a mean"),
    ("verify a manifest with no splits", ["shards", "verify", "{w}/nosplits"], "splits: the manifest lists no split"),
    ("train on a manifest of 2 channels", ["train", "--data", "{w}/chan2", "--run-dir", "{w}/r7"], "channels: 2"),
    ("eval on a manifest of 2 channels", ["eval", "{run}/best", "--data", "{w}/chan2"], "chan2/manifest.json"),
    ("verify a 3-channel manifest of greyscale images", ["shards", "verify", "{w}/chan3"],
     "the manifest says 3 channels and every image is greyscale"),
    ("train on a set without a val split", ["train", "--data", "{w}/noval", "--run-dir", "{w}/r8"], "no split 'val'"),
    # shards inspect / verify
    ("inspect a text label", ["shards", "inspect", "{w}/textcls", "--sheet", "{w}/s.png"], ".cls"),
    ("inspect a truncated shard", ["shards", "inspect", "{w}/cutshard", "--sheet", "{w}/s.png"], "train-000000"),
    ("train on a truncated shard", ["train", "--data", "{w}/cutshard", "--run-dir", "{w}/r6"], "train-000000"),
    ("inspect with a negative count", ["shards", "inspect", "{shards}", "--count", "-3", "--sheet", "{w}/s.png"],
     "--count"),
    ("inspect over a user's file", ["shards", "inspect", "{shards}", "--sheet", "{user}/notes.txt"], "notes.txt"),
    # train: options and configs
    ("train with a string lr", ["train", "--data", "{shards}", "--config", "{w}/bad.toml", "--run-dir", "{w}/r1"],
     "bad.toml: lr"),
    ("train with a model typo", ["train", "--data", "{shards}", "--config", "{w}/typo.toml", "--run-dir", "{w}/r2"],
     "widht"),
    ("train with a negative lr", ["train", "--data", "{shards}", "--lr", "-0.1", "--run-dir", "{w}/r3"], "--lr"),
    ("train with lr 0", ["train", "--data", "{shards}", "--lr", "0", "--run-dir", "{w}/r3"], "--lr"),
    ("train with negative momentum", ["train", "--data", "{shards}", "--momentum", "-1", "--run-dir", "{w}/r3"],
     "--momentum"),
    ("train with 0 accumulation steps", ["train", "--data", "{shards}", "--accum-steps", "0", "--run-dir", "{w}/r3"],
     "--accum-steps"),
    ("train logging every 0 steps", ["train", "--data", "{shards}", "--log-every", "0", "--run-dir", "{w}/r3"],
     "--log-every"),
    ("train on a TPU", ["train", "--data", "{shards}", "--device", "tpu", "--run-dir", "{w}/r3"], "--device"),
    ("train for 0 epochs", ["train", "--data", "{shards}", "--epochs", "0", "--run-dir", "{w}/r3"], "--epochs"),
    ("train with negative weight decay", ["train", "--data", "{shards}", "--weight-decay", "-1", "--run-dir",
                                          "{w}/r3"], "--weight-decay"),
    ("train keeping -1 checkpoints", ["train", "--data", "{shards}", "--keep-last", "-1", "--run-dir", "{w}/r3"],
     "--keep-last"),
    ("train checkpointing every -3", ["train", "--data", "{shards}", "--checkpoint-every", "-3", "--run-dir",
                                      "{w}/r3"], "--checkpoint-every"),
    ("train with S jittered downwards", ["train", "--data", "{shards}", "--scale-min", "40", "--scale-max", "32",
                                         "--run-dir", "{w}/r3"], "--scale-min and --scale-max"),
    ("train with dropout 1.5", ["train", "--data", "{shards}", "--dropout", "1.5", "--run-dir", "{w}/r3"], "dropout"),
    ("train a net larger than memory", ["train", "--data", "{shards}", "--fc-dim", "1000000000", "--batch-size", "8", "--run-dir",
                                        "{w}/r3"], "fc_dim=1000000000, init=kaiming: its parameters do not fit"),
    ("train a net of width 1e9", ["train", "--data", "{shards}", "--width", "1e9", "--run-dir", "{w}/r3"],
     "width=1000000000.0"),
    ("train an FC of 10^11", ["train", "--data", "{shards}", "--fc-dim", "99999999999", "--run-dir", "{w}/r3"],
     "fc_dim=99999999999"),
    ("eval a crafted record of input size 3.2e9", ["eval", "{w}/farsize", "--data", "{shards}"], "model.safetensors"),
    ("train a word of epochs", ["train", "--data", "{shards}", "--epochs", "abc"], "--epochs"),
    ("train with an unknown option", ["train", "--nosuch"], "--nosuch"),
    ("train into a file", ["train", "--data", "{shards}", "--run-dir", "{user}/notes.txt"], "notes.txt"),
    ("train on one class", ["train", "--data", "{w}/oneclass-shards", "--run-dir", "{w}/r4"], "two"),
    ("train on an under-counting manifest", ["train", "--data", "{w}/undercount", "--run-dir", "{w}/r5"],
     "more samples than its manifest entry"),
    ("resume from an empty state.json", ["train", "--data", "{shards}", "--run-dir", "{w}/run", "--epochs", "3",
                                         "--batch-size", "16", "--lr", "0.02"], "state.json"),
    ("resume from a corrupt optimizer", ["train", "--data", "{shards}", "--run-dir", "{w}/run2", "--epochs", "3",
                                         "--batch-size", "16", "--lr", "0.02"], "optimizer"),
    # eval
    ("eval into a folder", ["eval", "{run}/best", "--data", "{shards}", "--out", "{user}"], "is a folder"),
    ("eval over a user's file", ["eval", "{run}/best", "--data", "{shards}", "--out", "{user}/eval.json"],
     "eval.json"),
    ("eval at scales with an empty one", ["eval", "{run}/best", "--data", "{shards}", "--scales", "36,,"], "--scales"),
    ("extract the same split twice", ["extract-features", "{run}/best", "--data", "{shards}", "--splits", "test,test",
                                      "--out", "{w}/f2"], "test named twice"),
    ("eval at an absurd scale", ["eval", "{run}/best", "--data", "{shards}", "--scales", "99999999"], "--scales"),
    ("eval with a negative limit", ["eval", "{run}/best", "--data", "{shards}", "--limit", "-5"], "--limit"),
    ("eval with no methods", ["eval", "{run}/best", "--data", "{shards}", "--methods", ""], "--methods"),
    ("eval with an unknown method", ["eval", "{run}/best", "--data", "{shards}", "--methods", "nosuch"], "nosuch"),
    ("localise with a PCR net of other classes", ["eval", "{w}/pcr-misfit.safetensors", "--task", "localisation",
                                                  "--data", "{repo}/shards/localisation"], "other classes"),
    ("localise greyscale data with an RGB net", ["eval", "{w}/scr-misfit.safetensors", "--task", "localisation",
                                                 "--data", "{shards}"], "takes 3-channel images"),
    ("eval a 1-channel net on photos", ["eval", "{run}/best", "--data", "{repo}/shards/localisation"], "1-channel"),
    ("eval a crafted wide record", ["eval", "{w}/huge", "--data", "{shards}"], "model.safetensors"),
    ("eval a record that is not JSON", ["eval", "{w}/badjson", "--data", "{shards}"], "model.safetensors"),
    ("eval int8 weights", ["eval", "{w}/int8", "--data", "{shards}"], "int8"),
    ("eval NaN weights", ["eval", "{w}/nan", "--data", "{shards}"], "NaN"),
    ("eval on an under-counting manifest", ["eval", "{run}/best", "--data", "{w}/undercount", "--split", "val",
                                            "--out", "{w}/e.json"], "more samples than its manifest entry"),
    # convert
    ("convert onto itself", ["convert", "{run}/best/model.safetensors", "{run}/best/model.safetensors", "--to",
                             "timm"], "is the file being converted"),
    ("convert into a folder", ["convert", "{run}/best", "{user}"], "is a folder"),
    ("convert over a user's file", ["convert", "{run}/best", "{user}/notes.txt"], "notes.txt"),
    ("convert a missing file", ["convert", "{w}/missing.safetensors", "{w}/x.safetensors"], "missing.safetensors"),
    ("convert with an unknown preprocessing", ["convert", "{run}/best", "{w}/x.safetensors", "--preprocess", "pil"],
     "--preprocess: unknown preprocessing 'pil'"),
    ("convert with a preprocessing record of NaN", ["convert", "{run}/best", "{w}/x.safetensors", "--preprocess",
                                                   "{w}/nan-prep.json"], "nan-prep.json"),
    ("convert to a .pth name", ["convert", "{run}/best", "{w}/x.pth"], "ending in .safetensors"),
    ("convert a BN file with a negative variance", ["convert", "{w}/negvar.pth", "{w}/x.safetensors"],
     "features.1.running_var holds negative variances"),
    ("eval a BN file with a negative variance", ["eval", "{w}/negvar.pth", "--data", "{shards}"], "negvar.pth"),
    ("convert float8 weights", ["convert", "{w}/fp8.pth", "{w}/x.safetensors"], "float8_e4m3fn values"),
    ("convert a state_dict keyed by a number", ["convert", "{w}/intkey.pth", "{w}/x.safetensors"],
     "intkey.pth: holds no state_dict of named tensors"),
    ("convert a sparse tensor", ["convert", "{w}/sparse.pth", "{w}/x.safetensors"], "features.0.bias is a torch.sparse"),
    ("convert a stride-0 bomb", ["convert", "{w}/bomb.pth", "{w}/x.safetensors"],
     "classifier.6.weight claims 17,179,869,184 values"),
    ("convert with std 1e-40", ["convert", "{run}/best", "{w}/x.safetensors", "--preprocess", "{w}/tinystd.json"],
     "must lie in [0.0001, 10000]"),
    ("convert with a 400-digit number", ["convert", "{run}/best", "{w}/x.safetensors", "--preprocess",
                                         "{w}/bigint.json"], "bigint.json"),
    ("convert with a record nested 100,000 deep", ["convert", "{run}/best", "{w}/x.safetensors", "--preprocess",
                                                   "{w}/deep.json"], "deep.json"),
    ("convert with num_classes=0", ["convert", "{w}/tv-rgb.pth", "{w}/x.safetensors", "--model", "num_classes=0"],
     "num_classes=0: must be a positive whole number"),
    ("predict with nets taking other channels", ["predict", "{run}/best", "{w}/tv-rgb.pth", "{w}/photo.png"],
     "tv-rgb.pth: 3"),
    ("convert a text file named .caffemodel", ["convert", "{user}/notes.caffemodel", "{w}/x.safetensors"],
     "notes.caffemodel: not a readable Caffe model"),
    # pretrained weights by name
    ("fetch weights by a misspelt name", ["weights", "fetch", "vgg16-cafe"], "did you mean 'vgg16-caffe'"),
    ("eval weights by an unknown name", ["eval", "--weights", "vgg99-caffe", "--data", "{shards}"], "vgg99-caffe"),
    ("eval weights by a misspelt name", ["eval", "--weights", "vgg16-torchvisio", "--data", "{shards}"],
     "did you mean 'vgg16-torchvision'"),
    ("extract features at an unknown tap", ["extract-features", "{run}/best", "--data", "{shards}", "--tap", "conv9_9",
                                            "--out", "{w}/f9"], "--tap 'conv9_9'"),
    ("train with an unknown preprocessing", ["train", "--data", "{shards}", "--preprocess", "pil", "--run-dir",
                                             "{w}/r3"], "--preprocess"),
    # transfer
    ("extract features over a user's file", ["extract-features", "{run}/best", "--data", "{shards}", "--splits",
                                             "val", "--out", "{w}/features"], "val.safetensors"),
    ("linear probe with C = NaN", ["linear-probe", "{w}/features", "--c", "nan"], "--c"),
    ("linear probe with C = 1e300", ["linear-probe", "{w}/features", "--c", "1e300"], "--c: must lie in"),
    ("merge at an IoU of 1.5", ["eval", "{run}/best", "--data", "{shards}", "--merge-iou", "1.5"],
     "--merge-iou: must lie in [0, 1]"),
    ("merge at an IoU of -1", ["eval", "{run}/best", "--data", "{shards}", "--merge-iou", "-1"], "--merge-iou"),
    ("merge at an IoU of NaN", ["eval", "{run}/best", "--data", "{shards}", "--merge-iou", "nan"],
     "--merge-iou: expected a finite number"),
    # compare
    ("compare an unknown architecture", ["compare", "vgg-q", "--no-timing"], "vgg-q"),
    ("compare a net larger than memory", ["compare", "vgg-a", "--input-size", "100000", "--no-timing"],
     "input_size=100000"),
    ("compare with results that are not eval's", ["compare", "{run}/best", "--results", "{user}/eval.json",
                                                   "--chart", "{w}/chart.png", "--no-timing"], "eval.json"),
    ("compare charting over a user's file", ["compare", "{run}/best", "--results", "{w}/e.json", "--chart",
                                             "{user}/notes.txt"], "notes.txt"),
    ("compare writing JSON over a user's file", ["compare", "vgg-a", "--out", "{user}/eval.json"], "eval.json"),
    ("compare a crafted wide record", ["compare", "{w}/huge", "--no-timing"], "model.safetensors"),
    # --device, checked the same way by every command
    ("eval on device tpu", ["eval", "{run}/best", "--data", "{shards}", "--device", "tpu"], "--device"),
    ("eval on device meta", ["eval", "{run}/best", "--data", "{shards}", "--device", "meta"], "--device"),
    ("eval on device mps", ["eval", "{run}/best", "--data", "{shards}", "--device", "mps"], "--device"),
    ("eval on device cuda:x", ["eval", "{run}/best", "--data", "{shards}", "--device", "cuda:x"], "--device"),
    ("eval on device cuda:-1", ["eval", "{run}/best", "--data", "{shards}", "--device", "cuda:-1"], "--device"),
    ("eval on device (empty)", ["eval", "{run}/best", "--data", "{shards}", "--device", ""], "--device"),
    ("predict on device tpu", ["predict", "{run}/best", "{w}/photo.png", "--device", "tpu"], "--device"),
    ("predict on device meta", ["predict", "{run}/best", "{w}/photo.png", "--device", "meta"], "--device"),
    ("predict on device mps", ["predict", "{run}/best", "{w}/photo.png", "--device", "mps"], "--device"),
    ("predict on device cuda:x", ["predict", "{run}/best", "{w}/photo.png", "--device", "cuda:x"], "--device"),
    ("predict on device cuda:-1", ["predict", "{run}/best", "{w}/photo.png", "--device", "cuda:-1"], "--device"),
    ("predict on device (empty)", ["predict", "{run}/best", "{w}/photo.png", "--device", ""], "--device"),
    ("compare on device tpu", ["compare", "vgg-a", "--no-timing", "--device", "tpu"], "--device"),
    ("compare on device meta", ["compare", "vgg-a", "--no-timing", "--device", "meta"], "--device"),
    ("compare on device mps", ["compare", "vgg-a", "--no-timing", "--device", "mps"], "--device"),
    ("compare on device cuda:x", ["compare", "vgg-a", "--no-timing", "--device", "cuda:x"], "--device"),
    ("compare on device cuda:-1", ["compare", "vgg-a", "--no-timing", "--device", "cuda:-1"], "--device"),
    ("compare on device (empty)", ["compare", "vgg-a", "--no-timing", "--device", ""], "--device"),
    ("extract-features on device tpu", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", "tpu"], "--device"),
    ("extract-features on device meta", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", "meta"], "--device"),
    ("extract-features on device mps", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", "mps"], "--device"),
    ("extract-features on device cuda:x", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", "cuda:x"], "--device"),
    ("extract-features on device cuda:-1", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", "cuda:-1"], "--device"),
    ("extract-features on device (empty)", ["extract-features", "{run}/best", "--data", "{shards}", "--out", "{w}/fd", "--device", ""], "--device"),
    # an output path holding vggtk's own file of another kind
    ("eval over a checkpoint's weights", ["eval", "{run}/best", "--data", "{shards}", "--out",
                                          "{user}/ckpt/model.safetensors"], "holds vggtk's weights"),
    ("eval over a checkpoint's state", ["eval", "{run}/best", "--data", "{shards}", "--out", "{user}/ckpt/state.json"],
     "holds vggtk's checkpoint state"),
    ("eval over a manifest", ["eval", "{run}/best", "--data", "{shards}", "--out", "{user}/set/manifest.json"],
     "holds vggtk's shard manifest"),
    ("eval over a run's config", ["eval", "{run}/best", "--data", "{shards}", "--out", "{user}/run/config.json"],
     "holds vggtk's run configuration"),
    ("eval's confusion over a run's plot", ["eval", "{run}/best", "--data", "{shards}", "--out", "{w}/e2.json",
                                            "--confusion", "{user}/run/metrics.png"], "holds vggtk's training plot"),
    ("predict over a manifest", ["predict", "{run}/best", "{w}/photo.png", "--out", "{user}/set/manifest.json"],
     "manifest.json: holds vggtk's shard manifest"),
    ("predict over eval's results", ["predict", "{run}/best", "{w}/photo.png", "--out", "{user}/results.json"],
     "results.json: holds vggtk's evaluation results"),
    ("inspect's sheet over a run's plot", ["shards", "inspect", "{shards}", "--sheet", "{user}/run/metrics.png"],
     "metrics.png: holds vggtk's training plot"),
    ("compare's chart over a run's plot", ["compare", "{run}/best", "--results", "{user}/results.json", "--chart",
                                           "{user}/run/metrics.png", "--no-timing"], "metrics.png"),
    ("compare's table over eval's results", ["compare", "vgg-a", "--out", "{user}/results.json", "--no-timing"],
     "results.json: holds vggtk's evaluation results"),
    ("features over a weights file", ["extract-features", "{run}/best", "--data", "{shards}", "--splits", "val",
                                      "--out", "{user}/feat"], "val.safetensors: holds vggtk's weights"),
    ("convert over a features file", ["convert", "{run}/best", "{user}/features.safetensors"],
     "features.safetensors: holds vggtk's features"),
    ("compare with num_classes as an option", ["compare", "vgg-a", "--option", "num_classes=5", "--no-timing"],
     "give it as --num-classes"),
    ("compare with in_chans as an option", ["compare", "vgg-a", "--option", "in_chans=1", "--no-timing"],
     "give it as --in-chans"),
    ("compare with a factory option no net takes", ["compare", "vgg-a", "--option", "depth=50", "--no-timing"],
     "depth"),
]


@pytest.mark.parametrize("case,args,names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, shards, trained, capsys, case, args, names):
    w, user = world
    if case == "train on one class" and not (w / "oneclass-shards").exists():
        with pytest.raises(SystemExit):
            main(["shards", "create", str(w / "oneclass"), str(w / "oneclass-shards")])
        capsys.readouterr()
    fill = {"w": w, "user": user, "shards": shards, "run": trained[0], "repo": REPO}
    before = snapshot(user)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vggtk: error: "), err
    assert names in lines[0], lines[0]
    assert snapshot(user) == before
