"""Using a trained model outside training: the Python predictor, ONNX export and runtime, the HTTP server.

Each part is imported on use: ``onnxruntime`` (extra ``onnx``) and ``litserve`` (extra ``serve``) are optional.
"""
