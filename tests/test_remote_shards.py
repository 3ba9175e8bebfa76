"""Shards read from a URL: the bundled and test shards served over HTTP on 127.0.0.1 inside the test (and
through a ``pipe:`` command) give the same samples, order and numbers as the directory, and a server
that cuts a shard short, or a shard that differs from its manifest, is an error naming the URL."""

import json
import shutil
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_runner import input_error, vggtk
from vgg_toolkit import DataError
from vgg_toolkit.data.loader import make_loader
from vgg_toolkit.data.shards.location import beside
from vgg_toolkit.data.shards.manifest import Manifest

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="WebDataset opens http:// URLs with curl")

SHARDS = Path(__file__).resolve().parents[1] / "shards"


class _Handler(SimpleHTTPRequestHandler):
    cut: set = set()  # file names sent with their full Content-Length but only half their bytes

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.cut:
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, shards):
    """(base URL, served folder): the folder holds ``fm`` (the bundled Fashion-MNIST shards) and ``tiny``
    (the test's small set), copied so that a test may change them."""
    root = tmp_path / "www"
    shutil.copytree(SHARDS / "fashion-mnist", root / "fm")
    shutil.copytree(shards, root / "tiny")
    _Handler.cut = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def _batches(source, **kwargs):
    return [(list(b.keys), b.images, b.labels) for b in make_loader(source, "val", batch_size=100, **kwargs)]


def test_shard_names_resolve_beside_their_manifest():
    assert beside("http://h:8/set/manifest.json", "train-000000.tar") == "http://h:8/set/train-000000.tar"
    assert beside("pipe:aws s3 cp s3://b/set/manifest.json -", "val-000001.tar") == \
        "pipe:aws s3 cp s3://b/set/val-000001.tar -"
    assert beside("/data/set/manifest.json", "a.tar") == "/data/set/a.tar"
    for bad in ("../a.tar", "sub/a.tar"):
        with pytest.raises(DataError, match="plain file name"):
            beside("http://h/set/manifest.json", bad)
    with pytest.raises(DataError, match="must name manifest.json"):
        beside("pipe:cat index.json", "a.tar")


def test_reading_from_a_url_gives_the_directorys_samples_in_its_order(served):
    url, root = served
    kwargs = dict(augment="train", seed=4, epoch=2, num_workers=2, shuffle=True)
    local, remote = _batches(root / "fm", **kwargs), _batches(f"{url}/fm/manifest.json", **kwargs)
    assert [k for k, _, _ in local] == [k for k, _, _ in remote] and len(sum((k for k, _, _ in local), [])) == 2000
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (_, a, la), (_, b, lb) in zip(local, remote))
    piped = _batches(f"pipe:cat {root / 'fm' / 'manifest.json'}", **kwargs)
    assert [k for k, _, _ in piped] == [k for k, _, _ in local]


def test_each_sample_once_across_two_ranks_and_two_workers_from_a_url(served):
    url, _ = served
    seen = Counter()
    for rank in range(2):
        for batch in make_loader(f"{url}/fm/manifest.json", "val", batch_size=64, augment="none", seed=5, epoch=1,
                                 rank=rank, world_size=2, num_workers=2, shuffle=True, drop_last=False):
            seen.update(batch.keys)
    assert len(seen) == 2000 and max(seen.values()) == 1


