"""Experiments with Hugging Face models: spam classification (`text`) and math reasoning (`math`)."""
