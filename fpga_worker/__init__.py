"""One daemon per FPGA card: receives streamed KV into HBM and decodes from it."""
