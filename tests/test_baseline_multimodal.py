"""Encoder-fusion baseline, audio and visual paths on real generated media through small random encoders.

Speech is synthesised with espeak-ng (Debian package `espeak-ng`), frames are PNG images drawn with PIL, and the
encoders are randomly initialised `Wav2Vec2Model` / `ViTModel`s built from small configs and saved as local model
folders, so the real loading, decoding, pooling, caching, masking and training code runs without any hub.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from erc_llm.baseline import build_model, build_trainer, evaluate_splits, prepare_data
from erc_llm.baseline.config import BaselineDataConfig, BaselineModelConfig, BaselineTrainingArguments
from erc_llm.baseline.data import attach_media_paths
from erc_llm.baseline.extractors import AudioEncoder, FrameEncoder, cached_media_features
from erc_llm.baseline.features import write_feature_store
from erc_llm.baseline.media import load_audio, load_frames
from erc_llm.data import Utterance

LINES = [
    ("Ann", "We got the flat!", "joy"),
    ("Bo", "No way, that is amazing.", "surprise"),
    ("Ann", "I am so tired of packing boxes.", "sadness"),
    ("Bo", "Stop complaining and help me.", "anger"),
    ("Ann", "Fine. Where is the tape?", "neutral"),
    ("Bo", "Over there, by the door.", "neutral"),
]


def _espeak(text: str, path: Path) -> None:
    """Synthesise `text` into a WAV file with espeak-ng."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.fail("espeak-ng is needed for the audio tests: apt-get install espeak-ng")
    subprocess.run([binary, "-w", str(path), text], check=True, capture_output=True, timeout=60)


