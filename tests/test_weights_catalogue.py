"""Named weights over a loopback HTTP server (CI has no network): fetched into torch's hub cache and checked
before they take their name, reused from the cache, a corrupt or short file refused and removed, an
offline machine told where to put the file, VGGTK_WEIGHTS_URL as the mirror, a Caffe release converted
once, and names accepted wherever a checkpoint is."""

import hashlib
import io
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

import vgg_toolkit as vt
from caffe_writer import random_vgg, write_vgg
from cli_runner import input_error, vggtk
from pretrained_refs import real_photos, torchvision_state
from vgg_toolkit.models import catalogue
from vgg_toolkit.models.weights import read_model_info

BLOCKS = [(8, 2), (16, 2), (32, 3), (64, 3), (64, 3)]


class _Quiet(SimpleHTTPRequestHandler):
    endless: set = set()  # file names served as an endless stream of zeros, with no Content-Length

    def do_GET(self):
        if self.path.rsplit("/", 1)[-1] not in self.endless:
            return super().do_GET()
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(4096):  # 256 MiB at most: the client must stop long before
                self.wfile.write(b"\0" * (1 << 16))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(served folder, the originals): a torchvision-layout .pth named with its sha256 prefix and a small
    Caffe release, in a test catalogue; TORCH_HOME and VGGTK_WEIGHTS_URL point at the test's."""
    www = tmp_path / "www"
    www.mkdir()
    buf = io.BytesIO()
    torch.save(torchvision_state(seed=5), buf)
    pth = buf.getvalue()
    tv_name = f"tiny-{hashlib.sha256(pth).hexdigest()[:8]}.pth"
    (www / tv_name).write_bytes(pth)
    write_vgg(www / "TINY_16_layers.caffemodel", random_vgg(seed=6, blocks=BLOCKS, fc_dim=32, classes=1000), BLOCKS)
    caffe = (www / "TINY_16_layers.caffemodel").read_bytes()
    entries = [
        {"name": "tiny-torchvision", "arch": "vgg-a", "options": {"batch_norm": False}, "family": "torchvision",
         "url": f"https://download.example.org/models/{tv_name}", "file": tv_name,
         "sha256_prefix": tv_name[5:13], "size_mib": round(len(pth) / 2 ** 20, 3),
         "source": "the test", "licence": "none", "accuracy": []},
        {"name": "tiny-caffe", "arch": "vgg-d", "options": {"batch_norm": False}, "family": "caffe",
         "url": "http://www.example.org/caffe/TINY_16_layers.caffemodel", "file": "TINY_16_layers.caffemodel",
         "bytes": len(caffe), "md5": hashlib.md5(caffe).hexdigest(), "source": "the test", "licence": "none",
         "accuracy": [{"top1_err": 1.0, "top5_err": 0.5, "split": "val", "protocol": "dense, Q = 384"}]},
    ]
    listing = tmp_path / "catalogue.json"
    listing.write_text(json.dumps({"format": "vggtk-weights-catalogue/1", "weights": entries}))
    monkeypatch.setattr(catalogue, "CATALOGUE", listing)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    _Quiet.endless = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("VGGTK_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    yield www, {"tiny-torchvision": (tv_name, pth), "tiny-caffe": ("TINY_16_layers.caffemodel", caffe)}
    server.shutdown()
    server.server_close()


def _cache(tmp_path):
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def test_fetch_checks_and_keeps_the_file_in_torchs_hub_cache(served, tmp_path):
    _, originals = served
    listed = json.loads(vggtk("weights", "list", "--json").output)["weights"]
    assert [(w["name"], w["cached"]) for w in listed] == [("tiny-torchvision", None), ("tiny-caffe", None)]
    assert listed[0]["url"].startswith("http://127.0.0.1:")  # the mirror replaces the directory, keeps the name
    result = vggtk("weights", "fetch", "tiny-torchvision")
    assert result.exit_code == 0, result.output
    name, data = originals["tiny-torchvision"]
    assert (_cache(tmp_path) / name).read_bytes() == data
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == [name]  # no temporary file left
    table = vggtk("weights", "list")
    assert "tiny-torchvision" in table.output and "yes" in table.output


def test_a_cached_file_is_used_without_the_network(served, tmp_path, monkeypatch):
    www, originals = served
    assert vggtk("weights", "fetch", "tiny-torchvision").exit_code == 0
    (www / originals["tiny-torchvision"][0]).unlink()  # the server no longer has it
    photo = tmp_path / "photo.png"
    Image.fromarray(real_photos()["chelsea"]).save(photo)
    result = vggtk("predict", "tiny-torchvision", photo, "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top5"][0]["class"].startswith("n")


@pytest.mark.parametrize("damage,says", [("corrupt", "does not start with"), ("short", "MiB, not the")])
def test_a_corrupt_or_short_download_is_refused_and_leaves_nothing(served, tmp_path, damage, says):
    www, originals = served
    name, data = originals["tiny-torchvision"]
    broken = bytearray(data)
    if damage == "corrupt":
        broken[len(broken) // 2] ^= 0xFF
    else:
        broken = broken[: len(broken) // 3]
    (www / name).write_bytes(bytes(broken))
    message = input_error(vggtk("weights", "fetch", "tiny-torchvision"))
    assert name in message and "refused" in message and says in message, message
    assert not _cache(tmp_path).exists() or list(_cache(tmp_path).iterdir()) == []


def test_offline_and_not_cached_says_the_file_its_url_and_where_to_put_it(served, tmp_path, monkeypatch):
    monkeypatch.setenv("VGGTK_WEIGHTS_URL", "http://127.0.0.1:9/")  # the discard port: nothing listens
    name = served[1]["tiny-torchvision"][0]
    message = input_error(vggtk("eval", "--weights", "tiny-torchvision", "--data", "shards/localisation"))
    assert f"http://127.0.0.1:9/{name}: cannot download" in message
    assert f"put the file at {_cache(tmp_path) / name}" in message


def test_without_a_mirror_the_entrys_own_url_is_used(served, monkeypatch):
    monkeypatch.delenv("VGGTK_WEIGHTS_URL")
    assert catalogue.get_entry("tiny-caffe").location == "http://www.example.org/caffe/TINY_16_layers.caffemodel"


def test_a_caffe_release_is_converted_once_and_recorded(served, tmp_path):
    result = vggtk("weights", "fetch", "tiny-caffe")
    assert result.exit_code == 0, result.output
    converted = _cache(tmp_path) / "TINY_16_layers.vggtk.safetensors"
    info = read_model_info(converted)
    assert info.preprocessing == vt.Preprocessing.caffe() and info.options["ceil_pool"]
    assert info.classes == vt.imagenet_classes() and str(info.train_scale) == "[256;512]"
    stamp = converted.stat().st_mtime_ns
    model = vt.load_trained("tiny-caffe", say=None)
    assert vt.model_info(model).arch == "vgg-d" and converted.stat().st_mtime_ns == stamp  # not converted again


def test_an_unknown_name_is_one_line_with_the_closest(served, tmp_path):
    message = input_error(vggtk("weights", "fetch", "tiny-torchvison"))
    assert "'tiny-torchvison': no such weights in the catalogue (did you mean 'tiny-torchvision'?)" in message
    missing = input_error(vggtk("eval", "--weights", "nothing-like-it", "--data", "shards/localisation"))
    assert "nothing-like-it" in missing


def test_the_bundled_catalogue_lists_the_papers_and_torchvisions_weights():
    entries = {e.name: e for e in catalogue._read(catalogue.CATALOGUE)}
    assert {f"vgg{n}{bn}-torchvision" for n in (11, 13, 16, 19) for bn in ("", "-bn")} | {"vgg16-caffe", "vgg19-caffe"} \
        == set(entries)
    assert entries["vgg16-caffe"].expected.bytes == 553_432_081 and entries["vgg19-caffe"].expected.bytes == 574_671_192
    assert entries["vgg16-torchvision"].file == "vgg16-397923af.pth"
    assert entries["vgg16-torchvision"].expected.sha256_prefix == "397923af"
    assert all(np.isfinite(a["top5_err"]) and a["protocol"] for e in entries.values() for a in e.accuracy)


def test_a_server_that_sends_more_than_the_file_is_stopped_early(served, tmp_path):
    name = served[1]["tiny-torchvision"][0]
    _Quiet.endless = {name}
    message = input_error(vggtk("weights", "fetch", "tiny-torchvision"))
    assert "refused: more than the" in message and "bytes expected" in message
    assert not _cache(tmp_path).exists() or list(_cache(tmp_path).iterdir()) == []


def test_a_converted_release_in_the_cache_is_checked_before_it_is_used(served, tmp_path):
    converted = _cache(tmp_path) / "TINY_16_layers.vggtk.safetensors"
    converted.parent.mkdir(parents=True)
    converted.write_bytes(b"")  # a leftover, or someone else's file under the name
    message = input_error(vggtk("weights", "fetch", "tiny-caffe"))
    assert "is not tiny-caffe converted by vggtk" in message and "move it away" in message
    assert converted.read_bytes() == b""  # not ours to replace
