"""Several source domains at once (`source_datasets`): each source prepared and asked for CoT data in its own
wording, mixed into data/source in a stated order and proportion, named with its record counts in results.json
and in the grid's report."""

import json
from pathlib import Path

import pytest
from helpers import REPO, read_json, read_results, run_entry

from tlrec_utils.data.kshot import k_shot_indices
from tlrec_utils.data.mix import interleave, mix_sources
from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset
from tlrec_utils.experiments.phases import MIX_MODULE, pipeline_phases
from tlrec_utils.experiments.pipeline_config import PipelineConfig, parse_pipeline_args

TWO_SOURCES = [{"name": "netflix", "dataset": "windows-csv", "records": 20},
               {"name": "games", "dataset": "windows-csv", "item_kind": "game"}]


@pytest.fixture(scope="module")
def data_root(small_data_dir, tmp_path_factory):
    """A data directory with the small data's netflix/ and ml-100k/ and a second windowed release, games/."""
    from helpers import write_windows_csv

    root = tmp_path_factory.mktemp("sources_data")
    for name in ("netflix", "ml-100k"):
        (root / name).symlink_to(small_data_dir / name)
    write_windows_csv(root / "games", n_rows=30)
    return root


@pytest.fixture(scope="module")
def prepared(data_root, tmp_path_factory):
    """The two windowed releases prepared on their own: netflix (worded "movie") and games ("game")."""
    root = tmp_path_factory.mktemp("prepared")
    for name, kind in (("netflix", "movie"), ("games", "game")):
        prepare_dataset(PrepareConfig(dataset="windows-csv", raw_dir=str(data_root / name),
                                      output_dir=str(root / name), item_kind=kind))
    return root


def test_interleave_spreads_each_part_in_proportion():
    a, b = [f"a{i}" for i in range(6)], [f"b{i}" for i in range(2)]
    mixed = interleave([a, b])
    assert sorted(mixed) == sorted(a + b)
    assert [x for x in mixed if x[0] == "a"] == a and [x for x in mixed if x[0] == "b"] == b  # each in its order
    assert mixed[:4].count("b0") == 1 and mixed[4:].count("b1") == 1  # every half holds its share of b
    assert interleave([a[:2], b]) == ["a0", "b0", "a1", "b1"]  # ties: the sources' order


