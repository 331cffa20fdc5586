"""Run OSEDiff's OWN inference code (OSEDiff_test from a local checkout) on one image, on the CPU.

Started by bench/osediff_reference.py with the Python of a venv that has OSEDiff's pins
(diffusers 0.25.0, peft 0.9.0, transformers 4.28.1, huggingface_hub 0.20.3, tokenizers 0.13.3,
accelerate 0.27.2): its vendored models do not import under a current diffusers.

Nothing of OSEDiff is copied here: the checkout is put on sys.path and `osediff.OSEDiff_test` is
imported and called as test_osediff.py calls it. Its code hard-codes "cuda" (`.cuda()`,
`device="cuda"`); on a machine without CUDA the shim below sends those calls to the CPU before
the module is imported, and changes nothing else.

    python osediff_reference_runner.py OSEDIFF_DIR SD21_FOLDER PKL INPUT.pt PROMPT SEED OUT.pt
INPUT.pt: [1, 3, H, W] in -1..1 (ToTensor() * 2 - 1); OUT.pt: {"image": output in -1..1,
"prompt_embeds": OSEDiff's own encoding of PROMPT}.
"""

from __future__ import annotations

import argparse
import os
import sys


def send_cuda_to_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        return

    def fix(device):
        if isinstance(device, str) and device.startswith("cuda"):
            return "cpu"
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.device("cpu")
        return device

    tensor_to, module_to, make_tensor = torch.Tensor.to, torch.nn.Module.to, torch.tensor

    def to_tensor(self, *args, **kwargs):
        args = tuple(fix(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = fix(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    def to_module(self, *args, **kwargs):
        args = tuple(fix(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = fix(kwargs["device"])
        return module_to(self, *args, **kwargs)

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = fix(kwargs["device"])
        return make_tensor(*args, **kwargs)

    torch.Tensor.to = to_tensor
    torch.nn.Module.to = to_module
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.tensor = tensor


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("osediff_dir", "sd21", "pkl", "input", "prompt", "seed", "out"):
        parser.add_argument(name)
    cli = parser.parse_args()
    send_cuda_to_cpu()
    import torch

    sys.path.insert(0, os.path.abspath(cli.osediff_dir))
    os.chdir(cli.osediff_dir)  # their modules append os.getcwd() to sys.path
    from osediff import OSEDiff_test  # noqa: E402  (their code, from the checkout)

    args = argparse.Namespace(
        pretrained_model_name_or_path=os.path.abspath(cli.sd21), osediff_path=os.path.abspath(cli.pkl),
        mixed_precision="fp32", merge_and_unload_lora=False,
        vae_encoder_tiled_size=1024, vae_decoder_tiled_size=224, latent_tiled_size=96, latent_tiled_overlap=32,
    )  # test_osediff.py's defaults, in fp32
    model = OSEDiff_test(args)
    lq = torch.load(cli.input)
    with torch.no_grad():
        embeds = model.encode_prompt([cli.prompt])
        torch.manual_seed(int(cli.seed))  # latent_dist.sample() draws from the global generator
        image = model(lq, cli.prompt)
    torch.save({"image": image.float().cpu(), "prompt_embeds": embeds.float().cpu()}, cli.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
