"""Layer 5, tools around training: the dry run, the sweep report, Hugging Face export, sampling."""
