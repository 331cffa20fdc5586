"""LAFR trainer (HF Accelerate): stage 1 trains the latent alignment adapter, stage 2 the conv
LoRA of the pruned SD2.1 UNet; both write LAFR files the nodes load. Run `python -m train`
(`python -m train all --data faces/ --output mine.safetensors` does both stages and the export;
rerunning it resumes).

Heavy imports (accelerate, diffusers, transformers, lpips) happen inside the stage modules, so
importing `train.config` or `train.data` stays cheap.
"""
