"""Small helpers every layer may use (the core, the evaluation, the harness, the CLI).

Each module here imports only the standard library, so the command line's parser can read them
without importing torch.
"""