@pytest.mark.parametrize("where", ["streamed", "in memory"])
def test_training_and_evaluating_from_a_url_match_the_directory(served, tmp_path, monkeypatch, where):
    url, root = served
    if where == "streamed":
        monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)
    runs = {}
    for name, data in (("dir", root / "tiny"), ("url", f"{url}/tiny/manifest.json")):
        result = vggtk("train", "--data", data, "--run-dir", tmp_path / name, "--epochs", 1, "--batch-size", 16,
                       "--lr", 0.02, "--keep-last", 1)
        assert result.exit_code == 0, result.output
        evaluated = vggtk("eval", tmp_path / name / "best", "--data", data, "--out", tmp_path / f"{name}.json")
        assert evaluated.exit_code == 0, evaluated.output
        runs[name] = (load_file(str(sorted((tmp_path / name).glob("ckpt-*"))[-1] / "model.safetensors")),
                      json.loads((tmp_path / f"{name}.json").read_text()))
    (weights_dir, eval_dir), (weights_url, eval_url) = runs["dir"], runs["url"]
    assert all(torch.equal(weights_dir[k], weights_url[k]) for k in weights_dir)
    assert eval_url["data"] == f"{url}/tiny/manifest.json"
    untimed = [[{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in e["results"]]
               for e in (eval_dir, eval_url)]
    assert untimed[0] == untimed[1] and untimed[0][0]["images"] > 0


def test_features_inspect_and_verify_take_a_url(served, tmp_path, trained):
    url, _ = served
    run, _ = trained
    data = f"{url}/tiny/manifest.json"
    features = vggtk("extract-features", run / "best", "--data", data, "--splits", "val", "--out", tmp_path / "f")
    assert features.exit_code == 0, features.output
    assert len(load_file(str(tmp_path / "f" / "val.safetensors"))["labels"]) == Manifest.load(data).samples("val")
    inspected = vggtk("shards", "inspect", data, "--sheet", tmp_path / "sheet.png")
    assert inspected.exit_code == 0 and (tmp_path / "sheet.png").is_file(), inspected.output
    verified = vggtk("shards", "verify", data)
    assert verified.exit_code == 0, verified.output


def test_a_shard_the_server_cuts_short_is_an_error_naming_its_url(served):
    url, root = served
    victim = Manifest.load(root / "fm").split("val")[0].name
    _Handler.cut = {victim}
    with pytest.raises(DataError, match=rf"{url}/fm/{victim}.*(truncated|cut short)"):
        _batches(f"{url}/fm/manifest.json", augment="none")
    failed = vggtk("shards", "verify", f"{url}/fm/manifest.json", "--split", "val")
    assert failed.exit_code != 0 and f"{url}/fm/{victim}" in failed.output.replace("\n", "")


def test_a_remote_shard_that_differs_from_its_manifest_is_an_error_naming_its_url(served):
    url, root = served
    manifest = json.loads((root / "fm" / "manifest.json").read_text())
    entry = manifest["splits"]["val"]["shards"][0]
    entry["sha256"] = "0" * 64
    (root / "fm" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{url}/fm/{entry['name']}\]?: sha256 .* does not match"):
        _batches(f"{url}/fm/manifest.json", augment="none")
    assert len(sum((k for k, _, _ in _batches(f"{url}/fm/manifest.json", augment="none", verify="size")), [])) == 2000


def test_a_missing_manifest_url_is_one_clear_line(served, tmp_path):
    url, _ = served
    failed = vggtk("train", "--data", f"{url}/nowhere/manifest.json", "--run-dir", tmp_path / "run")
    assert f"{url}/nowhere/manifest.json: manifest not readable" in input_error(failed)


def test_a_shard_cache_keeps_checked_copies_and_reads_them_offline(served, tmp_path, monkeypatch):
    url, root = served
    monkeypatch.setenv("VGGTK_SHARD_CACHE", str(tmp_path / "cache"))
    entry = Manifest.load(root / "fm").split("val")[0]
    first = _batches(f"{url}/fm/manifest.json", augment="none")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{entry.sha256}-{entry.name}"]
    (root / "fm" / entry.name).unlink()  # the server no longer has it: the next read must come from the cache
    again = _batches(f"{url}/fm/manifest.json", augment="none")
    assert [k for k, _, _ in again] == [k for k, _, _ in first]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(first, again))


def test_a_shard_that_fails_its_check_is_not_cached(served, tmp_path, monkeypatch):
    url, root = served
    monkeypatch.setenv("VGGTK_SHARD_CACHE", str(tmp_path / "cache"))
    _Handler.cut = {Manifest.load(root / "fm").split("val")[0].name}
    with pytest.raises(DataError):
        _batches(f"{url}/fm/manifest.json", augment="none")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a copy nor a partial file stays


