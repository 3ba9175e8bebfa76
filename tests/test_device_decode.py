"""JPEG decoding on the training device: the workers hand over bytes and geometry, ``finish`` decodes and
resamples there. No CPU machine has nvJPEG, so the device's decoder is stood in for by a full-size
decode with PIL (``pillow_decoder``), which is what nvJPEG does too (no DCT scaling); the rest is the code
a GPU runs."""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data._utils.pin_memory import pin_memory

from vgg_toolkit import TrainScale
from vgg_toolkit.data.decode import LazyImage
from vgg_toolkit.data.device_decode import DeviceDecoder, jpeg_decoder, pillow_decoder
from vgg_toolkit.data.errors import DataError
from vgg_toolkit.data.loader import Batch
from vgg_toolkit.data.pipeline import train_pipeline
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.runtime.distributed import DistEnv
from vgg_toolkit.train.batches import ShardSource

PHOTOS = Path(__file__).resolve().parents[1] / "shards" / "localisation"
CPU = torch.device("cpu")


def refusing_decoder():
    def decode(data, channels, device):
        raise RuntimeError("nvjpeg: unsupported format")

    return DeviceDecoder(decode, "refusing")


def sources(decoder, seed=3, crop=96, scale=TrainScale(112, 224), workers=0):
    manifest = Manifest.load(PHOTOS / "manifest.json")
    pipeline = train_pipeline(manifest, crop=crop, scale=scale)
    return (ShardSource(manifest, pipeline, seed=seed, workers=workers, on_error="fail", decoder=decoder),
            ShardSource(manifest, pipeline, seed=seed, workers=workers, on_error="fail"))


@pytest.mark.parametrize("crop, scale", [(96, TrainScale(112, 224)), (40, TrainScale(48, 64))])
def test_the_workers_leave_jpegs_encoded_and_the_device_makes_their_pixels(host, monkeypatch, crop, scale):
    """At S >= 112 the workers decode these 256x192 photos at full size, as the device does; at S <= 64
    they decode at a quarter or half size in the DCT, the device in full and then averages."""
    device, workers = sources(pillow_decoder(), crop=crop, scale=scale)
    decodes = []
    real = LazyImage.materialize
    monkeypatch.setattr(LazyImage, "materialize", lambda self: decodes.append(1) or real(self))
    env, diffs, compared = DistEnv(), [], 0
    for epoch in (0, 1):
        pairs = zip(device.train_batches(epoch, 0, env, 16, 16), workers.train_batches(epoch, 0, env, 16, 16))
        for i, (a, b) in enumerate(pairs):
            before = len(decodes)
            assert a.keys == b.keys and torch.equal(a.labels, b.labels)
            # no placeholder pixels: the batch carries the encoded images alone
            assert a.pending.rows == list(range(16)) and a.images.shape == (0, 3, crop, crop)
            x = device.finish(a, CPU, epoch)
            assert len(decodes) == before  # nothing decoded the worker's way: the device did it all
            assert a.pending is None and a.images.shape == (16, 3, crop, crop)  # assembled, for what reads it next
            diffs.append((x - workers.finish(b, CPU, epoch)).abs() * 255)
            compared += len(a.keys)
            if i == 2:
                break
    diff = torch.stack(diffs)
    # The same crop, flip and colour shift (a wrong one moves most pixels by tens of levels) and the same
    # filter: measured 0.16 levels on average at S >= 112, 0.37 at S <= 64 (3.6 before the device
    # averaged where libjpeg scales in the DCT), with about one pixel in 35,000 over 12 levels.
    assert compared == 96 and float(diff.mean()) < 0.6 and float((diff > 12).float().mean()) < 1e-3
    assert device.decoder.refused == 0 and device.decoder.active


@pytest.mark.parametrize("processes", [0, 2])
def test_what_the_device_decoder_refuses_is_decoded_as_the_workers_do(host, processes, capfd):
    """Also through worker processes: the encoded images cross the DataLoader's queue. A decoder that
    refuses a whole batch is switched off, and the next epoch's workers decode again."""
    device, workers = sources(refusing_decoder(), workers=processes)
    env, compared = DistEnv(), 0
    for a, b in zip(device.train_batches(1, 0, env, 16, 16), workers.train_batches(1, 0, env, 16, 16)):
        assert a.keys == b.keys and len(a.pending) == 16  # this epoch's loader was made to leave them
        assert torch.equal(device.finish(a, CPU, 1), workers.finish(b, CPU, 1))
        compared += 16
    assert compared == 192 and device.decoder.refused == 192 and not device.decoder.active
    err = capfd.readouterr().err
    assert "--decode device: refusing refused an image (RuntimeError: nvjpeg: unsupported format)" in err
    assert "refused a whole batch; the workers decode from the next epoch on" in err
    assert all(batch.pending is None for batch in device.train_batches(2, 0, env, 16, 16))


