"""What a new user meets first (issue 17): one-line errors instead of tracebacks, the PNGs without extras, the
sweep plot without a fit, story files without separators, piped tables, HF config names, the neuron page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _fixtures import save_random_checkpoint

from tinystories.cli import main as tinystories
from tinystories.corpus import EOT
from tinystories.story_templates import generate_stories
from tinystories.tokenizer import Tokenizer
from tinystories.train.cli import main as tinystories_train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with one real checkpoint of a tiny model whose tokenizer knows 'é' only as two tokens."""
    tokenizer = Tokenizer.train(generate_stories(100), vocab_size=300)
    folder = tmp_path_factory.mktemp("runs") / "a-long-run-name-that-an-80-column-table-would-cut-short"
    save_random_checkpoint(folder, 20, tokenizer, hidden_size=16, max_position_embeddings=64)
    return folder, tokenizer


def _one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


# ------------------------------------------------------------------------------------------------ item 4
def test_sample_and_export_of_a_missing_checkpoint_are_one_line(tmp_path, capsys):
    missing = tmp_path / "runs" / "nope"
    _one_line_error(capsys, tinystories(["sample", str(missing)]), "does not exist", str(missing))
    _one_line_error(capsys, tinystories(["export", str(missing), "--out", str(tmp_path / "hf")]), "does not exist")


def test_sample_of_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys, run):
    _, tokenizer = run
    tokenizer.save(tmp_path / "tok.json")
    _one_line_error(
        capsys,
        tinystories(["sample", str(tmp_path / "tok.json")]),
        "tok.json: not a readable tinystories checkpoint",
    )


def test_sample_of_a_run_folder_without_checkpoints_says_so(tmp_path, capsys):
    folder = tmp_path / "runs" / "fresh"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": {"preset": "demo"}, "model": {}}))  # a run's config
    err = _one_line_error(capsys, tinystories(["sample", str(folder)]), "no checkpoint yet")
    assert "model_type" not in err


def test_export_into_a_non_empty_folder_is_one_line(tmp_path, capsys, run):
    folder, _ = run
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(capsys, tinystories(["export", str(folder), "--out", str(out)]), "not an empty folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "entry,argv",
    [
        (tinystories_train, ["--max_stepz=3"]),
        (tinystories, ["data", "stats", "--bogus", "x"]),
        (tinystories, ["inspect", "neurons", "ckpt", "--stories", "a", "--bogus"]),
    ],
)
def test_an_unknown_flag_is_a_short_usage_line_and_the_error(capsys, entry, argv):
    with pytest.raises(SystemExit) as exc:
        entry(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 2 and err[0].startswith("usage: ") and "--help" in err[0], err
    assert "unrecognized arguments" in err[1] and ("--max_stepz" in err[1] or "--bogus" in err[1])


# item 3 (matplotlib and safetensors in the core, every import declared): tests/test_packaging.py


# ------------------------------------------------------------------------------------------------ item 6
def _sweep_points():
    from tinystories.sweep.analysis import ScalingPoint

    return [
        ScalingPoint("h16-l1", 1e4, 1.5e12, 3.0),
        ScalingPoint("h16-l1", 1e4, 1.8e12, 2.9),
        ScalingPoint("h32-l1", 4e4, 2.1e12, 2.8),
        ScalingPoint("h32-l1", 4e4, 2.5e12, 2.6),
    ]


def _overlapping_tick_labels(fig) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer, bad = canvas.get_renderer(), []
    for ax in fig.axes:
        lo, hi = sorted(ax.get_xlim())
        labels = [
            (loc, lab)
            for loc, lab in zip(
                [*ax.get_xticks(), *ax.get_xticks(minor=True)], [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)]
            )
            if lo <= loc <= hi and lab.get_text()
        ]
        boxes = sorted(((lab.get_window_extent(renderer), lab.get_text()) for _, lab in labels), key=lambda b: b[0].x0)
        bad += [f"{a[1]} / {b[1]}" for a, b in zip(boxes, boxes[1:]) if a[0].x1 > b[0].x0]
    return bad


def test_scaling_png_without_a_shared_budget_says_why(tmp_path, monkeypatch):
    from tinystories.sweep import analysis

    points = _sweep_points()  # the two shapes' compute ranges do not overlap: no budget has two sizes
    with pytest.raises(ValueError, match="do not overlap") as exc:
        analysis.fit_optimal_sizes(analysis.compute_optimal_sizes(points))
    figures = []
    monkeypatch.setattr(analysis, "atomic_save_png", lambda fig, path: figures.append(fig))
    analysis.plot_scaling(points, [], None, tmp_path / "scaling.png", str(exc.value))
    texts = [t.get_text() for ax in figures[0].axes for t in ax.texts]
    assert any(t.startswith("no compute-optimal fit:") and "do not overlap" in t.replace("\n", " ") for t in texts)
    assert _overlapping_tick_labels(figures[0]) == []


