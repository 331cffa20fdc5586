import pytest
import torch
import torch.nn.functional as F

from lafr_core.adapter import AlignerConfig, LatentAligner, codebook_usage, count_parameters, usage_from_counts

SMALL = AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)


def test_default_config_parameter_count_is_the_papers_5_1m():
    # Paper: "about 5.2M". Exact count of our default (hidden 256, codebook 1024x256) is stated
    # in the README; a change here must update it.
    assert count_parameters(LatentAligner()) == 5_138_180


def test_output_has_latent_shape_and_quantized_vectors_are_exact_codebook_entries():
    torch.manual_seed(0)
    model = LatentAligner(SMALL)
    z = torch.randn(2, 4, 8, 6)
    out = model.align(z)
    assert out.latent.shape == z.shape
    assert out.indices.shape == (2, 8, 6)
    # brute-force nearest entry
    feats = model.features(z)
    dist = ((feats[:, None, :] - model.codebook.embed[None]) ** 2).sum(-1)
    assert torch.equal(out.indices.flatten(), dist.argmin(1))
    # the mapping net sees the codebook entries bit-exactly
    codes = model.codebook.embed[out.indices.flatten()]
    expected = model.mapping(codes.view(2, 8, 6, -1).permute(0, 3, 1, 2))
    assert torch.equal(out.latent, expected)


def test_straight_through_gives_gradients_to_extractor_and_codebook_and_codebook_moves():
    torch.manual_seed(0)
    model = LatentAligner(SMALL)
    z, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = model.align(z)
    loss = F.l1_loss(out.latent, target) + out.vq_loss
    loss.backward()
    extractor_grad = sum(p.grad.abs().sum() for p in model.extractor.parameters())
    assert extractor_grad > 0
    assert model.codebook.embed.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mapping.parameters())
    before = model.codebook.embed.detach().clone()
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    used = out.indices.unique()
    assert not torch.equal(before[used], model.codebook.embed.detach()[used])


def test_extractor_gets_gradient_from_reconstruction_alone():
    """The straight-through path itself (not just the commitment loss) reaches the extractor."""
    torch.manual_seed(0)
    model = LatentAligner(SMALL)
    out = model.align(torch.randn(1, 4, 8, 8))
    out.latent.sum().backward()
    assert model.extractor[0].weight.grad.abs().sum() > 0
    assert model.codebook.embed.grad is None  # only the vq loss teaches the codebook


def test_codebook_usage_statistics():
    uniform = torch.arange(16).repeat(4)
    usage = codebook_usage(uniform, 16)
    assert usage.perplexity == pytest.approx(16.0)
    assert usage.unused == 0
    usage = codebook_usage(torch.tensor([3, 3, 3, 3]), 16)
    assert usage.perplexity == pytest.approx(1.0)
    assert usage.unused == 15
    assert usage.counts[3] == 4


def test_usage_from_summed_counts_equals_usage_of_all_indices():
    """The trainer sums histograms over steps and processes, then asks for the usage once."""
    first, second = torch.arange(8).repeat(3), torch.tensor([0, 1, 2, 3] * 6)
    summed = codebook_usage(first, 16).counts + codebook_usage(second, 16).counts
    together = codebook_usage(torch.cat([first, second]), 16)
    usage = usage_from_counts(summed)
    assert usage.perplexity == together.perplexity and usage.unused == together.unused == 8
    assert codebook_usage(torch.arange(8), 16).perplexity == pytest.approx(8.0)  # half the codes, evenly
    assert usage_from_counts(torch.zeros(16, dtype=torch.long)).perplexity == 1.0  # nothing chosen yet


def test_reseed_codes_replaces_dead_entries_with_features():
    torch.manual_seed(0)
    model = LatentAligner(SMALL)
    feats = torch.randn(50, SMALL.codebook_dim)
    dead = torch.zeros(SMALL.codebook_size, dtype=torch.bool)
    dead[[1, 5]] = True
    before = model.codebook.embed.detach().clone()
    assert model.reseed_codes_(dead, feats, generator=torch.Generator().manual_seed(0)) == 2
    after = model.codebook.embed.detach()
    assert torch.equal(before[~dead], after[~dead])
    for i in (1, 5):
        assert any(torch.equal(after[i], row) for row in feats)


def test_config_json_round_trip_and_errors():
    assert AlignerConfig.from_json(SMALL.to_json()) == SMALL
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        AlignerConfig.from_json('{"bogus": 1}')
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        AlignerConfig(hidden_channels=30, norm_groups=8)


def test_wrong_latent_shape_is_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 8, 8\)"):
        LatentAligner(SMALL)(torch.randn(1, 3, 8, 8))
