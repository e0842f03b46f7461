"""Prompt pipeline: templates as data, context sources switched by config, leak-free emotion history."""

from erc_llm.prompting.answer import LabelTokens, label_tokens
from erc_llm.prompting.builder import (
    BiographySource,
    Demonstration,
    DemonstrationSource,
    LeakageError,
    PromptBuilder,
    PromptExample,
)
from erc_llm.prompting.config import PromptConfig
from erc_llm.prompting.history import EmotionHistory, chronological_keys, history_key
from erc_llm.prompting.templates import find_template, load_template, render_messages, template_text

__all__ = [
    "BiographySource", "Demonstration", "DemonstrationSource", "EmotionHistory", "LabelTokens", "LeakageError",
    "PromptBuilder", "PromptConfig", "PromptExample", "chronological_keys", "find_template", "history_key",
    "label_tokens", "load_template", "render_messages", "template_text",
]
