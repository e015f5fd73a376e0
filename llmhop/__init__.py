"""llmhop: one HTTP port in front of many OpenAI-compatible inference servers."""

__version__ = "0.1.0"
