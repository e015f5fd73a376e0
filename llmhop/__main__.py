from llmhop.cli import run

run()