def test_mix_draws_each_share_and_keeps_the_sources_apart(prepared, tmp_path):
    netflix, games = (read_json(prepared / name / "train.json") for name in ("netflix", "games"))
    meta = mix_sources({"netflix": prepared / "netflix", "games": prepared / "games"}, tmp_path / "mix",
                       records={"netflix": 20})
    train = read_json(tmp_path / "mix" / "train.json")
    drawn = [netflix[i] for i in sorted(k_shot_indices(len(netflix), 20, 0))]
    from_netflix = [r for r in train if r["source"] == "netflix"]
    assert [r["input"] for r in from_netflix] == [r["input"] for r in drawn]  # the seeded draw, in file order
    assert [r["input"] for r in train if r["source"] == "games"] == [r["input"] for r in games]  # all of it
    assert len(train) == 20 + len(games)
    assert all(r["user_id"].startswith(r["source"] + ":") and r["target"]["item_id"].startswith(r["source"] + ":")
               and all(h["item_id"].startswith(r["source"] + ":") for h in r["history"]) for r in train)
    assert {("game" in r["instruction"], r["source"]) for r in train} == {(False, "netflix"), (True, "games")}
    first = train[: len(train) // 4]  # any first part holds both sources in their share
    share = sum(r["source"] == "netflix" for r in first) / len(first)
    assert abs(share - 20 / len(train)) < 0.1
    for split in ("valid", "test"):  # kept whole
        whole = sum(len(read_json(prepared / n / f"{split}.json")) for n in ("netflix", "games"))
        assert meta["counts"][split] == whole
    assert meta["source_domains"]["netflix"]["counts"] == {
        "train": 20, "train_available": len(netflix), "valid": len(read_json(prepared / "netflix/valid.json")),
        "test": len(read_json(prepared / "netflix/test.json"))}
    items = read_json(tmp_path / "mix" / "items.json")
    assert len(items) == sum(len(read_json(prepared / n / "items.json")) for n in ("netflix", "games"))


def test_the_plan_prepares_and_asks_each_source_then_mixes(data_root, tmp_path):
    cfg = PipelineConfig(run_dir=str(tmp_path / "r"), data_dir=str(data_root), source_datasets=TWO_SOURCES,
                         methods=["tlrec", "tallrec"], k_shots=[16])
    phases = {p.key: p for p in pipeline_phases(cfg)}
    keys = list(phases)
    assert keys[:7] == ["data/source-netflix", "data/source-games", "data/source", "data/target", "cot-netflix",
                        "cot-games", "cot"]

    def flag(key, name):
        return phases[key].argv[phases[key].argv.index(name) + 1]

    assert flag("data/source-netflix", "--item_kind") == "movie" and flag("cot-netflix", "--kind") == "movie"
    assert flag("data/source-games", "--item_kind") == "game" == flag("cot-games", "--kind")
    assert flag("data/source-games", "--raw_dir") == str(data_root / "games")  # subdir: the name
    mix = phases["data/source"]
    assert mix.script == MIX_MODULE and mix.after == ["data/source-netflix", "data/source-games"]
    assert mix.argv[mix.argv.index("--records") + 1:][:1] == ["netflix=20"]
    assert phases["cot"].after == ["cot-netflix", "cot-games"]
    # source rec-tuning and the tiny model read the mix; the target is its own
    assert str(tmp_path / "r" / "data" / "source" / "train.json") in phases["tlrec/source_tuning"].argv
    assert not any("source" in a for a in phases["tallrec/k16_seed0"].argv if a.endswith("train.json"))


def test_source_datasets_on_the_command_line(tmp_path):
    cfg = parse_pipeline_args(["--run_dir", str(tmp_path / "r"), "--source_datasets",
                               "{name: netflix, dataset: windows-csv}", '{"name": "ml", "dataset": "ml-100k"}'])
    assert [s["name"] for s in cfg.source_datasets] == ["netflix", "ml"]


@pytest.mark.slow
def test_two_source_run_names_both_sources_with_their_counts(data_dir, tmp_path, capsys):
    """Netflix (movies) and Amazon-Book (books, its published records) as two sources for the Movie target,
    end to end on the tiny model: each source's CoT records are in its own wording, results.json and the printed
    summary name both sources with their record counts, TALLRec used none."""
    config = REPO / "configs" / "experiments" / "two_sources.yaml"
    run_dir = tmp_path / "run"
    argv = [str(config), "--run_dir", str(run_dir), "--data_dir", str(data_dir), "--download", "false",
            "--methods", "tlrec", "tallrec", "--cot_max_users", "40", "--k_shots", "16",
            "--source_datasets", "{name: netflix, dataset: windows-csv, subdir: netflix, records: 120}",
            "{name: amazon-book, item_kind: book, records: 60, files: {train: amazon-book/valid.json, "
            "valid: amazon-book/test.json, test: amazon-book/test.json}}",
            "--tiny_vocab_size", "600", "--tiny_hidden_size", "32", "--effect_records", "16", "--test_limit", "40",
            "--source_epochs", "1", "--kshot_epochs", "1", "--tuning", "max_length=320", "--cot_heldout_records", "2"]
    proc = run_entry("run_pipeline", argv, capsys)
    assert proc.returncode == 0, proc.stderr
    results = read_results(run_dir)
    sources = {s["name"]: s for s in results["sources"]}
    assert list(sources) == ["netflix", "amazon-book"]
    assert sources["netflix"]["records"]["train"] == 120 and sources["amazon-book"]["records"]["train"] == 60
    for name in sources:  # its whole train split, as prepared on its own
        whole = read_json(run_dir / "data" / f"source-{name}" / "train.json")
        assert sources[name]["records"]["train_available"] == len(whole)
    assert sources["amazon-book"]["records"]["train_available"] == 1000  # the published valid records
    cot = read_json(run_dir / "cot" / "cot_train.json")
    for name, noun in (("netflix", "movie"), ("amazon-book", "book")):
        mine = [r for r in cot if r["source"] == name]
        assert mine and sources[name]["cot_records"] == len(mine)
        assert all(noun in r["instruction"] + r["input"] for r in mine)
    assert results["method_sources"] == {"tlrec": ["netflix", "amazon-book"], "tallrec": []}
    mixed = read_json(run_dir / "data" / "source" / "train.json")
    assert [r["source"] for r in mixed].count("amazon-book") == 60
    out = proc.stdout
    assert "Source domains (used by tlrec):" in out
    assert "- netflix (windows-csv, movie): 120 train records (drawn from 8,000)" in out
    assert "- amazon-book (records, book): 60 train records (drawn from 1,000)" in out
    summary = json.loads((run_dir / "data" / "source" / "phase_done.json").read_text())
    assert summary["counts"]["train"] == 180
    assert Path(run_dir / "cot-netflix" / "cot_train.json").is_file()


def test_the_grid_report_says_which_sources_each_row_used(small_data_dir, monkeypatch):
    """movie_two_sources.yaml: TLRec from Netflix alone, tlrec_multi from Netflix + Amazon-Book, TALLRec from
    none; the report's rows and its `Source data:` line say so (planned without the data)."""
    from tlrec_utils.experiments.cells import build_cells, cell_phases
    from tlrec_utils.experiments.grid_config import load_config
    from tlrec_utils.experiments.results import row_sources, sources_line

    monkeypatch.setenv("TLREC_DATA_DIR", str(small_data_dir))
    config = load_config(REPO / "configs" / "experiments" / "movie_two_sources.yaml")
    rows = [{"method": out["method"], "sources": row_sources(config, cell, out)}
            for cell in build_cells(config) for out in cell.outputs]
    by_method = {r["method"]: r["sources"] for r in rows}
    assert by_method == {"TALLRec": [], "TLRec": ["netflix"], "tlrec_multi": ["netflix", "amazon-book"]}
    assert sources_line(rows) == "Source data: netflix (TLRec); netflix + amazon-book (tlrec_multi)."
    baseline = {"method": "SASRec", "sources": ["/data/netflix/train.json"]}  # a zero-shot baseline's source file
    assert sources_line([baseline, *rows]) == ("Source data: netflix/train.json, zero-shot (SASRec); netflix (TLRec); "
                                               "netflix + amazon-book (tlrec_multi).")
    two = next(c for c in build_cells(config) if c.name == "pipeline-two")
    keys = [p.key for p in cell_phases(config, two, check_data=False)]
    assert keys[:7] == ["data/source-netflix", "data/source-amazon-book", "data/source", "data/target",
                        "cot-netflix", "cot-amazon-book", "cot"]
