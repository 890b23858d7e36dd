"""The trainer's configuration through pydantic-settings: every accepted spelling of an option, --help from the
fields' docstrings, --print-config read back to the same config, one-line errors naming source, key and value,
the renamed fields' old names (warned once; a run's saved config.json silently, and its resume bit-exact), and
what a resume says."""

from __future__ import annotations

import argparse
import json

import pytest
import tomllib
import torch
from _train_fixtures import TINY, final_state

from tinystories.model.checkpoint import checkpoint_path, list_checkpoints
from tinystories.runtime.arguments import ArgumentParser
from tinystories.train import ConfigError, load_config, main
from tinystories.train.cli import add_cli_arguments
from tinystories.train.config import config_toml
from tinystories.train.fields import NONE_MEANS, RENAMED, TrainConfig
from tinystories.train.resume import reconcile

RENAMED_BACK = {new: old for old, new in RENAMED.items()}


def printed(capsys, argv: list[str]) -> dict:
    """The config ``tinystories-train ARGV --print-config`` prints, parsed; nothing may go to stderr."""
    assert main([*argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return tomllib.loads(out)


# -- the accepted forms -----------------------------------------------------------------------------------------
def test_every_spelling_of_an_option_and_the_toml_file_anywhere(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('max-steps = 7\nbatch_size = 3\nsample_prompt = "Tom"\n')
    for argv in (["--max-steps=2000"], ["--max-steps", "2000"], ["--max_steps=2000"], ["--max_steps", "2000"]):
        assert printed(capsys, argv)["max_steps"] == 2000, argv
    for text in ("1e4", "10_000", "10000", "1e4 "):
        assert printed(capsys, [f"--max-steps={text}"])["max_steps"] == 10000
    assert printed(capsys, ["--resume", f"--out={tmp_path / 'new'}"])["resume"] is True  # bare: true
    assert printed(capsys, ["--resume=false"])["resume"] is False
    assert printed(capsys, ["--compile=true"])["compile"] is True
    assert printed(capsys, ["--compile"])["compile"] is True
    assert printed(capsys, ["--compile=off"])["compile"] is False
    assert printed(capsys, ["--compile=auto"])["compile"] == "auto"
    assert printed(capsys, ["--seq-len=none"])["seq_len"] == "auto"  # None; the demo preset's own is 128
    assert printed(capsys, [])["seq_len"] == 128
    for argv in ([str(toml), "--max-steps=9"], ["--max-steps=9", str(toml)], ["--max-steps", "9", str(toml)]):
        config = printed(capsys, argv)  # the command line wins over the file, wherever the file is
        assert (config["max_steps"], config["batch_size"], config["sample_prompt"]) == (9, 3, "Tom"), argv
    config = printed(capsys, ["--resume", str(toml), f"--out={tmp_path / 'new'}"])  # a bare switch, then the file
    assert config["resume"] is True and config["max_steps"] == 7
    for argv in (["--resume", str(toml), str(toml)], [str(toml), "--resume", str(toml)]):
        with pytest.raises(SystemExit):
            main(argv)
        assert f"one TOML file at most: {toml} and {toml}" in capsys.readouterr().err


def test_help_is_each_fields_docstring_under_its_kebab_case_option():
    parser = ArgumentParser(prog="tinystories-train")
    add_cli_arguments(parser)
    shown = {a.dest: a for a in parser._actions if a.help != argparse.SUPPRESS and a.option_strings}
    for name, info in TrainConfig.model_fields.items():
        assert info.description, f"{name} has no docstring"
        action = shown[name]
        assert action.option_strings == [f"--{name.replace('_', '-')}", *([f"--{name}"] if "_" in name else [])]
        assert action.help.startswith(" ".join(info.description.split()))
        if info.default is None:
            assert name in NONE_MEANS and NONE_MEANS[name] in action.help
    assert "(default: 10000; preset demo: 300)" in shown["max_steps"].help
    assert set(shown) - set(TrainConfig.model_fields) == {"help", "print_config"}
    assert {old: new for old, new in parser.deprecated.items() if "_" in old} == {
        f"--{old}": f"--{new.replace('_', '-')}" for old, new in RENAMED.items()
    }


# -- --print-config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--seq-len=none", "--compile=false", "--lr=2e-3", '--sample-prompt=Say "hi"\tthen\nstop \u00e9'],
        ["--preset=8M", "--data={dataset}", "--vocab-size=300", "--dropout=0.1", "--out={tmp}/run", "--lr=3e-4"],
        ["--hidden-size=32", "--num-layers=2", "--data={dataset}", "--lr-decay-steps=50", "--min-lr=0"],
    ],
)
def test_print_config_is_toml_that_reads_back_to_the_same_config(argv, dataset, tmp_path, capsys):
    argv = [a.format(dataset=dataset, tmp=tmp_path) for a in argv]
    assert main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert set(tomllib.loads(text)) == set(TrainConfig.model_fields)  # every field, None ones too
    (tmp_path / "printed.toml").write_text(text)
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv)
    assert load_config(str(tmp_path / "printed.toml")) == load_config(None, flags)
    assert main([str(tmp_path / "printed.toml"), "--print-config"]) == 0
    assert capsys.readouterr().out == text
    assert not (tmp_path / "run").exists()  # nothing trained


