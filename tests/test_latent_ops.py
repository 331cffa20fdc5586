"""latent_ops: the raw <-> scaled latent steps every host shares, and the adapter never moved
out of the (cached, shared) LafrWeights."""

import pytest
import torch

from lafr_core.adapter import AlignerConfig, LatentAligner
from lafr_core.lafr_file import save_lafr, load_lafr
from lafr_core.latent_ops import MissingStageError, align_raw_latent, aligner_on


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lafr") / "stage1.safetensors"
    save_lafr(path, aligner=LatentAligner(AlignerConfig()))
    return load_lafr(path)


def _storage(module):
    return [(p.device, p.data_ptr()) for p in module.parameters()]


def test_adapter_for_another_device_is_a_copy_and_the_shared_one_stays_put(weights):
    before = _storage(weights.aligner)
    # "meta" stands in for a GPU here: any device the weights are not on
    moved = aligner_on(weights, "meta")
    assert moved is not weights.aligner
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert _storage(weights.aligner) == before, "the cached LAFR adapter was moved in place"
    assert aligner_on(weights, "cpu") is weights.aligner  # same device: no copy


def test_align_raw_latent_scales_with_the_files_latent_scale(weights):
    raw = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    out = align_raw_latent(weights, raw, "cpu")
    with torch.no_grad():
        expected = weights.aligner(raw * weights.latent_scale) / weights.latent_scale
    assert out.shape == raw.shape and torch.allclose(out, expected, atol=1e-6)


def test_a_file_without_adapter_names_the_stage(tmp_path):
    from test_lafr_file import make_kohya, make_prompt

    path = tmp_path / "stage2.safetensors"
    save_lafr(path, kohya_lora=make_kohya(), prompt_embeds=make_prompt())
    with pytest.raises(MissingStageError, match="no stage-1 alignment adapter"):
        align_raw_latent(load_lafr(path), torch.zeros(1, 4, 8, 8), "cpu")