def _frames(folder: Path, seed: int, count: int = 3) -> None:
    """Draw `count` PNG frames of a moving coloured square."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    for i in range(count):
        image = Image.new("RGB", (48, 48), (20, 20, 20))
        ImageDraw.Draw(image).rectangle([4 + 8 * i, 10, 20 + 8 * i, 30], fill=colour)
        image.save(folder / f"frame_{i:03d}.png")


@pytest.fixture(scope="module")
def media_corpus(tmp_path_factory) -> Path:
    """A two-file JSONL corpus whose utterances point at real WAVs and frame folders (some left out)."""
    root = tmp_path_factory.mktemp("media_corpus")
    splits = {"train": ["d1", "d2"], "dev": ["d3"]}
    counter = 0
    for split, dialogue_ids in splits.items():
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for dialogue_id in dialogue_ids:
                utterances = []
                for index, (speaker, text, label) in enumerate(LINES):
                    media = {}
                    counter += 1
                    if index != 2:  # every dialogue's third line has no audio
                        wav = Path("wav") / f"{dialogue_id}_{index}.wav"
                        (root / wav).parent.mkdir(exist_ok=True)
                        _espeak(text, root / wav)
                        media["audio"] = str(wav)
                    if index % 2 == 0:  # only every other line has video frames
                        frames = Path("frames") / f"{dialogue_id}_{index}"
                        _frames(root / frames, counter)
                        media["video"] = str(frames)
                    utterances.append({"speaker": speaker, "text": text, "label": label, "media": media})
                handle.write(json.dumps({"dialogue_id": f"{split}-{dialogue_id}", "utterances": utterances}) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """Small randomly initialised wav2vec2 and ViT models saved as local model folders."""
    from transformers import ViTConfig, ViTModel, Wav2Vec2Config, Wav2Vec2Model

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    audio = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, mask_time_prob=0.0,
    ))
    visual = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8))
    audio.save_pretrained(root / "wav2vec2-tiny")
    visual.save_pretrained(root / "vit-tiny")
    return {"audio": root / "wav2vec2-tiny", "visual": root / "vit-tiny"}


def test_media_decoding(media_corpus: Path):
    waveform = load_audio(media_corpus / "wav" / "d1_0.wav", 16000)
    assert waveform.dtype == np.float32 and 0.3 * 16000 < waveform.size < 5 * 16000  # espeak-ng: 22.05 kHz
    assert 0.01 < np.abs(waveform).max() <= 1.0
    assert load_audio(media_corpus / "wav" / "d1_0.wav", 16000, max_seconds=0.25).size == 4000
    frames = load_frames(media_corpus / "frames" / "d1_0", count=2, size=32)
    assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8
    assert load_frames(media_corpus / "frames" / "d1_0" / "frame_000.png", count=4, size=16).shape == (1, 16, 16, 3)


def test_video_file_frames_via_ffmpeg(media_corpus: Path, tmp_path: Path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg): video containers cannot be decoded")
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-framerate", "2", "-i", str(media_corpus / "frames" / "d1_0" /
                    "frame_%03d.png"), "-i", str(media_corpus / "wav" / "d1_0.wav"), "-pix_fmt", "yuv420p",
                    "-shortest", str(video)], check=True, timeout=60)
    assert load_frames(video, count=2, size=32).shape[1:] == (32, 32, 3)
    assert load_audio(video, 16000).size > 1000  # the audio track of a video container


def test_extractors_shapes_and_cache_reuse(media_corpus: Path, tiny_encoders: dict[str, Path], tmp_path: Path):
    audio = AudioEncoder(str(tiny_encoders["audio"]))
    visual = FrameEncoder(str(tiny_encoders["visual"]), frames=2)
    assert audio(media_corpus / "wav" / "d1_0.wav").shape == (64,)  # mean + max of hidden size 32
    assert visual(media_corpus / "frames" / "d1_0").shape == (64,)
    utterances = [
        Utterance("d", 0, ("A",), "x", media={"audio": "wav/d1_0.wav", "video": "frames/d1_0"}),
        Utterance("d", 1, ("B",), "y", media={"audio": "wav/d1_1.wav"}),
        Utterance("d", 2, ("A",), "z", media={"audio": "wav/absent.wav"}),
        Utterance("d", 3, ("B",), "w"),
    ]
    features, present, computed = cached_media_features("audio", audio, utterances, tmp_path, media_corpus)
    assert features.shape == (4, 64) and present.tolist() == [True, True, False, False] and computed == 2
    assert not features[2:].any()
    store_file = next(tmp_path.glob("audio-*/audio.safetensors"))
    stamp = store_file.stat().st_mtime_ns
    again, present_again, computed_again = cached_media_features("audio", audio, utterances, tmp_path, media_corpus)
    assert computed_again == 0 and np.array_equal(again, features) and store_file.stat().st_mtime_ns == stamp
    _, visual_present, _ = cached_media_features("visual", visual, utterances, tmp_path, media_corpus)
    assert visual_present.tolist() == [True, False, False, False]


@pytest.mark.slow
def test_multimodal_training_masks_missing_and_moves_weights(media_corpus: Path, tiny_encoders: dict[str, Path],
                                                            tmp_path: Path):
    data_config = BaselineDataConfig(
        corpus=str(media_corpus / "train.jsonl"), eval_file=str(media_corpus / "dev.jsonl"), test_split=None,
        context_before=2, max_length=48, audio_source="media", visual_source="media", media_dir=str(media_corpus),
        feature_cache_dir=str(tmp_path / "cache"),
    )
    model_config = BaselineModelConfig(
        audio_encoder=str(tiny_encoders["audio"]), visual_encoder=str(tiny_encoders["visual"]), visual_frames=2,
        text_projection_dim=16, audio_projection_dim=16, visual_projection_dim=16, fusion="mha", fusion_heads=2,
        head_hidden_dim=16, dropout=0.0, loss="focal",
    )
    model_config.check_against(data_config)
    data = prepare_data(data_config, model_config)
    train = data.splits["train"]
    assert data.input_dims == {"text": 768, "audio": 64, "visual": 64}  # MiniLM target+mean; mean+max pooling
    assert train.text_features.shape == (12, 768)
    audio_features, audio_present = train.optional_features["audio"]
    visual_features, visual_present = train.optional_features["visual"]
    assert audio_features.shape == (12, 64) and visual_features.shape == (12, 64)
    assert audio_present.tolist() == [i % 6 != 2 for i in range(12)]
    assert visual_present.tolist() == [i % 2 == 0 for i in range(12)]
    assert not audio_features[~audio_present].any()

    model = build_model(data, model_config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    training_args = BaselineTrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=3,
                                              per_device_train_batch_size=4, learning_rate=1e-2,
                                              disable_tqdm=True, early_stopping_patience=0)
    trainer = build_trainer(model, data, model_config, training_args)
    trainer.train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    # (In mha fusion the "missing" fillers are masked out of keys and pooling, so they get no gradient.)
    for prefix in ("projections.text", "projections.audio", "projections.visual", "attention", "head"):
        assert any(name.startswith(prefix) for name in moved), prefix
    results = evaluate_splits(trainer, data, training_args.output_dir, "encoder-fusion-mm")
    assert results["dev"]["n"] == 6

    # A second preparation reads every feature from the cache: nothing is re-extracted or rewritten.
    stores = sorted((tmp_path / "cache").glob("*/*.safetensors"))
    assert {p.parent.name.split("-")[0] for p in stores} == {"audio", "visual", "text"}
    stamps = {p: p.stat().st_mtime_ns for p in stores}
    again = prepare_data(data_config, model_config)
    assert {p: p.stat().st_mtime_ns for p in stores} == stamps
    assert np.array_equal(again.splits["train"].optional_features["audio"][0], audio_features)


def test_media_path_template_fills_only_missing_media():
    utterances = [Utterance("meld/test/3", 0, ("A",), "x", utterance_id="dia3_utt0"),
                  Utterance("meld/test/3", 1, ("B",), "y", utterance_id="dia3_utt1", media={"audio": "own.wav"})]
    assert attach_media_paths(utterances, "{split}/{utterance_id}.mp4", "test") == 1
    assert utterances[0].media == {"audio": "test/dia3_utt0.mp4", "video": "test/dia3_utt0.mp4"}
    assert utterances[1].media == {"audio": "own.wav"}


def test_feature_store_inputs_with_partial_coverage(media_corpus: Path, tmp_path: Path):
    """User-provided features (the way MELD's released features are brought in): missing keys are masked."""
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    # Canonical keys <dialogue_id>/<index>; one training dialogue has no visual features at all.
    write_feature_store(store, "audio", {f"{d}/{i}": rng.normal(size=12) for d in ("train-d1", "train-d2", "dev-d3")
                                         for i in range(6) if i != 4}, source="synthetic, unit test")
    write_feature_store(store, "visual", {f"train-d1/{i}": rng.normal(size=5) for i in range(6)}, fmt="npz")
    data_config = BaselineDataConfig(
        corpus=str(media_corpus / "train.jsonl"), eval_file=str(media_corpus / "dev.jsonl"), test_split=None,
        context_before=1, max_length=32, audio_source="store", visual_source="store", feature_store=str(store),
        feature_cache_dir=str(tmp_path / "cache"),
    )
    model_config = BaselineModelConfig(text_pooling="mean")
    data = prepare_data(data_config, model_config)
    assert data.input_dims == {"text": 384, "audio": 12, "visual": 5}
    assert data.splits["train"].optional_features["audio"][1].tolist() == [i % 6 != 4 for i in range(12)]
    assert data.splits["train"].coverage()["visual"] == 0.5 and data.splits["eval"].coverage()["visual"] == 0.0
    model = build_model(data, model_config)
    batch = next(iter(build_trainer(model, data, model_config, BaselineTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=12)).get_train_dataloader()))
    assert batch["audio_features"].shape == (12, 12) and batch["visual_mask"].dtype == torch.bool
    assert torch.isfinite(model(**batch).loss)