def test_none_is_written_as_the_word_each_field_reads_back():
    text = config_toml(load_config(None, {"seq_len": "none"}))
    assert 'seq_len = "auto"  # auto: the model\'s context' in text
    assert 'data = "none"  # none: the offline demo corpus' in text
    assert 'out = "auto"  # auto: runs/<preset>-<timestamp>' in text
    assert load_config(None, {"out": "auto", "data": "", "init_from_hf": "null"}).out is None
    assert load_config(None, {"out": "none", "cpu_threads": "AUTO"}).cpu_threads is None


# -- one-line errors: source, key, value ----------------------------------------------------------------------
def test_errors_name_the_source_key_and_value_in_one_line(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    cases = [
        ("batch-siz = 4\n", [], f"{toml}: unknown config key 'batch-siz' (did you mean 'batch_size'?)"),
        ('max_steps = "ten"\n', [], f"{toml}: max_steps='ten' is not a valid int"),
        ("max_steps = 2.5\n", [], f"{toml}: max_steps=2.5 is not a valid int"),
        ("max_steps = [1]\n", [], f"{toml}: max_steps=[1] must be of type int, not list"),
        ("max_steps = true\n", [], f"{toml}: max_steps=True must be a whole number, not a bool"),
        ("preset = 33\n", [], f"{toml}: preset=33 must be of type str, not int"),
        ("beta2 = 1.0\n", [], f"{toml}: beta2=1.0 must be < 1"),
        ("num_heads = 4\n", ["--hidden-size=30"], "command line: hidden_size=30 is not divisible by num_heads=4"),
        ("hidden_size = 30\n", ["--num-heads=4"], "command line: hidden_size=30 is not divisible by num_heads=4"),
        ("lr = 1e-4\n", ["--min-lr=1e-3"], "command line: min_lr=0.001 must be <= lr=0.0001"),
        ("min_lr = 0.5\n", [], f"{toml}: min_lr=0.5 must be <= lr=0.003"),
        ("", ["--seq-len=512"], "command line: seq_len=512 exceeds the model's context of 256 (set --context)"),
        ("", ["--resume"], "command line: --resume needs --out=<the run folder to continue>"),
        ("", ["--weight-decay=inf"], "command line: weight_decay=inf must be a finite number"),
        ("", ["--dropout=1"], "command line: dropout=1 must be < 1"),
        ("", ["--warmup-steps=-1"], "command line: warmup_steps=-1 must be >= 0"),
        ("", ["--resume=maybe"], "command line: resume='maybe' is not a valid bool"),
        ("", ["--impl=triton"], "command line: impl='triton' must be one of auto, torch, fused, hybrid"),
        ("", ["--preset=1M", "--data=/nonexistent"], "command line: data=/nonexistent: /nonexistent does not exist"),
    ]
    for text, argv, message in cases:
        toml.write_text(text)
        assert main([str(toml), *argv]) == 2, message
        assert capsys.readouterr().err.splitlines() == [f"tinystories-train: error: {message}"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"preset": "demo", "batch_size": 0}}))
    assert main([f"--out={run}", "--resume"]) == 2
    assert (
        capsys.readouterr().err == f"tinystories-train: error: {run / 'config.json'}: batch_size=0 must be positive\n"
    )


