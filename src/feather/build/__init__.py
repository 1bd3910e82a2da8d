"""feather-build: TensorRT engines for an export folder (``feather.build.engines``), torch-free."""
