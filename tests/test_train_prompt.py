"""The fixed prompt embedding: computed once with a CLIP text encoder + tokenizer, saved with the
run and reused without loading the encoder again; precomputed files are accepted."""

import json
import shutil

import pytest
import torch

from train.config import Stage2Config, TrainConfig, RunConfig
from train.prompt import PROMPT_FILE, compute_prompt_embeds, resolve_prompt_embeds, save_prompt_embeds

WORDS = {"face": ["f", "a", "c", "e"], "high": ["h", "i", "g", "h"], "quality": ["q", "u", "a", "l", "i", "t", "y"]}


def tiny_text_encoder_folder(root):
    """A diffusers-style folder (text_encoder/, tokenizer/) with a 2-layer CLIP text model and a
    BPE vocabulary just big enough for "face, high quality"."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = ["<|startoftext|>", "<|endoftext|>", ",</w>"], []
    for chars in WORDS.values():
        vocab += chars + [c + "</w>" for c in chars]
        piece = chars[0]
        for i, c in enumerate(chars[1:], start=1):
            nxt = c + "</w>" if i == len(chars) - 1 else c
            merges.append(f"{piece} {nxt}")
            piece += nxt
            vocab.append(piece)
    vocab = list(dict.fromkeys(vocab))
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(tok_dir)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(config).save_pretrained(root / "text_encoder")
    return tokenizer


def test_prompt_is_encoded_once_then_reused_from_the_run_folder(tmp_path):
    tokenizer = tiny_text_encoder_folder(tmp_path / "sd21")
    ids = tokenizer("face, high quality", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 0 and ids[1:5] == [tokenizer.convert_tokens_to_ids(t) for t in ["face</w>", ",</w>", "high</w>", "quality</w>"]]

    config = TrainConfig(stage="stage2", run=RunConfig(output_dir=str(tmp_path / "run")), stage2=Stage2Config(text_encoder=str(tmp_path / "sd21")))
    embeds = resolve_prompt_embeds(config, expected_dim=32)
    assert embeds.shape == (1, 77, 32) and embeds.dtype == torch.float32
    direct = compute_prompt_embeds(str(tmp_path / "sd21"), "face, high quality")
    assert torch.equal(embeds, direct)
    assert (tmp_path / "run" / PROMPT_FILE).is_file()

    shutil.rmtree(tmp_path / "sd21")  # the second time nothing is loaded
    assert torch.equal(resolve_prompt_embeds(config, expected_dim=32), embeds)
    other_prompt = TrainConfig(stage="stage2", run=config.run, stage2=Stage2Config(text_encoder=str(tmp_path / "sd21"), prompt="a face"))
    with pytest.raises(FileNotFoundError, match="cannot load SD2.1's text encoder.*--prompt_embeds"):
        resolve_prompt_embeds(other_prompt, expected_dim=32)


def test_precomputed_embeddings_and_shape_checks(tmp_path):
    given = torch.randn(1, 77, 1024)
    path = save_prompt_embeds(given, tmp_path / "p.safetensors", "face, high quality")
    config = TrainConfig(stage="stage2", run=RunConfig(output_dir=str(tmp_path / "run")), stage2=Stage2Config(prompt_embeds=str(path)))
    assert torch.equal(resolve_prompt_embeds(config), given)
    assert torch.equal(resolve_prompt_embeds(config, embeds=given * 2), given * 2)  # an explicit tensor wins
    with pytest.raises(ValueError, match=r"\[1, tokens, 1024\]"):
        resolve_prompt_embeds(config, embeds=torch.randn(1, 77, 768))
