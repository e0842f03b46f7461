"""Train and evaluate the encoder-fusion baseline.

    accelerate launch recipes/baseline.py --config recipes/encoder-fusion/meld_text_context.yaml [--key value ...]

Reads top to bottom: seed -> data -> model -> trainer -> train -> save -> eval. Logic lives in erc_llm.baseline.
"""

from __future__ import annotations

import logging

from transformers import set_seed

from erc_llm.baseline import (
    Stopwatch,
    build_model,
    build_trainer,
    evaluate_splits,
    parse_baseline_config,
    prepare_data,
    run_extra,
    save_run,
)
from erc_llm.data.cli import guarded_main


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_config, model_config, training_args = parse_baseline_config()

    set_seed(training_args.seed)
    data = prepare_data(data_config, model_config)
    model = build_model(data, model_config)
    trainer = build_trainer(model, data, model_config, training_args)

    clock = Stopwatch()
    trainer.train()
    train_seconds = clock.seconds

    output_dir = save_run(trainer, data, data_config, model_config, training_args, train_seconds)
    extra = run_extra(data, trainer, train_seconds, training_args.seed)
    evaluate_splits(trainer, data, output_dir, training_args.system_name, extra=extra)


if __name__ == "__main__":
    guarded_main(main)  # wrong input: one `error:` line, exit 2
