"""aimg.export: ONNX export, graph checks, onnxruntime parity, TensorRT engines and manifests.

May import the core (`aimg.*`). The runtime never imports this package: it reads export
artifacts through the manifest schema in the core.
"""
