"""ONNX: export, the importer's operators and recurrent nodes, load safety, ONNX models served."""
