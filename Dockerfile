# GPU image: NGC PyTorch ships CUDA, torch, transformer-engine, NVIDIA apex, flash-attn and triton.
# Build:  docker build -t pose_mcore .
# Test:   docker run --gpus all --rm pose_mcore
# Train:  docker run --gpus all --rm pose_mcore bash examples/pretrain_pose.sh
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /workspace/pose_mcore
COPY . .
# Only what the image lacks; torch, transformer-engine, apex and flash-attn stay the image's own.
RUN pip install --no-cache-dir megatron-core==0.16.1 diffusers==0.42.1 peft==0.21.2 safetensors pyyaml tqdm \
        tensorboard pytest ruff \
 && pip install --no-cache-dir --no-deps -e .

ENV CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["python", "-m", "pytest", "-q", "tests"]
