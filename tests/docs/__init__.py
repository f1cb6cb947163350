"""Every code block in README.md and docs/ runs; the PyTorch serving guide end to end."""
