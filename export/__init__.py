"""Export trained models as a bundle: ONNX fp32 + INT8 with accuracy gates, TensorRT on Jetson."""
