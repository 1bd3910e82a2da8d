"""The LLaVA family beyond 1.5: other vision towers, text backbones and image layouts."""