def test_an_image_only_the_cpu_reads_is_counted_and_the_decoder_stays_on(host, capfd):
    def picky(data, channels, device):
        if len(data) > 1 or data[0][-3] % 2:  # refuses a batch, and one image in two when alone
            raise RuntimeError("unsupported")
        return pillow_decoder().decode(data, channels, device)

    device, workers = sources(DeviceDecoder(picky, "picky"))
    for a, b in zip(device.train_batches(0, 0, DistEnv(), 16, 16), workers.train_batches(0, 0, DistEnv(), 16, 16)):
        refused = sum(d[-3] % 2 for d in a.pending.data)
        diff = (device.finish(a, CPU, 0) - workers.finish(b, CPU, 0)).abs() * 255
        assert 0 < refused < 16 and device.decoder.refused == refused and device.decoder.active
        assert float(diff.mean()) < 0.6
        break
    assert capfd.readouterr().err.count("--decode device:") == 1


def _broken_batch(source, size=8, row=2):
    batch = next(iter(source.train_batches(0, 0, DistEnv(), size, size)))
    data = batch.pending.data[row]
    batch.pending.data[row] = data[:len(data) // 3]  # the header reads; the image data stops a third in
    return batch


def test_an_image_no_decoder_reads_is_dropped_under_skip_and_named_under_fail(host):
    source, _ = sources(pillow_decoder())
    source.on_error = "skip"
    batch = _broken_batch(source)
    keys, member = list(batch.keys), batch.pending.where[2][1]
    x = source.finish(batch, CPU, 0)
    assert x.shape[0] == 7 and len(batch.labels) == 7 and batch.keys == keys[:2] + keys[3:]
    images, labels = batch
    assert len(images) == len(labels) == 7  # the batch stays whole: images, labels and keys alike
    count, what = source.pop_skipped()
    assert count == 1 and member in what

    source.on_error = "fail"
    batch = _broken_batch(source)
    with pytest.raises(DataError, match=member):
        source.finish(batch, CPU, 0)


def test_a_batch_of_which_nothing_decodes_says_how_to_skip_it(host):
    source, _ = sources(pillow_decoder())
    source.on_error = "skip"
    batch = _broken_batch(source, size=1, row=0)
    member = batch.pending.where[0][1]
    with pytest.raises(DataError, match=f"no image of this batch of 1 decodes .*{member}.*--decode workers"):
        source.finish(batch, CPU, 0)


def test_no_device_decoder_off_cuda_or_without_torchvision(monkeypatch):
    decoder, why = jpeg_decoder(CPU)
    assert decoder is None and "CUDA" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the CUDA check, to the import
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what an environment without it looks like
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    decoder, why = jpeg_decoder(torch.device("cuda"))
    assert decoder is None and "torchvision" in why


def test_a_batch_pins_its_images_for_the_copy_to_the_device(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.shape) or self)
    batch = Batch(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), list("abcd"))
    assert pin_memory(batch) is batch and pinned == [(4, 3, 8, 8)]  # the DataLoader's pinning thread


def test_only_jpegs_are_left_encoded_in_a_batch_of_mixed_formats(host, tmp_path):
    """A PNG in the batch is decoded by the worker as before; the JPEGs around it wait for the device."""
    import skimage.data

    from vgg_toolkit.data.shards.create import create_shards
    from vgg_toolkit.data.sources import image_folder

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    for i in range(8):
        folder = tmp_path / "photos" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(photos[i % 3]).resize((96, 72))
        img.save(folder / (f"{i}.png" if i % 4 == 0 else f"{i}.jpg"), quality=90)
    manifest = create_shards(image_folder(tmp_path / "photos"), tmp_path / "shards", samples_per_shard=8,
                             splits={"train": 1.0}, compress=False)
    pipeline = train_pipeline(manifest, crop=32, scale=TrainScale(36, 48))
    device = ShardSource(manifest, pipeline, seed=0, workers=0, on_error="fail", decoder=pillow_decoder())
    workers = ShardSource(manifest, pipeline, seed=0, workers=0, on_error="fail")
    env = DistEnv()
    a, b = next(iter(device.train_batches(0, 0, env, 8, 8))), next(iter(workers.train_batches(0, 0, env, 8, 8)))
    members = dict(zip(a.pending.rows, a.pending.where))
    assert len(a.pending) == 6 and all(member.endswith(".jpg") for _, member in members.values())
    pngs = [i for i in range(8) if i not in members]
    assert len(pngs) == 2 and torch.equal(a.images, b.images[pngs])  # the workers' rows: the PNGs alone
    x, y = device.finish(a, CPU, 0), workers.finish(b, CPU, 0)
    assert torch.equal(x[pngs], y[pngs]) and float(((x - y).abs() * 255).mean()) < 1.0
