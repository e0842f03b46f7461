"""Every `erc-llm` verb given wrong input exits non-zero with one `error:` line and no traceback (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD_LINE = '{"dialogue_id": "a", "utterances": [{"speaker": "Ann", "text": "hi", "label": "joy"}]}\n'


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Broken inputs of each kind."""
    root = tmp_path_factory.mktemp("bad")
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    (root / "latin1.csv").write_bytes((header + '1,"Caf\xe9!",Ross,joy,positive,0,0,1,1,,\n').encode("latin-1"))
    (root / "broken.jsonl").write_text(GOOD_LINE + '{"dialogue_id": "b", "utterances": [\n')
    (root / "unlabelled_set.jsonl").write_text(GOOD_LINE)
    (root / "empty").mkdir()
    return {"latin1": root / "latin1.csv", "broken": root / "broken.jsonl", "nolabels": root / "unlabelled_set.jsonl",
            "empty": root / "empty", "root": root}


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    environment.pop("ERC_LLM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "erc_llm.cli", *args], capture_output=True, text=True, timeout=300,
                          env=environment)


CASES = {
    "validate missing file": (["data", "validate", "{root}/nope.csv"], "nope.csv: file not found"),
    "validate unknown label set": (["data", "validate", "{broken}", "--labels", "ekman"], "unknown label set 'ekman'"),
    "stats non-UTF-8 CSV": (["data", "stats", "--corpus", "{latin1}"], "latin1.csv, row 1 (line 2): not valid UTF-8"),
    "export unknown corpus": (["data", "export", "mled", "--out", "{root}/x"], "unknown corpus 'mled'"),
    "export broken JSONL": (["data", "export", "{broken}", "--format", "jsonl", "--out", "{root}/x"],
                            "broken.jsonl, line 2: invalid JSON"),
    "speakers on an empty folder": (["speakers", "build", "--corpus", "{empty}", "--out", "{root}/s.json"],
                                    "no split files found"),
    "label without a label set": (["label", "--backend", "hf", "--corpus", "{nolabels}"], "no label set"),
    "label unknown option": (["label", "--no_such_option", "1"], "no_such_option"),
    "label broken JSONL": (["label", "--backend", "hf", "--labels", "meld", "--corpus", "{broken}"],
                           "broken.jsonl, line 2: invalid JSON"),
    "index build broken JSONL": (["index", "build", "--corpus", "{broken}", "--index-dir", "{root}/idx"],
                                 "broken.jsonl, line 2: invalid JSON"),
    "compare missing run": (["compare", "{root}/no_run", "--out", "{root}/report"], "does not exist"),
    "prepare offline": (["data", "prepare", "--corpus", "meld", "--data-dir", "{empty}"], "ERC_LLM_DATA_DIR"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_input_is_one_error_line(case, bad):
    args, expected = CASES[case]
    args = [a.format(**{k: str(v) for k, v in bad.items()}) for a in args]
    # no network: downloads fail at once, like on an offline machine
    result = run_cli(args, https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_demo_without_data_says_where_to_put_it(bad):
    """`erc-llm demo` on a machine without the data folder or network: what to do, not a traceback."""
    result = run_cli(["demo", "--data-dir", str(bad["empty"]), "--out", str(bad["root"] / "demo")],
                     https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "ERC_LLM_DATA_DIR" in errors[0] and str(bad["empty"]) in errors[0]


RECIPE_CASES = {
    "sft on one file as train, dev and test": (
        ["sft.py", "--config", "{repo}/recipes/smollm2-135m/sft/smoke.yaml", "--corpus", "{nolabels}",
         "--output_dir", "{root}/sft"], "would both read"),
    "sft unknown label set": (
        ["sft.py", "--config", "{repo}/recipes/smollm2-135m/sft/smoke.yaml", "--labels", "plutchik",
         "--output_dir", "{root}/sft"], "unknown label set 'plutchik'"),
    "baseline broken JSONL": (
        ["baseline.py", "--config", "{repo}/recipes/encoder-fusion/demo_meld.yaml", "--corpus", "{broken}",
         "--output_dir", "{root}/base"], "broken.jsonl, line 2: invalid JSON"),
    "label recipe non-UTF-8 CSV": (
        ["label.py", "--backend", "hf", "--corpus", "{latin1}", "--labels", "meld"], "row 1 (line 2): not valid UTF-8"),
}


@pytest.mark.slow  # each starts a recipe process importing torch, transformers and TRL (~10 s on an idle CPU)
@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_recipes_report_wrong_input_in_one_line(case, bad):
    repo = Path(__file__).resolve().parents[1]
    args, expected = RECIPE_CASES[case]
    args = [a.format(repo=repo, **{k: str(v) for k, v in bad.items()}) for a in args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("ERC_LLM_DEBUG", None)
    result = subprocess.run([sys.executable, str(repo / "recipes" / args[0]), *args[1:]], capture_output=True,
                            text=True, timeout=300, env=environment)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_every_help_text_renders() -> None:
    """`--help` of every verb and recipe prints (argparse formats help strings with %: a bare one is a traceback)."""
    import argparse

    from trl import TrlParser

    from erc_llm.baseline.config import CONFIG_CLASSES
    from erc_llm.cli import build_parser
    from erc_llm.labelling.config import LabelConfig
    from erc_llm.training.config import sft_parser

    parsers = [sft_parser(), TrlParser((LabelConfig,)), TrlParser(CONFIG_CLASSES), build_parser()]
    verbs = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for action in verbs:
        for sub in action.choices.values():
            parsers.append(sub)
            parsers += [s for a in sub._actions if isinstance(a, argparse._SubParsersAction) for s in a.choices.values()]
    for parser in parsers:
        assert parser.format_help().strip(), parser.prog
