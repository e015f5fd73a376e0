"""twistd plugin: ``twistd [-n] llmhop --config config.json``.

The lazy ServiceMaker form keeps plugin scans from importing llmhop itself.
"""

from twisted.application.service import ServiceMaker

llmhop = ServiceMaker(
    "llmhop",
    "llmhop.service",
    "Route OpenAI-compatible requests by model to their backends.",
    "llmhop",
)
