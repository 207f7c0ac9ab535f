"""Pure, content-based format inspectors for model artifacts (safetensors, GGUF)."""
