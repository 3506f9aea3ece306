# GPU image: NGC PyTorch ships CUDA, torch, transformer-engine, NVIDIA apex, flash-attn and triton.
# Build:  docker build -t pose_mcore .
# Test:   docker run --gpus all --rm pose_mcore               (the test suite on the GPU)
# Check:  docker run --gpus all --rm pose_mcore make gpu-check  (tests, pipeline, benchmarks, one summary)
# Train:  docker run --gpus all --rm pose_mcore bash examples/pretrain_pose.sh
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /workspace/pose_mcore
# Dependencies first, so that editing the sources does not redo this layer. Only what the image lacks;
# torch, transformer-engine, apex and flash-attn stay the image's own: the image's pip constraints
# (PIP_CONSTRAINT, /etc/pip/constraint.txt) are kept in force, so nothing here replaces them.
RUN pip install --no-cache-dir megatron-core==0.16.1 diffusers==0.42.1 transformers accelerate ftfy av \
        safetensors pyyaml tqdm pillow tensorboard peft pytest ruff \
 && python -c "import transformer_engine.pytorch, flash_attn, megatron.core, apex; print('GPU stack imports')"

COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .

ENV CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["python", "-m", "pytest", "-q", "tests"]
