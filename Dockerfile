# CUDA image with dfgen and distill on PATH:
#   docker build -t dfgen .
#   docker run --gpus all -v $PWD/out:/out dfgen dfgen synthesize --teacher regnety_16gf -n 1.2M --out /out
#   docker run --gpus all dfgen torchrun --nproc-per-node 8 -m dfgen synthesize --config configs/imagenet_regnety16gf.yaml --out /out
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /opt/dfgen
COPY pyproject.toml README.md ./
COPY dfgen ./dfgen
COPY distill ./distill
COPY configs ./configs
RUN pip install --no-cache-dir ".[demo]"
ENV PYTHONUNBUFFERED=1
CMD ["dfgen", "--help"]
