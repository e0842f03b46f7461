"""Label every utterance of some dialogues with a fine-tuned LLM, resumably.

    python recipes/label.py --config recipes/smollm2-135m/label/meld_test.yaml --adapter runs/sft/smoke
    python recipes/label.py --config ... --backend endpoint --endpoint http://127.0.0.1:8000

The engine is created inside main(), which runs under `if __name__ == "__main__":` (vLLM spawns workers).
"""

import shlex
import sys

from erc_llm.data.cli import guarded_main
from erc_llm.labelling.cli import parse_label_config
from erc_llm.labelling.run import run_labelling


def main() -> None:
    cfg = parse_label_config(sys.argv[1:])
    out = run_labelling(cfg, command="python recipes/label.py " + shlex.join(sys.argv[1:]))
    print(out)


if __name__ == "__main__":
    guarded_main(main)  # wrong input: one `error:` line, exit 2
