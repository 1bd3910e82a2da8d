"""Hugging Face LLaVA glue shared by the reference and the exporter (torch, transformers):
``checkpoint`` loads a checkpoint and reads its geometry; ``layers`` holds the torch layer
pieces (RoPE, GQA repeat, the pruning score) that both build on HF's own submodules."""
