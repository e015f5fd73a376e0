"""``--check``, for ``llmhop`` and ``twistd llmhop`` alike: is this config ready to serve here?"""

from llmhop.config import Config, count, warnings
from llmhop.errors import tell
from llmhop.listening import listen_problems


def check(config: Config, path: str, on_this_host: bool = True) -> int:
    """Warnings, then what this host lacks to listen (not on build machines), then the verdict.

    @return: the exit status.
    """
    for warning in warnings(config):
        tell("warning: " + warning)
    problems = listen_problems(config) if on_this_host else []
    if problems:
        # The first, as for config errors and as a start would say it.
        return tell(problems[0])
    print("llmhop: %s: config OK (%s)" % (path, count(len(config.models), "model")))
    return 0
