"""Using a trained model outside training: the Python predictor, the exports (ONNX, OpenVINO, LiteRT, Core ML,
INT8) with their check and runtimes, the HTTP server.

Each part is imported on use: each format's libraries (extras ``onnx``, ``openvino``, ``litert``, ``coreml``) and
``litserve`` (extra ``serve``) are optional.
"""
