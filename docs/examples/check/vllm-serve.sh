#!/bin/sh
# vLLM docs, "OpenAI-compatible server"
vllm serve meta-llama/Llama-3.1-8B-Instruct \
  --max-model-len 16384 \
  --gpu-memory-utilization 0.9 \
  --host 0.0.0.0 --port 8000
