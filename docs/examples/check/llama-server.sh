#!/bin/sh
# llama.cpp tools/server/README.md, with a longer context and a q8_0 cache
llama-server -m models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf \
  -c 16384 -ngl 99 -fa on -ctk q8_0 -ctv q8_0 --port 8080