def test_an_unknown_option_suggests_the_one_meant(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--max-stepz=3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --max-stepz=3; did you mean --max-steps?" in capsys.readouterr().err


# -- renamed fields -----------------------------------------------------------------------------------------------
def test_old_names_work_for_one_release_with_one_warning_each(tmp_path, capsys):
    assert main(["--out-dir=a", "--sample_tokens", "5", "--print-config"]) == 0  # (every old spelling: test_cli.py)
    out, err = capsys.readouterr()
    assert (tomllib.loads(out)["out"], tomllib.loads(out)["sample_max_new_tokens"]) == ("a", 5)
    assert err.splitlines() == [
        "tinystories-train: warning: --out-dir is deprecated, use --out (the old name goes in the next release)",
        "tinystories-train: warning: --sample_tokens is deprecated, use --sample-max-new-tokens "
        "(the old name goes in the next release)",
    ]
    toml = tmp_path / "old.toml"
    toml.write_text("demo_stories = 50\nvocab-top-k = 300\n")
    c = load_config(str(toml))
    c = load_config(str(toml))  # read again (as a sweep does for each run): no second warning
    assert (c.demo_num_stories, c.vocab_size) == (50, 300)
    assert capsys.readouterr().err.splitlines() == [
        f"tinystories-train: warning: {toml}: demo_stories is deprecated, use demo_num_stories "
        "(the old name goes in the next release)",
        f"tinystories-train: warning: {toml}: vocab-top-k is deprecated, use vocab_size "
        "(the old name goes in the next release)",
    ]
    assert set(RENAMED.values()) <= set(TrainConfig.model_fields) and not set(RENAMED) & set(TrainConfig.model_fields)


def test_sweep_set_takes_kebab_or_snake_keys_and_old_names(tmp_path, capsys):
    from tinystories.cli import build_parser
    from tinystories.sweep.cli import sweep_from_args
    from tinystories.sweep.grid import SweepConfig, trainer_overrides
    from tinystories.sweep.runner import train_command

    parser, _ = build_parser("sweep")
    args = parser.parse_args(
        ["run", "--out", str(tmp_path / "s"), "--hidden-size", "16", "--num-layers", "1", "--tokens", "1k"]
        + ["--set", "batch-size=2", "--set", "eval_every=4", "--set", "sample_tokens=8", "--set", "demo-stories=9"]
    )
    sweep = sweep_from_args(args)
    assert sweep.overrides == {
        "batch_size": "2",
        "eval_every": "4",
        "sample_max_new_tokens": "8",
        "demo_num_stories": "9",
    }
    assert capsys.readouterr().err.splitlines() == [
        "tinystories sweep run: warning: --set sample_tokens is deprecated, use --set sample-max-new-tokens "
        "(the old name goes in the next release)",
        "tinystories sweep run: warning: --set demo-stories is deprecated, use --set demo-num-stories "
        "(the old name goes in the next release)",
    ]
    with pytest.raises(ValueError, match=r"--set out=\.\.\. is set by the sweep"):
        SweepConfig(out_dir="x", hidden=[16], layers=[1], tokens=[10], overrides={"out_dir": "y"})
    old_manifest = SweepConfig(out_dir="x", hidden=[16], layers=[1], tokens=[10], overrides={"sample_tokens": "8"})
    assert old_manifest.overrides == trainer_overrides({"sample-max-new-tokens": "8"}) and capsys.readouterr().err == ""

    class Plan:  # what train_command reads of a RunPlan
        run, max_steps = sweep.runs()[0], 5

    command = train_command(sweep, Plan, tmp_path / "data")
    assert f"--out={tmp_path / 's' / Plan.run.name}" in command and "--max-steps=5" in command
    assert "--sample-max-new-tokens=8" in command and "--batch-size=2" in command
    assert not [a for a in command if a.startswith("--") and "_" in a.split("=")[0]]  # kebab-case throughout


def test_a_run_trained_before_the_renames_resumes_bit_exactly_and_silently(dataset, tmp_path, capsys):
    common = [f"--data={dataset}", *TINY, "--max-steps=4", "--ckpt-every=2", "--eval-every=100", "--log-every=1"]
    assert main([*common, f"--out={tmp_path / 'straight'}"]) == 0
    old = tmp_path / "old"
    assert main([*common, f"--out={old}"]) == 0
    list_checkpoints(old)[-1].unlink()  # as if stopped at step 2
    saved = json.loads((old / "config.json").read_text())
    saved["train"] = {RENAMED_BACK.get(k, k): v for k, v in saved["train"].items()}  # as written before the renames
    assert "out_dir" in saved["train"] and "sample_max_new_tokens" not in saved["train"]
    (old / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()

    assert main([f"--out={old}", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert f"resumed {checkpoint_path(old, 2)} at step 2" in out
    assert "changed:" not in out and "deprecated" not in err  # the old names are no change, and say nothing
    a, b = final_state(tmp_path / "straight"), final_state(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((old / "config.json").read_text())["train"]["sample_max_new_tokens"] == 20  # new names now


# -- messages ---------------------------------------------------------------------------------------------------------
def test_resume_messages_say_what_changes_and_what_none_means(tmp_path):
    saved = load_config(None, {"max_steps": "10000"}).model_dump()
    extended = load_config(None, {"max_steps": "20000", "lr_decay_steps": "10000"})
    saved["lr_decay_steps"] = 10000  # recorded by an earlier extension
    config, lines = reconcile(extended, saved, step=10000)
    assert lines == [
        "max_steps 10000 -> 20000: the learning-rate schedule is kept (cosine to min_lr by step 10000, then "
        "min_lr); --lr-decay-steps=20000 stretches it over the longer run instead"
    ]  # lr_decay_steps given its current value: no change, nothing said
    config, lines = reconcile(load_config(None, {"max_steps": "6000"}), saved | {"lr_decay_steps": None}, step=5000)
    assert config.lr_decay_steps == 10000 and lines == [
        "max_steps 10000 -> 6000: the learning-rate schedule is kept (cosine to min_lr by step 10000), so the run "
        "ends before the learning rate reaches min_lr; --lr-decay-steps=6000 ends the cosine at the new last step "
        "instead"
    ]
    with pytest.raises(ConfigError, match=r"seq_len: run has auto \(the model's context, 256\), requested 128"):
        reconcile(load_config(None, {}), saved | {"seq_len": None}, step=10)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": saved}))
    same_lr = load_config(None, {"out": str(run), "resume": "true", "lr": str(saved["lr"])})
    assert same_lr.min_lr == saved["min_lr"]  # the run's own lr given again is no change: min_lr does not follow
    assert reconcile(same_lr, saved, step=10)[1] == []
    before = {RENAMED_BACK.get(k, k): v for k, v in (saved | {"lr_decay_steps": None}).items()}  # a checkpoint's
    assert reconcile(load_config(None, {"max_steps": "10000"}), before, step=10)[1] == []  # train_config from before
