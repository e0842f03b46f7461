"""The one rule for a labelling run's prompt settings: the adapter's saved settings are the default, a prompt flag
given on the command line wins with a notice, prompt keys of the label YAML do not override the adapter."""

from __future__ import annotations

import yaml

from erc_llm.labelling.cli import parse_label_config
from erc_llm.labelling.run import prompt_settings_for


def _adapter(tmp_path, **prompt):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "erc_config.yaml").write_text(yaml.safe_dump({"use_history": True, "past_window": 2, **prompt}))
    return folder


def test_adapter_settings_are_the_default(tmp_path, capsys):
    cfg = parse_label_config(["--adapter", str(_adapter(tmp_path)), "--corpus", "meld"])
    prompt, _ = prompt_settings_for(cfg)
    assert prompt.use_history is True and prompt.past_window == 2
    assert "notice" not in capsys.readouterr().err


def test_a_command_line_prompt_flag_wins_with_a_notice(tmp_path, capsys):
    cfg = parse_label_config(["--adapter", str(_adapter(tmp_path)), "--use_history", "false", "--past_window=4"])
    prompt, _ = prompt_settings_for(cfg)
    assert prompt.use_history is False and prompt.past_window == 4
    err = capsys.readouterr().err
    assert "use_history=False" in err and "past_window=4" in err and "differ from training" in err


def test_label_yaml_prompt_keys_do_not_override_the_adapter(tmp_path, capsys):
    recipe = tmp_path / "label.yaml"
    recipe.write_text(yaml.safe_dump({"use_history": False, "past_window": 8}))
    cfg = parse_label_config(["--config", str(recipe), "--adapter", str(_adapter(tmp_path))])
    prompt, _ = prompt_settings_for(cfg)
    assert prompt.use_history is True and prompt.past_window == 2
    assert "notice" not in capsys.readouterr().err


def test_without_a_saved_adapter_config_the_run_settings_apply(tmp_path):
    cfg = parse_label_config(["--use_history", "true", "--past_window", "3"])
    prompt, retrieval = prompt_settings_for(cfg)
    assert prompt.use_history is True and prompt.past_window == 3 and retrieval is None
