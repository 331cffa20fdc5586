"""Stage-2 loss encoders: weights loading (local files, weights_only), start-up errors that name
the missing file unless the lambda is 0, and the loss itself."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from train.config import Stage2Config
from train.losses import (
    ClipIdentity,
    FaceStructure,
    LossEncoders,
    MissingWeights,
    Stage2Loss,
    load_clip_identity,
    load_face_structure,
    load_lpips,
    load_loss_encoders,
)
from train_helpers import TinyRegressor, tiny_encoders
from train_helpers import one_thread  # noqa: F401  (autouse fixture)

OFF = Stage2Config(lambda_lpips=0, lambda_id=0, lambda_fs=0)


def test_no_encoder_is_loaded_when_its_lambda_is_zero():
    encoders = load_loss_encoders(replace(OFF, fs_checkpoint="/nowhere/epoch_20.pth", clip_encoder="/nowhere/clip"))
    assert encoders == LossEncoders(None, None, None)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(lambda_fs=1.0), "needs a D3DFR 3DMM regressor: pass --fs_checkpoint"),
        (dict(lambda_fs=1.0, fs_checkpoint="/nowhere/epoch_20.pth"), r"'/nowhere/epoch_20\.pth' not found.*--lambda_fs 0"),
        (dict(lambda_lpips=2.0, lpips_backbone="/nowhere/vgg16.pth"), r"'/nowhere/vgg16\.pth' not found.*--lambda_lpips 0"),
    ],
)
def test_missing_weights_fail_naming_the_file(settings, message):
    with pytest.raises(MissingWeights, match=message):
        load_loss_encoders(replace(OFF, **settings))


def test_missing_clip_folder_names_its_config(tmp_path):
    (tmp_path / "ipadapter").mkdir()
    with pytest.raises(MissingWeights, match=r"ipadapter/models/image_encoder/config\.json' not found.*--lambda_id 0"):
        load_loss_encoders(replace(OFF, lambda_id=1.0, clip_encoder=str(tmp_path / "ipadapter")))


def test_clip_identity_loads_a_local_encoder_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16))
    model.save_pretrained(tmp_path / "ip" / "models" / "image_encoder")
    identity = load_clip_identity(str(tmp_path / "ip"), "models/image_encoder")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert identity(x).shape == (2, 16)
    assert not any(p.requires_grad for p in identity.parameters())
    assert torch.allclose(identity(x), ClipIdentity(model.eval())(x), atol=1e-6)


def test_lpips_trunk_comes_from_a_local_torchvision_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None)
    torch.save(alex.state_dict(), tmp_path / "alexnet.pth")
    distance = load_lpips("alex", str(tmp_path / "alexnet.pth"))
    assert torch.equal(distance.model.net.slice1._modules["0"].weight, alex.features[0].weight)
    assert torch.equal(distance.model.net.slice5._modules["10"].weight, alex.features[10].weight)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    d = distance(x, x.flip(-1))
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MissingWeights, match="not torchvision"):
        load_lpips("alex", str(tmp_path / "other.pth"))


def test_d3dfr_checkpoints_load_with_weights_only_in_both_layouts(tmp_path):
    import torchvision

    from lafr_core.face.align import ffhq_template
    from train.d3dfr_align import align_d3dfr

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.fc = nn.Linear(2048, 257)
    plain = resnet.state_dict()
    sizes = [80, 64, 80, 3, 27, 2, 1]  # Deep3DFaceRecon's final_layers (conv 1x1 heads)
    d3dfr = {f"backbone.{k}": v for k, v in plain.items() if not k.startswith("fc.")}
    for i, (w, b) in enumerate(zip(plain["fc.weight"].split(sizes), plain["fc.bias"].split(sizes))):
        d3dfr[f"final_layers.{i}.weight"], d3dfr[f"final_layers.{i}.bias"] = w[:, :, None, None], b
    torch.save({"net_recon": d3dfr, "epoch": 20}, tmp_path / "epoch_20.pth")
    torch.save(plain, tmp_path / "resnet_fc257.pth")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    a = load_face_structure(str(tmp_path / "epoch_20.pth"))
    b = load_face_structure(str(tmp_path / "resnet_fc257.pth"))
    resnet.eval()
    with torch.no_grad():
        # D3DFR's own framing of the FFHQ-aligned 64-px crop (train/d3dfr_align.py)
        expected = resnet(align_d3dfr((x + 1) / 2, ffhq_template(64).float()).clamp(0, 1))
    assert a(x).shape == (1, 80 + 64 + 3)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    assert torch.allclose(a(x), torch.cat([expected[:, :144], expected[:, 224:227]], 1), atol=1e-4)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(MissingWeights, match="neither a Deep3DFaceRecon"):
        load_face_structure(str(tmp_path / "bad.pth"))


def test_stage2_loss_parts_weights_and_gradients():
    encoders = tiny_encoders(Stage2Config())
    loss_fn = Stage2Loss(encoders, lambda_mse=1.0, lambda_lpips=2.0, lambda_id=1.0, lambda_fs=1.0)
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    same, parts = loss_fn(target, target)
    assert set(parts) == {"mse", "lpips", "id", "fs"} and float(same) < 1e-5
    restored = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_()
    total, parts = loss_fn(restored, target)
    assert torch.allclose(total, parts["mse"] + 2 * parts["lpips"] + parts["id"] + parts["fs"])
    total.backward()
    assert restored.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss_fn.parameters())
    with pytest.raises(ValueError, match=r"\['structure'\] are missing"):
        Stage2Loss(LossEncoders(encoders.lpips, encoders.identity, None), lambda_fs=1.0)
    only_mse = Stage2Loss(LossEncoders(), lambda_lpips=0, lambda_id=0, lambda_fs=0)
    assert set(only_mse(restored, target)[1]) == {"mse"}
    assert isinstance(encoders.structure, FaceStructure) and isinstance(encoders.structure.regressor, TinyRegressor)


def test_structure_encoder_gets_each_pairs_landmarks():
    """The stage-2 loss hands the batch's landmarks to the D3DFR alignment; without them the
    FFHQ template of the square crop is used, and resize mode keeps the old framing."""
    from lafr_core.face.align import ffhq_template

    torch.manual_seed(0)
    structure = FaceStructure(TinyRegressor(), input_size=32)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    template = ffhq_template(64).float()
    assert torch.equal(structure.crop(x), structure.crop(x, template.expand(2, 5, 2)))
    moved = template + torch.tensor([6.0, -4.0])
    assert not torch.allclose(structure.crop(x), structure.crop(x, moved.expand(2, 5, 2)))
    resized = FaceStructure(TinyRegressor(), input_size=32, align="resize").crop(x)
    assert resized.shape == (2, 3, 32, 32) and not torch.allclose(resized, structure.crop(x))

    seen = []
    original = structure.forward
    structure.forward = lambda images, landmarks=None: seen.append(landmarks) or original(images, landmarks)
    loss = Stage2Loss(LossEncoders(structure=structure), lambda_lpips=0, lambda_id=0, lambda_fs=1)
    landmarks = moved.expand(2, 5, 2)
    loss(x, x.flip(-1), landmarks)
    assert len(seen) == 2 and all(s is landmarks for s in seen)  # restored and HQ sides
