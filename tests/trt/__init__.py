"""TensorRT: feather-build and the native backend (fake TensorRT in CI; real TensorRT marked trt)."""
