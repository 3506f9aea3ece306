"""pose_mcore: Megatron-style POSE distillation of video diffusion transformers."""

from setuptools import find_packages, setup

setup(
    name="pose_mcore",
    version="0.1.0",
    description="Megatron-core training stack that distils video DiTs (Wan, HunyuanVideo) into "
                "one-step generators with POSE",
    python_requires=">=3.11",
    packages=find_packages(include=["pose_mcore", "pose_mcore.*"]) + ["pose_kernels"],
    # The folder kernels/ is imported as pose_kernels: the name `kernels` belongs to a PyPI package
    # that diffusers probes for.
    package_dir={"pose_kernels": "kernels"},
    package_data={"pose_mcore": ["configs/*.yaml"]},  # pose-train --config NAME reads them
    install_requires=[
        # torch is pinned in requirements/cpu.txt (CI) and comes with the NGC image on GPUs;
        # a lower bound here never pulls a CUDA build over an installed torch.
        "torch>=2.4",
        "megatron-core>=0.16.1",
        "safetensors>=0.4",
        "pyyaml>=6",
        "numpy",
        "tqdm",
        "pillow",  # sample grids (GIF)
        "tensorboard",  # tensorboard=true
        # the model folders' own encoders, VAE and pipelines (pose-prepare, pose-sample, sample videos)
        "diffusers>=0.42.1",
        "transformers>=4.51",
        "accelerate",  # diffusers loads models through it (not declared by diffusers)
        "ftfy",  # the Wan pipelines clean prompts with it (not declared by diffusers)
        "av",  # video decoding and MP4 writing (PyAV)
    ],
    extras_require={
        "test": ["pytest>=8", "peft", "ruff"],
        # NVIDIA apex is not on PyPI (the PyPI package `apex` is unrelated): use the NGC image.
        "gpu": ["transformer-engine[pytorch]", "flash-attn", "triton>=3.0"],
        "wandb": ["wandb"],  # wandb=true
    },
    entry_points={"console_scripts": ["pose-train=pose_mcore.cli:main",
                                      "pose-convert=pose_mcore.cli:convert",
                                      "pose-prepare=pose_mcore.data.prepare:main",
                                      "pose-sample=pose_mcore.inference.sample:main"]},
)
