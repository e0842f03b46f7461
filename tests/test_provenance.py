"""Run provenance: the checkout and commit a run's library came from, and a warning when a script from one
checkout would import erc_llm from another (an editable install points at the checkout it was made from)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from erc_llm.provenance import library_mismatch, run_provenance

REPO = Path(__file__).resolve().parents[1]


def test_provenance_names_this_checkout_and_its_commit() -> None:
    record = run_provenance(REPO / "recipes" / "sft.py")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert Path(record["library"]) == REPO / "erc_llm"
    assert record["git_commit"] == head and isinstance(record["git_dirty"], bool)
    assert record["library_mismatch"] is None
    assert record["packages"]["torch"] and record["packages"]["transformers"]
    assert "cores" in record["machine"] and record["python"].count(".") == 2


def test_script_from_another_checkout_is_flagged(tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "recipes").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    script = other / "recipes" / "sft.py"
    script.write_text("")
    message = library_mismatch(script)
    assert message is not None and f"PYTHONPATH={other.resolve()}" in message and str(REPO) in message
    # outside any checkout there is nothing to compare
    loose = tmp_path / "loose.py"
    loose.write_text("")
    assert library_mismatch(loose) is None
