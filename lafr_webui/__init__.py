"""lafr_webui: the thin AUTOMATIC1111 / Forge layer over lafr_core (face restorer, settings, Extras).

Why a separate top-level package with this name: A1111 puts an extension's root on sys.path only
while its scripts/*.py import, next to every other extension's root, so the adapter needs a name
no other extension uses. One job per module:
  args         the restorer's and the Extras script's arguments, checked (extra keys forbidden)
  unet_hooks   a file's LoRA (any Conv2d/Linear), replacements and VAE-encoder LoRA as removable
               forward hooks on the host's UNet and VAE (A1111)
  prompt       the run's prompt embedding: the file's, or text the loaded checkpoint encodes (cached)
  model_check  what the webui has loaded (SD1/SD2/SDXL, eps/v), duck-typed
  a1111, forge the loaded model as a lafr_core.host_chain.HostModel, each webui's way
  service      one run: check the model, load the file, run the chain, progress, clean up
  interlcm     converted InterLCM files: their own LCM Dreamshaper v7 + CLIP ViT-B/16 folders, the
               standalone pipeline cached on the webui's device (diffusers imported only then)
  settings     Settings > LAFR and the models/LAFR folder
  images, messages, report   conversions at the host edge, messages shown once, failures (image kept)
  restorer, extras           the classes the webui instantiates (these two import `modules`)
Everything but restorer and extras imports without the webui (its modules are imported inside
the functions that need them), so it is tested without it. Imports no diffusers, peft,
transformers or accelerate: LAFR files run on the host's own UNet and VAE; only running an
InterLCM file loads diffusers and transformers (its standalone pipeline).
"""

RESTORER_NAME = "LAFR"  # name() of the face restorer and title of the Extras script
