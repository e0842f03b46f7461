"""Prompt templates are Jinja2 files in `prompts/`; a template renders a system and a user message."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jinja2

PROMPTS_ENV = "ERC_LLM_PROMPTS"
_REQUIRED_BLOCKS = ("system", "user")


def prompt_dirs() -> list[Path]:
    """Folders searched for templates: $ERC_LLM_PROMPTS, the repo's prompts/, the installed copy."""
    dirs = []
    if os.environ.get(PROMPTS_ENV):
        dirs.append(Path(os.environ[PROMPTS_ENV]))
    package_dir = Path(__file__).resolve().parents[1]
    dirs.append(package_dir.parent / "prompts")  # source checkout / editable install
    dirs.append(package_dir / "_prompts")  # wheel install (see pyproject data mapping)
    return [d for d in dirs if d.is_dir()]


def find_template(name: str) -> Path:
    """Path of a template given by file name (searched in `prompt_dirs`) or by path."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in prompt_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    available = sorted({p.name for d in prompt_dirs() for p in d.glob("*.j2")})
    raise FileNotFoundError(f"prompt template {name!r} not found; available: {available}")


@lru_cache(maxsize=32)
def _load(path: str, mtime: float) -> jinja2.Template:
    """Compile a template file (cached per path and modification time)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    template = env.from_string(Path(path).read_text(encoding="utf-8"))
    missing = [b for b in _REQUIRED_BLOCKS if b not in template.blocks]
    if missing:
        raise ValueError(f"prompt template {path} lacks block(s) {missing}; it needs {{% block system %}} and user")
    return template


def load_template(name: str) -> jinja2.Template:
    """Compiled template by name or path."""
    path = find_template(name)
    return _load(str(path.resolve()), path.stat().st_mtime)


def render_messages(template: jinja2.Template, variables: dict) -> list[dict[str, str]]:
    """Render the template's blocks into chat messages (system, user)."""
    context = template.new_context(variables)
    messages = []
    for role in _REQUIRED_BLOCKS:
        text = "".join(template.blocks[role](context)).strip()
        if text:
            messages.append({"role": role, "content": text})
    return messages


def template_text(name: str) -> str:
    """Raw text of a template (saved beside trained adapters)."""
    return find_template(name).read_text(encoding="utf-8")


# ---- chat templates -------------------------------------------------------------------------------------
# Llama-3.1/3.2 chat templates write "Today Date: <date>" into the system turn, taken from the clock
# (`strftime_now`) unless `date_string` is given; templates without the variable ignore it. Every render of a
# training, dev/test or labelling prompt passes this fixed date, so the same utterance gives the same tokens on
# any day (and the prefix cache is not split by date). The value is the templates' own fallback date.
PINNED_DATE = "26 Jul 2024"


def chat_template_kwargs() -> dict[str, str]:
    """Extra chat-template variables of every prompt render (also sent to vLLM and `vllm serve`)."""
    return {"date_string": PINNED_DATE}


def apply_chat_template(tokenizer, messages: list[dict[str, str]], **kwargs):
    """`tokenizer.apply_chat_template` with the pinned template variables (`chat_template_kwargs`)."""
    return tokenizer.apply_chat_template(messages, **{**chat_template_kwargs(), **kwargs})


# An open assistant turn: a prompt whose last message carries this key continues that message's text (the
# packed layout's transcript turns) instead of ending on the generation prompt. Its text is tokenised on its own
# after the generation prompt (transformers' `continue_final_message` would strip the final newline a label
# follows); each prompt ends at a newline, so a shorter transcript's ids are a prefix of a longer one's (checked
# whenever training sequences are built, `erc_llm.training.packed`).
CONTINUED = "continued"


def open_turn(text: str) -> dict[str, str]:
    """The assistant turn a transcript prompt continues."""
    return {"role": "assistant", "content": text, CONTINUED: "yes"}


def is_continued(messages: list[dict[str, str]]) -> bool:
    """Whether the prompt ends in an open assistant turn (`open_turn`)."""
    return bool(messages) and CONTINUED in messages[-1]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Token ids of a chat-templated conversation (plain list, whatever the tokenizer returns). A conversation
    ending in an open turn is the chat before it with the generation prompt, then the turn's text."""
    if is_continued(messages):
        head = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        return head + list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    out = apply_chat_template(tokenizer, messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat-templated prompt, ending with the assistant generation prompt."""
    return chat_ids(tokenizer, messages, add_generation_prompt=True)


def chat_prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """Text of the chat-templated prompt (ending on the generation prompt, or inside an open turn)."""
    if is_continued(messages):
        return chat_prompt_text(tokenizer, messages[:-1]) + messages[-1]["content"]
    return apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True)