def test_scaling_png_tick_labels_do_not_overlap_on_a_narrow_compute_range(tmp_path, monkeypatch):
    from tinystories.sweep import analysis
    from tinystories.sweep.analysis import ScalingPoint

    c = np.geomspace(1.5e12, 2.5e12, 4)  # under a decade: matplotlib labels its minor ticks, 3.2x10^12...
    points = [
        *(ScalingPoint("h32-l1", 1e4, c[i], 3 - 0.1 * i) for i in range(3)),
        *(ScalingPoint("h64-l1", 4e4, c[i + 1], 3.2 - 0.2 * i) for i in range(3)),
    ]
    optimal = analysis.compute_optimal_sizes(points)
    figures = []
    monkeypatch.setattr(analysis, "atomic_save_png", lambda fig, path: figures.append(fig))
    analysis.plot_scaling(points, optimal, None, tmp_path / "scaling.png")
    assert _overlapping_tick_labels(figures[0]) == []


# ------------------------------------------------------------------------------------------------ item 8
def test_neuron_stories_without_separators_are_split_at_blank_lines_with_a_warning(tmp_path, capsys, run):
    from tinystories.interpret.cli import stories_from_text

    _, tokenizer = run
    stories = [" ".join(s.split()) for s in generate_stories(5, seed=3)]  # one paragraph each
    (tmp_path / "valid.txt").write_text("\n\n".join(stories) + "\n")
    ids = stories_from_text([tmp_path / "valid.txt"], tokenizer, 100, 64)
    assert len(ids) == 5 and tokenizer.decode(ids[0]) == stories[0][: len(tokenizer.decode(ids[0]))]
    assert "no <|endoftext|> separators: split into 5 stories at blank lines" in capsys.readouterr().err
    (tmp_path / "sep.txt").write_text("".join(f"{s}\n\n{EOT}\n" for s in stories))  # separated: left as is
    assert len(stories_from_text([tmp_path / "sep.txt"], tokenizer, 100, 64)) == 5
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------ item 10
def test_tables_are_not_cut_when_piped(run, tmp_path):
    folder, _ = run
    (tmp_path / "valid.txt").write_text("".join(f"{s}\n{EOT}\n" for s in generate_stories(3, seed=4)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "eval",
            "loss",
            str(folder),
            "--all-checkpoints",
            "--stories",
            str(tmp_path / "valid.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )
    assert result.returncode == 0, result.stderr
    assert folder.name in result.stdout and "…" not in result.stdout, result.stdout


def test_exported_config_uses_dtype_and_transformers_loads_it_without_warnings(run, tmp_path, capfd):
    transformers = pytest.importorskip("transformers")
    folder, _ = run
    assert tinystories(["export", str(folder), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["dtype"] == "float32" and "torch_dtype" not in config
    transformers.logging.set_verbosity_warning()
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation warning would fail here
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
        transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    logged = capfd.readouterr().err
    assert "[transformers]" not in logged and "deprecat" not in logged.lower(), logged  # transformers' own warnings
    assert model.dtype == torch.float32


def test_neuron_page_decodes_characters_that_span_tokens(run):
    from tinystories.interpret.neurons import NeuronTopK
    from tinystories.interpret.report import neuron_report_html, token_texts

    _, tokenizer = run
    text = "Lily ate a crème brûlée."
    ids = tokenizer.encode_ordinary(text)
    assert "\ufffd" in "".join(tokenizer.decode([t]) for t in ids)  # 'è' really spans two tokens here
    texts = token_texts(tokenizer, ids)
    assert "".join(texts) == text and "\ufffd" not in "".join(texts)
    top = NeuronTopK(1, k=1, context=40)
    acts = torch.zeros(len(ids), 1)
    acts[len(ids) // 2, 0] = 1.0
    top.add(0, acts)
    page = neuron_report_html(top.profiles(), [ids], lambda story: token_texts(tokenizer, story), title="t")
    examples = page.split("<div class='ex'>", 1)[1]  # the story in context (the header names the lone token)
    assert "\ufffd" not in examples and "è" in examples and "û" in examples
