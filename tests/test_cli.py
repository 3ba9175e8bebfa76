"""The command line: tables, conversion, and one-line errors instead of tracebacks."""

import pytest
import torch

from cli_runner import input_error, vggtk
from safetensors.torch import save_file

from vgg_toolkit import create_model, load_weights, read_model_info, save_weights
from vgg_toolkit.cli import main
from vgg_toolkit.models.weights import read_tensors


def test_models_table_has_the_exact_counts():
    result = vggtk("models")
    assert result.exit_code == 0, result.output
    for count in ["132,863,336", "133,047,848", "133,638,952", "138,357,544", "143,667,240"]:
        assert count in result.output
    row = next(line for line in result.output.splitlines() if "vgg-d " in line)
    assert "16" in row and "15.5" in row and "212 px" in row


def test_plugins_table_lists_builtins_with_what_they_register():
    result = vggtk("plugins")
    assert result.exit_code == 0, result.output
    assert "vgg-toolkit" in result.output and "architectures: vgg-a, vgg-a-lrn" in result.output


def test_convert_between_layouts_keeps_the_model_record(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg-a", num_classes=5, in_chans=1, width=1 / 16, fc_dim=16, input_size=32, init="glorot")
    src = save_weights(model, tmp_path / "a.safetensors")
    tv = tmp_path / "a_tv.safetensors"
    result = vggtk("convert", src, tv, "--to", "torchvision")
    assert result.exit_code == 0, result.output
    assert "(vggtk layout)" in result.output and "(torchvision layout)" in result.output
    assert "classifier.6.weight" in read_tensors(tv)
    assert read_model_info(tv) == read_model_info(src)  # a round trip through another layout keeps it
    back = tmp_path / "a_back.safetensors"
    result = vggtk("convert", tv, back)
    assert result.exit_code == 0, result.output
    assert read_model_info(back) == read_model_info(src)
    assert all(torch.equal(read_tensors(back)[k], v) for k, v in model.state_dict().items())
    before = back.read_bytes()
    assert "is the file being converted" in input_error(vggtk("convert", back, back, "--to", "timm"))
    assert back.read_bytes() == before  # converting in place would lose the original


def test_convert_reads_a_foreign_files_architecture_from_its_tensors_or_from_arch(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg-a", num_classes=5, in_chans=1, width=1 / 16, fc_dim=16, input_size=32)
    foreign = tmp_path / "theirs.safetensors"
    save_file(model.export_state_dict("torchvision"), str(foreign))  # as another library writes it: no record
    out = tmp_path / "ours.safetensors"
    found = vggtk("convert", foreign, out)
    assert found.exit_code == 0, found.output
    assert "theirs.safetensors: torchvision layout, vgg-a" in found.stderr.replace("\n", "")
    assert read_model_info(out).options == {"num_classes": 5, "in_chans": 1, "width": 0.0625, "fc_dim": 16,
                                            "input_size": 32, "batch_norm": False}
    out.unlink()
    assert vggtk("convert", foreign, out, "--arch", "vgg-a").exit_code == 0  # what the tensors say is kept
    assert read_model_info(out).options["width"] == 0.0625 and read_model_info(out).preprocessing is not None
    out.unlink()
    assert "do not fit" in input_error(vggtk("convert", foreign, out, "--arch", "vgg-a", "--model", "width=0.125"))
    assert "widht: not an option of architecture 'vgg-a' (did you mean 'width'?)" in \
        input_error(vggtk("convert", foreign, out, "--arch", "vgg-a", "--model", "widht=0.0625"))
    result = vggtk("convert", foreign, out, "--arch", "vgg-a", "--model", "width=0.0625", "--model", "fc_dim=16",
                   "--model", "input_size=32", "--model", "in_chans=1")
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.arch == "vgg-a" and info.options == {"num_classes": 5, "width": 0.0625, "fc_dim": 16,
                                                     "input_size": 32, "in_chans": 1, "batch_norm": False}
    assert all(torch.equal(read_tensors(out)[k], v) for k, v in model.state_dict().items())


def test_convert_keeps_the_recorded_options_that_arch_and_model_do_not_change(tmp_path):
    model = create_model("vgg-a", num_classes=5, in_chans=1, width=1 / 16, fc_dim=16, input_size=32)
    src = save_weights(model, tmp_path / "a.safetensors")
    for args in (["--arch", "vgg-a"], ["--arch", "vgg11"], ["--model", "dropout=0.3"]):
        out = tmp_path / f"{len(args)}{args[-1]}.safetensors"
        result = vggtk("convert", src, out, *args)
        assert result.exit_code == 0, (args, result.output)
        assert {k: v for k, v in read_model_info(out).options.items() if k != "dropout"} == \
            {k: v for k, v in read_model_info(src).options.items() if k != "dropout"}, args


def test_convert_reads_a_checkpoint_directory_and_refuses_a_folder_as_destination(tmp_path):
    model = create_model("vgg-a", num_classes=5, width=1 / 16, fc_dim=16, input_size=32)
    (tmp_path / "ckpt").mkdir()
    save_weights(model, tmp_path / "ckpt" / "model.safetensors")
    assert vggtk("convert", tmp_path / "ckpt", tmp_path / "w.safetensors").exit_code == 0
    (tmp_path / "folder").mkdir()
    assert "is a folder" in input_error(vggtk("convert", tmp_path / "ckpt", tmp_path / "folder"))
    assert list((tmp_path / "folder").iterdir()) == []


def test_convert_a_full_size_torchvision_file_without_arch(tmp_path):
    with torch.device("meta"):
        meta = create_model("vgg-a", num_classes=3)
    # A torchvision-layout file of the real size, built without random init cost.
    model = meta.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.constant_(p, 0.5)
    save_file(model.export_state_dict("torchvision"), str(tmp_path / "tv.safetensors"))
    for args in ([], ["--arch", "vgg11"]):
        out = tmp_path / f"out{len(args)}.safetensors"
        result = vggtk("convert", str(tmp_path / "tv.safetensors"), str(out), *args)
        assert result.exit_code == 0, result.output
        back = create_model("vgg-a", num_classes=3)
        load_weights(back, out)
        assert all(torch.all(p == 0.5) for p in back.parameters())
    assert read_model_info(tmp_path / "out0.safetensors").preprocessing.family == "torchvision"


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors"), "--arch", "vgg-a"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("vggtk: error:") and "missing.safetensors" in err


@pytest.mark.parametrize("raised", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 81920000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_the_allocators_refusal_is_one_line_and_other_errors_stay_errors(raised, capsys):
    """What the parameter count cannot foresee (activations of a huge input) still ends in one line."""
    import typer

    from vgg_toolkit.cli import _guard

    def command():
        raise raised

    with pytest.raises(typer.Exit) as exit_info:
        _guard(command)()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.exit_code == 2 and err.count("\n") == 0 and err.startswith("vggtk: error: out of memory")

    def broken():
        raise RuntimeError("a defect, not an input")

    with pytest.raises(RuntimeError, match="a defect"):
        _guard(broken)()


def test_plugins_table_shows_a_name_clash_instead_of_failing(host):
    from vgg_toolkit import hookimpl

    class Impostor:
        @hookimpl
        def vggtk_register_architectures(self, register):
            register("vgg-b", lambda num_classes=1000: None)

    host.register(Impostor(), "impostor")
    result = vggtk("plugins")
    assert result.exit_code == 0, result.output
    assert "claimed by two plugins: 'vgg' and 'impostor'" in " ".join(result.output.split())


def narrow(*args):
    from typer.testing import CliRunner

    from vgg_toolkit.cli import build_app

    return CliRunner().invoke(build_app(), [str(a) for a in args], env={"COLUMNS": "60"})


def test_scripts_get_json_from_models_plugins_and_eval(trained, shards, tmp_path):
    import json

    models = json.loads(vggtk("models", "--json").stdout)
    assert {"vgg-a", "vgg-e"} <= {a["name"] for a in models["architectures"]}
    assert next(a for a in models["architectures"] if a["name"] == "vgg-d")["parameters"] == 138_357_544
    plugins = json.loads(vggtk("plugins", "--json").stdout)
    assert next(p for p in plugins["plugins"] if p["plugin"] == "vgg")["registers"]["architectures"][0] == "vgg-a"
    result = vggtk("eval", trained[0] / "best", "--data", shards, "--methods", "center", "--json",
                   "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["results"][0]["top1_err_pct"] == json.loads((tmp_path / "e.json").read_text())["results"][0][
        "top1_err_pct"]


def test_on_a_narrow_terminal_no_name_or_number_is_cut(trained, shards, tmp_path):
    outputs = [narrow("models"), narrow("plugins"),
               narrow("eval", trained[0] / "best", trained[0] / "best", "--data", shards, "--methods",
                      "center,multicrop", "--out", tmp_path / "e.json")]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert "…" not in result.output
    assert "138,357,544" in outputs[0].output and "dense" not in outputs[2].output.split("top-1")[0]
    assert "vgg-a + vgg-a" in outputs[2].output and "multi-crop 5x5x2" in outputs[2].output


def test_class_names_are_shown_as_text_never_as_markup_or_terminal_escapes(tmp_path):
    from PIL import Image

    from realdata import fashion_sample

    names = ["[red]x", "a\x1b[31mb\x1b]0;TITLE\x07", "Sandal_with_a_long_name_" + "x" * 50, "tab\there",
             "evil\u202egnp.exe"]
    images, _ = fashion_sample(20)
    for i, image in enumerate(images):
        folder = tmp_path / "src" / names[i % 5]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    assert vggtk("shards", "create", tmp_path / "src", tmp_path / "shards", "--splits", "train=1").exit_code == 0
    for result in (vggtk("shards", "inspect", tmp_path / "shards", "--sheet", tmp_path / "s.png"),
                   narrow("shards", "inspect", tmp_path / "shards", "--sheet", tmp_path / "s.png")):
        assert result.exit_code == 0, result.output
        assert "[red]x" in result.output  # the name itself, not a red x
        assert "\x1b" not in result.output and "\\x1b[31mb" in result.output  # the escape as visible text
        assert names[2] in result.output and "…" not in result.output
        assert "\t" not in result.output and "tab\\x09here" in result.output  # a tab would cut the cell short
        assert "\u202e" not in result.output and "evil\\u202egnp.exe" in result.output  # no reordering


def test_piped_messages_keep_long_paths_on_one_line(trained, shards, tmp_path):
    """Off a terminal (a pipe, a log file) at 80 columns, a message naming a long path is one line."""
    import os
    import subprocess
    import sys

    deep = tmp_path / ("a" * 70) / ("b" * 70)
    deep.mkdir(parents=True)
    env = {**os.environ, "COLUMNS": "80"}
    for args, said in ((["eval", trained[0] / "best", "--data", shards, "--methods", "center", "--out", deep / "e.json"],
                        f"results written to {deep / 'e.json'}"),
                       (["convert", trained[0] / "best", deep / "c.safetensors"], f"-> {deep / 'c.safetensors'}")):
        done = subprocess.run([sys.executable, "-m", "vgg_toolkit", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert any(said in line for line in done.stdout.splitlines()), done.stdout