def _flip_first_label(shard: Path) -> str:
    """Change the first ``.cls`` member of an uncompressed shard in place (same size): a wrong label that
    nothing but the checksum can tell. Returns the sample's key."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".cls"))
    data = bytearray(shard.read_bytes())
    digit = data[member.offset_data]
    data[member.offset_data] = ord("1") if digit != ord("1") else ord("2")
    shard.write_bytes(bytes(data))
    return member.name.rsplit(".", 1)[0]


def _keys(shard: Path) -> set:
    import tarfile

    with tarfile.open(shard) as tar:
        return {m.name.rsplit(".", 1)[0] for m in tar.getmembers()}


@pytest.fixture
def changed(served, shards):
    """(local folder, its URL, the changed shard's name and sample count): an uncompressed copy of the
    test's set, served, one byte of the first of its three train shards changed (a label)."""
    url, root = served
    made = vggtk("shards", "create", shards.parent / "src", root / "plain", "--splits", "train=0.6,val=0.2,test=0.2",
                 "--samples-per-shard", 50, "--compress", "no")
    assert made.exit_code == 0, made.output
    manifest = Manifest.load(root / "plain")
    entry = manifest.split("train")[0]
    _flip_first_label(root / "plain" / entry.name)
    return root / "plain", f"{url}/plain/manifest.json", (entry.name, entry.samples)


@pytest.mark.parametrize("where", ["local", "remote"])
def test_no_sample_of_a_changed_training_shard_reaches_the_model(changed, where):
    folder, url, (name, count) = changed
    source = folder if where == "local" else url
    loader = make_loader(source, "train", batch_size=8, augment="none", num_workers=2, shuffle=True, seed=3,
                         on_error="skip", drop_last=False)
    keys = [k for batch in loader for k in batch.keys]
    total = Manifest.load(folder).samples("train")
    assert len(keys) == total - count and loader.skipped.total == count
    assert loader.skipped.counts == {"checksum mismatch": count}
    assert not set(keys) & _keys(folder / name)


@pytest.mark.parametrize("where", ["local", "remote"])
def test_training_on_a_changed_shard_stops_before_it_starts(changed, tmp_path, monkeypatch, where):
    folder, url, (name, _) = changed
    monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)  # streamed, as a large set is
    source = folder if where == "local" else url
    # Three workers split the 144 samples at 48 and 96, inside each 50-sample shard whatever their order:
    # no worker reads the changed shard to its end.
    failed = vggtk("train", "--data", source, "--run-dir", tmp_path / "run", "--epochs", 1, "--batch-size", 16,
                   "--workers", 3)
    message = input_error(failed)
    assert name in message and "sha256" in message
    assert not list((tmp_path / "run").glob("ckpt-*"))


def test_eval_under_skip_counts_a_changed_remote_shard(changed, trained, tmp_path):
    folder, url, (_, count) = changed
    total = Manifest.load(folder).samples("train")
    result = vggtk("eval", trained[0] / "best", "--data", url, "--split", "train", "--methods", "center",
                   "--on-error", "skip", "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert f"skipped {count} bad sample(s): {count} checksum mismatch" in result.stderr, result.stderr
    written = json.loads((tmp_path / "e.json").read_text())
    assert written["results"][0]["images"] == total - count
    assert written["skipped"]["total"] == count and written["skipped"]["by_kind"] == {"checksum mismatch": count}
    assert written["on_error"] == "skip" and written["limit"] is None
    limited = vggtk("eval", trained[0] / "best", "--data", folder, "--split", "val", "--methods", "center",
                    "--limit", 10, "--out", tmp_path / "l.json")
    assert limited.exit_code == 0, limited.output
    written = json.loads((tmp_path / "l.json").read_text())
    assert written["limit"] == 10 and written["results"][0]["images"] == 10 and written["skipped"]["total"] == 0



def test_a_remote_failure_is_named_by_its_cause(served, tmp_path):
    """A shard the server does not have is an HTTP error, not a corrupt tar; one cut short under --on-error
    skip is counted as cut short, not as a checksum mismatch."""
    url, root = served
    manifest = Manifest.load(root / "tiny")
    first, second = manifest.split("train")[:2]
    (root / "tiny" / first.name).unlink()
    failed = vggtk("train", "--data", f"{url}/tiny/manifest.json", "--run-dir", tmp_path / "run", "--epochs", 1,
                   "--batch-size", 16)
    message = input_error(failed)
    assert first.name in message and "HTTP error" in message and "corrupt" not in message
    _Handler.cut = {second.name}
    loader = make_loader(f"{url}/tiny/manifest.json", "train", batch_size=8, augment="none", on_error="skip",
                         drop_last=False)
    list(loader)
    assert loader.skipped.counts == {"missing shard": first.samples, "truncated shard": second.samples}
